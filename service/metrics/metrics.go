// Package metrics exposes what the lock service does as Prometheus metrics:
// counters and histograms fed by the engine's events, gauges read from the
// engine's counts at scrape time, and the Go runtime and process collectors.
//
// Wiring, in this order (the service is made after its Config):
//
//	m := metrics.New()
//	svc, err := service.Start(service.Config{Observer: m.Observe}, nc, sys, log)
//	…
//	m.SetStats(svc.Engine().Stats)
//	http.Handle("/metrics", m.Handler())
package metrics

import (
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ldlm-io/ldlm/service/engine"
)

// Metrics holds the service's metrics in a registry of its own. Its
// methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	grantedAtOnce prometheus.Counter
	grantedWaited prometheus.Counter
	// ended holds the counter of each release and wait-end kind, resolved
	// once so that Observe does no label lookup.
	ended       [256]prometheus.Counter
	waitSeconds prometheus.Histogram
	holdSeconds prometheus.Histogram

	stats *statsCollector
}

// New returns metrics registered in a new registry, with the Go runtime and
// process collectors. Every labelled series exists from the start, at 0.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), stats: &statsCollector{}}

	grants := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ldlm_grants_total",
		Help: "Grants made; waited is true when the request waited in the queue first.",
	}, []string{"waited"})
	m.grantedAtOnce = grants.WithLabelValues("false")
	m.grantedWaited = grants.WithLabelValues("true")

	releases := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ldlm_releases_total",
		Help: "Grants ended, by reason: released, expired, released-on-disconnect, force-released.",
	}, []string{"reason"})
	for _, k := range []engine.EventKind{engine.EventReleased, engine.EventExpired, engine.EventOwnerGone, engine.EventForced} {
		m.ended[k] = releases.WithLabelValues(k.String())
	}
	waitEnds := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ldlm_wait_ends_total",
		Help: "Waits that ended without a grant, by reason: timed-out, cancelled, dropped-on-disconnect, failed-on-close.",
	}, []string{"reason"})
	for _, k := range []engine.EventKind{engine.EventWaitTimedOut, engine.EventWaitCancelled, engine.EventWaitOwnerGone, engine.EventWaitClosed} {
		m.ended[k] = waitEnds.WithLabelValues(strings.TrimPrefix(k.String(), "wait-"))
	}

	m.waitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "ldlm_wait_seconds",
		Help: "How long granted waiters waited before their grant.",
		// From 100µs (a waiter granted by the next unlock on the same
		// machine) to 60s.
		Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
			0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
	})
	m.holdSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ldlm_hold_seconds",
		Help:    "How long grants were held, whatever ended them.",
		Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600}, // 1ms to an hour
	})

	m.reg.MustRegister(
		grants, releases, waitEnds, m.waitSeconds, m.holdSeconds, m.stats,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Observe counts one engine event. Pass it as service.Config.Observer: it
// only updates atomic counters and does not allocate.
//
// A grant made at once has a zero Duration; any other grant waited, for
// that long (a negative Duration, from the wall clock going back, counts as
// no time).
func (m *Metrics) Observe(ev engine.Event) {
	secs := max(ev.Duration.Seconds(), 0)
	switch ev.Kind {
	case engine.EventGranted:
		if ev.Duration == 0 {
			m.grantedAtOnce.Inc()
			return
		}
		m.grantedWaited.Inc()
		m.waitSeconds.Observe(secs)
	case engine.EventReleased, engine.EventExpired, engine.EventOwnerGone, engine.EventForced:
		m.ended[ev.Kind].Inc()
		m.holdSeconds.Observe(secs)
	default:
		if c := m.ended[ev.Kind]; c != nil {
			c.Inc()
		}
	}
}

// SetStats sets where the ldlm_locks, ldlm_holders, ldlm_waiters and
// ldlm_owners gauges are read from at each scrape, typically
// svc.Engine().Stats. Until it is called (or after it is called with nil)
// the gauges are absent.
func (m *Metrics) SetStats(stats func() engine.Stats) { m.stats.fn.Store(&stats) }

// Handler serves the metrics in the Prometheus exposition formats; mount it
// on /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// statsCollector reports the engine's counts as gauges, read once per
// scrape so that the four are consistent.
type statsCollector struct {
	fn atomic.Pointer[func() engine.Stats]
}

var statsGauges = []struct {
	desc  *prometheus.Desc
	value func(engine.Stats) int
}{
	{prometheus.NewDesc("ldlm_locks", "Locks that exist: held or waited for.", nil, nil), func(s engine.Stats) int { return s.Locks }},
	{prometheus.NewDesc("ldlm_holders", "Grants held, over all locks.", nil, nil), func(s engine.Stats) int { return s.Holders }},
	{prometheus.NewDesc("ldlm_waiters", "Lock requests waiting, over all locks.", nil, nil), func(s engine.Stats) int { return s.Waiters }},
	{prometheus.NewDesc("ldlm_owners", "Owners (connections) with at least one grant or wait.", nil, nil), func(s engine.Stats) int { return s.Owners }},
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, g := range statsGauges {
		ch <- g.desc
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	fn := c.fn.Load()
	if fn == nil || *fn == nil {
		return
	}
	s := (*fn)()
	for _, g := range statsGauges {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(g.value(s)))
	}
}
