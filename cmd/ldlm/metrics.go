package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/service/metrics"
)

// metricsShutdownTimeout bounds how long stopping waits for scrapes in
// flight before closing their connections.
const metricsShutdownTimeout = 5 * time.Second

// metricsServer serves Prometheus metrics on /metrics, and the service's
// health on /healthz, when LDLM_METRICS_LISTEN is set. A nil
// *metricsServer is the setting off: its methods do nothing.
type metricsServer struct {
	metrics *metrics.Metrics
	ln      net.Listener
	http    *http.Server
	served  chan struct{} // closed when Serve has returned; nil until serve
	// svc is the lock service that /healthz reports on: nil while none
	// runs (between a deposed service and the next, see runService).
	svc atomic.Pointer[service.Service]
}

// listenMetrics listens on addr at once, so that a port in use fails
// start-up before anything else starts. It returns nil for an empty addr.
func listenMetrics(addr string) (*metricsServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: cannot listen on %q (is the port in use?): %w", addr, err)
	}
	m := metrics.New()
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	s := &metricsServer{
		metrics: m,
		ln:      ln,
		http:    &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
	}
	mux.HandleFunc("GET /healthz", s.healthz)
	return s, nil
}

// errNoService is the health while no lock service runs.
var errNoService = errors.New("no lock service runs: starting one again")

// healthz answers 200 "ok" while the lock service runs (answering, or
// standing by), and 503 with the reason once it has stopped by itself
// (see service.Done) or while none runs.
func (s *metricsServer) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	err := errNoService
	if svc := s.svc.Load(); svc != nil {
		err = svc.Err()
	}
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "unavailable: %v\n", err)
		return
	}
	fmt.Fprintln(w, "ok")
}

// observer is what service.Config.Observer gets: nil when metrics are off.
func (s *metricsServer) observer() func(engine.Event) {
	if s == nil {
		return nil
	}
	return s.metrics.Observe
}

// setService points the gauges and /healthz at svc; nil: no service runs
// (the gauges are absent, /healthz says 503).
func (s *metricsServer) setService(svc *service.Service) {
	if s == nil {
		return
	}
	s.svc.Store(svc)
	if svc == nil {
		s.metrics.SetStats(nil)
		return
	}
	s.metrics.SetStats(svc.Engine().Stats)
}

// serve starts answering scrapes, about the service of setService.
func (s *metricsServer) serve(log *slog.Logger) {
	if s == nil {
		return
	}
	s.served = make(chan struct{})
	go func() {
		defer close(s.served)
		if err := s.http.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("metrics ready", "url", "http://"+s.ln.Addr().String()+"/metrics")
}

// close stops the server, letting scrapes in flight finish for a while.
func (s *metricsServer) close(log *slog.Logger) {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), metricsShutdownTimeout)
	defer cancel()
	if err := s.http.Shutdown(ctx); err != nil {
		log.Warn("metrics server: scrapes still running at shutdown", "err", err)
		_ = s.http.Close()
	}
	_ = s.ln.Close() // Shutdown closes it only once Serve has it
	if s.served != nil {
		<-s.served
	}
}
