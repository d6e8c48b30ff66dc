package metrics

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/ldlm-io/ldlm/service/engine"
)

// sample finds the value of the series name{label="value"} (label "" for an
// unlabelled series) among families; for a histogram it is the sample
// count. ok is false when there is no such series.
func sample(families []*dto.MetricFamily, name, label, value string) (v float64, ok bool) {
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !hasLabel(m, label, value) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name && lp.GetValue() == value {
			return true
		}
	}
	return false
}

// series names a series as "name" or "name{label=value}".
type series string

func (s series) split() (name, label, value string) {
	name, rest, ok := strings.Cut(string(s), "{")
	if !ok {
		return name, "", ""
	}
	label, value, _ = strings.Cut(strings.TrimSuffix(rest, "}"), "=")
	return name, label, value
}

// allSeries are the event-fed series, each expected at 0 unless a test
// case says otherwise.
var allSeries = []series{
	"ldlm_grants_total{waited=false}",
	"ldlm_grants_total{waited=true}",
	"ldlm_releases_total{reason=released}",
	"ldlm_releases_total{reason=expired}",
	"ldlm_releases_total{reason=released-on-disconnect}",
	"ldlm_releases_total{reason=force-released}",
	"ldlm_wait_ends_total{reason=timed-out}",
	"ldlm_wait_ends_total{reason=cancelled}",
	"ldlm_wait_ends_total{reason=dropped-on-disconnect}",
	"ldlm_wait_ends_total{reason=failed-on-close}",
	"ldlm_wait_seconds", // sample counts of the histograms
	"ldlm_hold_seconds",
}

func checkSeries(t *testing.T, m *Metrics, want map[series]float64) {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	for _, s := range allSeries {
		name, label, value := s.split()
		got, ok := sample(families, name, label, value)
		if !ok {
			t.Errorf("%s: missing", s)
			continue
		}
		if got != want[s] {
			t.Errorf("%s = %v, want %v", s, got, want[s])
		}
	}
}

func TestObserve(t *testing.T) {
	granted := engine.Event{Kind: engine.EventGranted, Name: "a", Token: 1}
	waited := func(d time.Duration) engine.Event {
		return engine.Event{Kind: engine.EventGranted, Name: "a", Token: 2, Duration: d}
	}
	ended := func(k engine.EventKind) engine.Event {
		return engine.Event{Kind: k, Name: "a", Token: 1, Duration: time.Second}
	}
	tests := []struct {
		name   string
		events []engine.Event
		want   map[series]float64
	}{
		{name: "nothing", want: nil},
		{
			name:   "grants at once",
			events: []engine.Event{granted, granted, granted},
			want:   map[series]float64{"ldlm_grants_total{waited=false}": 3},
		},
		{
			name:   "waited grants are timed",
			events: []engine.Event{granted, waited(time.Millisecond), waited(2 * time.Second)},
			want: map[series]float64{
				"ldlm_grants_total{waited=false}": 1,
				"ldlm_grants_total{waited=true}":  2,
				"ldlm_wait_seconds":               2,
			},
		},
		{
			name:   "a waited grant with a clock gone back",
			events: []engine.Event{waited(-time.Millisecond)},
			want:   map[series]float64{"ldlm_grants_total{waited=true}": 1, "ldlm_wait_seconds": 1},
		},
		{
			name: "releases by reason",
			events: []engine.Event{
				ended(engine.EventReleased), ended(engine.EventReleased),
				ended(engine.EventExpired), ended(engine.EventOwnerGone), ended(engine.EventForced),
			},
			want: map[series]float64{
				"ldlm_releases_total{reason=released}":               2,
				"ldlm_releases_total{reason=expired}":                1,
				"ldlm_releases_total{reason=released-on-disconnect}": 1,
				"ldlm_releases_total{reason=force-released}":         1,
				"ldlm_hold_seconds":                                  5,
			},
		},
		{
			name: "wait ends by reason",
			events: []engine.Event{
				ended(engine.EventWaitTimedOut), ended(engine.EventWaitCancelled), ended(engine.EventWaitCancelled),
				ended(engine.EventWaitOwnerGone), ended(engine.EventWaitClosed),
			},
			want: map[series]float64{
				"ldlm_wait_ends_total{reason=timed-out}":             1,
				"ldlm_wait_ends_total{reason=cancelled}":             2,
				"ldlm_wait_ends_total{reason=dropped-on-disconnect}": 1,
				"ldlm_wait_ends_total{reason=failed-on-close}":       1,
			},
		},
		{
			name:   "unknown kinds are ignored",
			events: []engine.Event{{Kind: 0}, {Kind: 200}, {Kind: 255, Duration: time.Second}},
			want:   nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New()
			for _, ev := range tc.events {
				m.Observe(ev)
			}
			checkSeries(t, m, tc.want)
		})
	}
}

// Every engine event kind is counted somewhere: a kind added to the engine
// without a metric fails here.
func TestObserveCoversEveryKind(t *testing.T) {
	for k := engine.EventKind(1); k.String() != "unknown"; k++ {
		m := New()
		m.Observe(engine.Event{Kind: k, Duration: time.Millisecond})
		families, err := m.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var total float64
		for _, s := range allSeries[:10] { // the counters
			name, label, value := s.split()
			v, _ := sample(families, name, label, value)
			total += v
		}
		if total != 1 {
			t.Errorf("event %s: the counters went up by %v, want 1", k, total)
		}
	}
}

func TestWaitHistogramBuckets(t *testing.T) {
	m := New()
	for _, d := range []time.Duration{50 * time.Microsecond, 200 * time.Microsecond, 3 * time.Second, 2 * time.Minute} {
		m.Observe(engine.Event{Kind: engine.EventGranted, Duration: d})
	}
	if got := testutil.CollectAndCount(m.waitSeconds); got != 1 {
		t.Fatalf("wait histogram collects %d series, want 1", got)
	}
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var h *dto.Histogram
	for _, mf := range families {
		if mf.GetName() == "ldlm_wait_seconds" {
			h = mf.GetMetric()[0].GetHistogram()
		}
	}
	if h == nil {
		t.Fatal("no ldlm_wait_seconds")
	}
	buckets := h.GetBucket()
	if first, last := buckets[0].GetUpperBound(), buckets[len(buckets)-1].GetUpperBound(); first != 0.0001 || last != 60 {
		t.Errorf("buckets from %v to %v, want 0.0001 to 60", first, last)
	}
	cum := map[float64]uint64{}
	for _, b := range buckets {
		cum[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	if cum[0.0001] != 1 || cum[0.00025] != 2 || cum[5] != 3 || cum[60] != 3 || h.GetSampleCount() != 4 {
		t.Errorf("cumulative counts %v, count %d; want 1 ≤100µs, 2 ≤250µs, 3 ≤5s and ≤60s, 4 in all",
			cum, h.GetSampleCount())
	}
	if want := 0.00005 + 0.0002 + 3 + 120; fmt.Sprintf("%.6f", h.GetSampleSum()) != fmt.Sprintf("%.6f", want) {
		t.Errorf("sum %v, want %v", h.GetSampleSum(), want)
	}
}

func TestStatsGauges(t *testing.T) {
	m := New()
	gauges := []string{"ldlm_locks", "ldlm_holders", "ldlm_waiters", "ldlm_owners"}

	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gauges {
		if _, ok := sample(families, g, "", ""); ok {
			t.Errorf("%s present before SetStats", g)
		}
	}

	m.SetStats(func() engine.Stats { return engine.Stats{Locks: 4, Holders: 3, Waiters: 2, Owners: 1} })
	families, err = m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range gauges {
		if v, ok := sample(families, g, "", ""); !ok || v != float64(4-i) {
			t.Errorf("%s = %v (present %t), want %d", g, v, ok, 4-i)
		}
	}

	m.SetStats(nil)
	families, err = m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sample(families, "ldlm_locks", "", ""); ok {
		t.Error("ldlm_locks present after SetStats(nil)")
	}
}

// The registry holds the Go runtime and process collectors too.
func TestRuntimeCollectors(t *testing.T) {
	families, err := New().reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range families {
		names[mf.GetName()] = true
	}
	want := []string{"go_goroutines", "go_memstats_alloc_bytes"}
	if runtime.GOOS == "linux" { // the process collector reports where procfs is
		want = append(want, "process_cpu_seconds_total", "process_start_time_seconds")
	}
	for _, name := range want {
		if !names[name] {
			t.Errorf("%s missing", name)
		}
	}
}

func BenchmarkObserve(b *testing.B) {
	m := New()
	events := []engine.Event{
		{Kind: engine.EventGranted, Name: "a", Token: 1},
		{Kind: engine.EventGranted, Name: "a", Token: 2, Duration: 3 * time.Millisecond},
		{Kind: engine.EventReleased, Name: "a", Token: 1, Duration: 20 * time.Millisecond},
		{Kind: engine.EventWaitTimedOut, Name: "a", Duration: time.Second},
	}
	names := []string{"granted-at-once", "granted-after-wait", "released", "wait-timed-out"}
	for i, ev := range events {
		b.Run(names[i], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m.Observe(ev)
			}
		})
	}
	b.Run("parallel-mix", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				m.Observe(events[i&3])
				i++
			}
		})
	})
}
