package metrics_test

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/internal/metricstest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/service/metrics"
	"github.com/ldlm-io/ldlm/subjects"
)

// Bounds of the test's waits: they turn a hang into a failure, they do not
// measure anything.
const (
	requestTimeout = 10 * time.Second
	pollTimeout    = 10 * time.Second
)

// TestMetricsEndpoint runs a real server with the metrics observing it,
// makes grants over NATS and reads them back from /metrics.
func TestMetricsEndpoint(t *testing.T) {
	m := metrics.New()
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{Observer: m.Observe}))
	m.SetStats(srv.Service.Engine().Stats)
	web := httptest.NewServer(m.Handler())
	t.Cleanup(web.Close)
	nc := srv.Connect(t)

	// Two grants at once, and a trylock that finds "a" taken.
	a := lockRequest(t, nc, subjects.OpTryLock, "a", nil)
	if !a.Locked {
		t.Fatalf("trylock a: not granted: %+v", a)
	}
	if b := lockRequest(t, nc, subjects.OpTryLock, "b", nil); !b.Locked {
		t.Fatalf("trylock b: not granted: %+v", b)
	}
	if busy := lockRequest(t, nc, subjects.OpTryLock, "a", nil); busy.Locked || busy.Error != nil {
		t.Fatalf("trylock a while held: %+v, want locked false without error", busy)
	}

	// A lock that waits for "a", granted when a's holder unlocks.
	waiterKey := "metrics-test-waiter-0123456789abcdef"
	type result struct {
		msg *nats.Msg
		err error
	}
	waited := make(chan result, 1)
	waitBody := mustJSON(t, map[string]any{"key": waiterKey})
	go func() { // no t here: it may outlive a failed test
		msg, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, subjects.OpLock, "a"), waitBody, requestTimeout)
		waited <- result{msg, err}
	}()
	poll(t, "the lock request to park", func() error {
		if s := srv.Service.Engine().Stats(); s.Waiters != 1 {
			return fmt.Errorf("%d waiters", s.Waiters)
		}
		return nil
	})
	if got := metricstest.Scrape(t, web.URL+"/metrics"); value(got, "ldlm_waiters", "", "") != 1 {
		t.Errorf("ldlm_waiters = %v with one parked request, want 1", value(got, "ldlm_waiters", "", ""))
	}
	unlock(t, nc, "a", a.Key)
	select {
	case r := <-waited:
		var w subjects.LockResponse
		if r.err == nil {
			r.err = json.Unmarshal(r.msg.Data, &w)
		}
		if r.err != nil || !w.Locked {
			t.Fatalf("waiting lock a: not granted: %+v (%v)", w, r.err)
		}
	case <-time.After(requestTimeout):
		t.Fatal("the waiting lock was not granted")
	}

	// Events are observed on the goroutine that caused them, which may
	// answer a request before or after it counts: poll until all arrived.
	var families map[string]*dto.MetricFamily
	poll(t, "the metrics to count 3 grants, 1 waited", func() error {
		families = metricstest.Scrape(t, web.URL+"/metrics")
		atOnce := value(families, "ldlm_grants_total", "waited", "false")
		afterWait := value(families, "ldlm_grants_total", "waited", "true")
		if atOnce != 2 || afterWait != 1 {
			return fmt.Errorf("grants: %v at once, %v after a wait", atOnce, afterWait)
		}
		return nil
	})
	checks := []struct {
		name, label, value string
		want               float64
	}{
		{"ldlm_releases_total", "reason", "released", 1},
		{"ldlm_releases_total", "reason", "expired", 0},
		{"ldlm_wait_ends_total", "reason", "timed-out", 0},
		{"ldlm_wait_seconds", "", "", 1}, // sample count
		{"ldlm_hold_seconds", "", "", 1},
		{"ldlm_locks", "", "", 2},   // a and b
		{"ldlm_holders", "", "", 2}, // b and the former waiter
		{"ldlm_waiters", "", "", 0},
	}
	for _, c := range checks {
		if got := value(families, c.name, c.label, c.value); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.label, c.value, got, c.want)
		}
	}
	if _, ok := families["go_goroutines"]; !ok {
		t.Error("go_goroutines missing: no Go collector")
	}
}

func lockRequest(t *testing.T, nc *nats.Conn, op, name string, body map[string]any) subjects.LockResponse {
	t.Helper()
	msg, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, op, name), mustJSON(t, body), requestTimeout)
	if err != nil {
		t.Fatalf("%s %s: %v", op, name, err)
	}
	var resp subjects.LockResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		t.Fatalf("%s %s: reply %q: %v", op, name, msg.Data, err)
	}
	return resp
}

func unlock(t *testing.T, nc *nats.Conn, name, key string) {
	t.Helper()
	msg, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, subjects.OpUnlock, name),
		mustJSON(t, map[string]any{"key": key}), requestTimeout)
	if err != nil {
		t.Fatalf("unlock %s: %v", name, err)
	}
	var resp subjects.UnlockResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil || !resp.Unlocked {
		t.Fatalf("unlock %s: reply %s (%v)", name, msg.Data, err)
	}
}

func mustJSON(t *testing.T, v map[string]any) []byte {
	t.Helper()
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encoding %v: %v", v, err)
	}
	return b
}

// poll calls check until it returns nil, failing the test with its last
// error at the deadline.
func poll(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(pollTimeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// value is the value of the series name{label="v"} (label "": the first
// series of name), the sample count for a histogram; -1 when absent.
func value(families map[string]*dto.MetricFamily, name, label, v string) float64 {
	mf, ok := families[name]
	if !ok {
		return -1
	}
	for _, m := range mf.GetMetric() {
		if label != "" && !hasLabel(m, label, v) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	return -1
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name && lp.GetValue() == value {
			return true
		}
	}
	return false
}
