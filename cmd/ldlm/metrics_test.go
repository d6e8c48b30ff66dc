package main

// Tests of the LDLM_METRICS_LISTEN wiring: serve() in-process, with the
// embedded NATS server and the metrics server on free loopback ports. Every
// wait is bounded by a deadline and polls.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/internal/metricstest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

const metricsTestTimeout = 20 * time.Second

func TestMetricsListenSetting(t *testing.T) {
	t.Setenv("LDLM_METRICS_LISTEN", "")
	cfg, err := parseServerConfig(nil, io.Discard)
	if err != nil || cfg.MetricsListen != "" {
		t.Fatalf("default: %q, %v; want off", cfg.MetricsListen, err)
	}
	t.Setenv("LDLM_METRICS_LISTEN", "127.0.0.1:9464")
	if cfg, err = parseServerConfig(nil, io.Discard); err != nil || cfg.MetricsListen != "127.0.0.1:9464" {
		t.Fatalf("from the environment: %q, %v", cfg.MetricsListen, err)
	}
	if cfg, err = parseServerConfig([]string{"--metrics-listen=:9100"}, io.Discard); err != nil || cfg.MetricsListen != ":9100" {
		t.Fatalf("the flag over the environment: %q, %v", cfg.MetricsListen, err)
	}
}

// TestServeMetrics: with --metrics-listen, serve logs the metrics URL, which
// answers with the lock gauges and counts a grant made over NATS; when serve
// returns, the port is closed.
func TestServeMetrics(t *testing.T) {
	cfg, err := parseServerConfig([]string{"--embedded-listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := &ldlmtest.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil))) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(metricsTestTimeout):
			t.Errorf("serve did not return after the context ended")
		}
	}
	defer stop()

	metricsURL := awaitLogURL(t, logs, served, "metrics ready")
	natsURL := awaitLogURL(t, logs, served, "embedded NATS server ready")
	if !strings.HasPrefix(metricsURL, "http://127.0.0.1:") || !strings.HasSuffix(metricsURL, "/metrics") {
		t.Fatalf("metrics URL %q, want http://127.0.0.1:PORT/metrics", metricsURL)
	}

	healthURL := strings.TrimSuffix(metricsURL, "/metrics") + "/healthz"
	if code, body := getHealth(t, healthURL); code != http.StatusOK || body != "ok\n" {
		t.Errorf("GET /healthz of a running service: %d %q; want 200 ok", code, body)
	}

	families := metricstest.Scrape(t, metricsURL)
	for name, want := range map[string]float64{"ldlm_locks": 0, "ldlm_holders": 0, `ldlm_grants_total{waited="false"}`: 0} {
		if got, ok := metricValue(families, name); !ok || got != want {
			t.Errorf("before any lock: %s = %v (present %t), want %v", name, got, ok, want)
		}
	}

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatalf("connecting to %s: %v", natsURL, err)
	}
	defer nc.Close()
	msg, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, "metrics"), nil, metricsTestTimeout)
	if err != nil {
		t.Fatalf("trylock: %v", err)
	}
	var grant subjects.LockResponse
	if err := json.Unmarshal(msg.Data, &grant); err != nil || !grant.Locked {
		t.Fatalf("trylock: reply %s (%v)", msg.Data, err)
	}
	deadline := time.Now().Add(metricsTestTimeout)
	for {
		families = metricstest.Scrape(t, metricsURL)
		grants, _ := metricValue(families, `ldlm_grants_total{waited="false"}`)
		holders, _ := metricValue(families, "ldlm_holders")
		if grants == 1 && holders == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after one grant: ldlm_grants_total{waited=\"false\"} = %v, ldlm_holders = %v; want 1 and 1", grants, holders)
		}
		time.Sleep(20 * time.Millisecond)
	}

	stop()
	addr := strings.TrimSuffix(strings.TrimPrefix(metricsURL, "http://"), "/metrics")
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("the metrics port %s still accepts connections after serve returned", addr)
	}
}

// TestServeMetricsPortInUse: a metrics port that cannot be listened on
// fails start-up with an error that names it.
func TestServeMetricsPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg, err := parseServerConfig([]string{"--embedded-listen=127.0.0.1:0", "--metrics-listen=" + l.Addr().String()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "LDLM_METRICS_LISTEN (--metrics-listen)") || !strings.Contains(err.Error(), l.Addr().String()) {
			t.Errorf("serve: %v; want an error about the metrics address %s", err, l.Addr())
		}
	case <-time.After(metricsTestTimeout):
		cancel()
		t.Fatal("serve started although the metrics port is taken")
	}
}

func getHealth(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: metricsTestTimeout}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// Issue 11, D1(b): when the service's connection is closed for good, the
// service stops by itself, /healthz says 503, and runService returns the
// reason, so that ldlm exits 1 and its supervisor restarts it.
func TestServiceDeathIsReported(t *testing.T) {
	srv := ldlmtest.Start(t)
	m, err := listenMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer m.close(slog.New(slog.DiscardHandler))
	m.setService(srv.Service)
	m.serve(slog.New(slog.DiscardHandler))
	healthURL := "http://" + m.ln.Addr().String() + "/healthz"
	if code, _ := getHealth(t, healthURL); code != http.StatusOK {
		t.Fatalf("GET /healthz of a running service: %d; want 200", code)
	}
	returned := make(chan error, 1)
	restart := func() (*service.Service, error) {
		t.Error("runService started a new service after its connection closed")
		return nil, service.ErrConnectionClosed
	}
	go func() {
		returned <- runService(context.Background(), srv.Service, restart, m, slog.New(slog.DiscardHandler))
	}()

	app, _ := srv.ServiceConns()
	app.Close()
	select {
	case err := <-returned:
		if !errors.Is(err, service.ErrConnectionClosed) {
			t.Fatalf("runService returned %v; want ErrConnectionClosed", err)
		}
	case <-time.After(metricsTestTimeout):
		t.Fatal("runService did not return after the service's connection closed")
	}
	if code, body := getHealth(t, healthURL); code != http.StatusServiceUnavailable || !strings.Contains(body, "closed") {
		t.Fatalf("GET /healthz of a dead service: %d %q; want 503 naming the closed connection", code, body)
	}
}

// awaitLogURL returns the url attribute of the first JSON log record with
// message msg, failing if serve returns or the deadline passes first.
func awaitLogURL(t *testing.T, logs *ldlmtest.SyncBuffer, served <-chan error, msg string) string {
	t.Helper()
	deadline := time.Now().Add(metricsTestTimeout)
	for {
		text := logs.String()
		sc := bufio.NewScanner(strings.NewReader(text))
		for sc.Scan() {
			var rec struct{ Msg, URL string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == msg && rec.URL != "" {
				return rec.URL
			}
		}
		select {
		case err := <-served:
			t.Fatalf("serve returned (%v) before logging %q; log:\n%s", err, msg, text)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log; log:\n%s", msg, text)
		}
	}
}

// metricValue is the value of a counter or gauge series written as name or
// name{label="value"}.
func metricValue(families map[string]*dto.MetricFamily, series string) (float64, bool) {
	name, labels, _ := strings.Cut(series, "{")
	mf, ok := families[name]
	if !ok {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		var got []string
		for _, lp := range m.GetLabel() {
			got = append(got, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
		}
		if strings.Join(got, ",") != strings.TrimSuffix(labels, "}") {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

// A deposed service (service.ErrDeposed) is replaced by runService with a
// new one on the same connections, and the metrics server follows: /healthz
// says 503 while none runs, 200 and the new service's gauges after.
func TestDeposedServiceIsReplaced(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithDataDir(t.TempDir()))
	m, err := listenMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	defer m.close(log)
	m.setService(srv.Service)
	m.serve(log)
	base := "http://" + m.ln.Addr().String()

	app, sys := srv.ServiceConns()
	restarting, proceed := make(chan struct{}), make(chan struct{})
	restart := func() (*service.Service, error) {
		close(restarting)
		<-proceed
		return service.Start(service.Config{State: service.StateJetStream}, app, sys, log)
	}
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan error, 1)
	go func() { returned <- runService(ctx, srv.Service, restart, m, log) }()
	t.Cleanup(func() { // before srv's cleanup closes the connections
		cancel()
		select {
		case err := <-returned:
			if err != nil {
				t.Errorf("runService after its context ended: %v", err)
			}
		case <-time.After(metricsTestTimeout):
			t.Error("runService did not return after its context ended")
		}
	})

	nc := srv.Connect(t)
	trylock := func(name string) (subjects.LockResponse, error) {
		var r subjects.LockResponse
		msg, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, name), nil, 2*time.Second)
		if err == nil {
			err = json.Unmarshal(msg.Data, &r)
		}
		return r, err
	}
	if r, err := trylock("held"); err != nil || !r.Locked {
		t.Fatalf("trylock: %+v, %v", r, err)
	}
	// Another writer moves the state stream on; the next grant's write is
	// refused.
	js, err := jetstream.New(app)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "$LDLM.ldlm.state.intruder", []byte("x")); err != nil {
		t.Fatalf("publishing on the state stream: %v", err)
	}
	if r, err := trylock("refused"); err == nil {
		t.Fatalf("the deposed service answered: %+v", r)
	}
	select {
	case <-restarting:
	case <-time.After(metricsTestTimeout):
		t.Fatal("runService did not start a new service after the old one was deposed")
	}
	if code, body := getHealth(t, base+"/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no lock service runs") {
		t.Errorf("GET /healthz between two services: %d %q; want 503 saying no service runs", code, body)
	}
	close(proceed)

	deadline := time.Now().Add(metricsTestTimeout)
	for {
		r, err := trylock("held")
		if err == nil {
			if r.Locked || r.Error != nil {
				t.Fatalf("the lock held before the new service: %+v; want it still held", r)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new service did not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := getHealth(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz of the new service: %d %q; want 200", code, body)
	}
	if got, ok := metricValue(metricstest.Scrape(t, base+"/metrics"), "ldlm_holders"); !ok || got != 1 {
		t.Errorf("ldlm_holders of the new service = %v (present %t), want 1", got, ok)
	}
	select {
	case err := <-returned:
		t.Fatalf("runService returned %v while the new service runs", err)
	default:
	}
}
