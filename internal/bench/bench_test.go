package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestShortRun runs the short mode against an embedded server and checks
// that every expected row is there with a positive rate. It asserts
// nothing about timing.
func TestShortRun(t *testing.T) {
	target, err := NewEmbeddedTarget(false)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	cfg := ShortConfig()
	var out bytes.Buffer
	rows, err := Run(target, cfg, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}

	type key struct {
		conns    ConnMode
		workers  int
		workload string
	}
	got := map[key]Row{}
	for _, r := range rows {
		got[key{r.Conns, r.Workers, r.Workload}] = r
	}
	var want []key
	for _, mode := range []ConnMode{SharedConn, ConnPerWorker} {
		for _, n := range []int{1, 8, 64} {
			for _, w := range []string{WorkEcho, WorkEchoTCP, WorkUncontended, WorkContended} {
				want = append(want, key{mode, n, w})
			}
		}
		want = append(want, key{mode, 32, WorkEcho}, key{mode, 32, WorkEchoTCP}, key{mode, 32, WorkSemaphore})
	}
	if len(rows) != len(want) {
		t.Errorf("%d rows, want %d", len(rows), len(want))
	}
	for _, k := range want {
		r, ok := got[k]
		switch {
		case !ok:
			t.Errorf("no row for %v", k)
		case r.Err != nil:
			t.Errorf("%v: %v", k, r.Err)
		case r.Cycles <= 0 || r.Rate <= 0 || r.Ratio <= 0 || r.RatioTCP <= 0 || r.P50 <= 0:
			t.Errorf("%v: %d cycles, rate %v, ratio %v, p50 %v", k, r.Cycles, r.Rate, r.Ratio, r.P50)
		}
		if ok && !strings.Contains(out.String(), tableLine(r)) {
			t.Errorf("%v: not printed", k)
		}
	}
	if !strings.Contains(out.String(), "contended shared 64 workers: hand-over") {
		t.Error("no hand-over figures printed")
	}
	// Every cycle unlocked what it locked.
	if st := target.Embedded.Service.Engine().Stats(); st.Locks != 0 || st.Waiters != 0 {
		t.Errorf("left behind: %+v", st)
	}
}

// tableLine is the start of the printed line of r.
func tableLine(r Row) string {
	var b bytes.Buffer
	tw := NewTable(&b)
	tw.Add(r)
	lines := strings.Split(b.String(), "\n")
	return lines[1][:60]
}

func TestShortScale(t *testing.T) {
	var out bytes.Buffer
	err := RunScale(ShortScaleConfig(), &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"locks (service): ", "locks (engine alone): ", "waiters (service): ",
		"waiters (engine alone): ", "conns: ", "owner: ", "sweep: "} {
		if !strings.Contains(out.String(), "\n"+prefix) {
			t.Errorf("no %q line", prefix)
		}
	}
}

func TestSummarise(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 1000; i++ {
		lat = append(lat, time.Duration(i)*time.Microsecond)
	}
	st := Summarise([]Sample{
		{Cycles: 500, Elapsed: time.Second, Latencies: lat[:500]},
		{Cycles: 500, Elapsed: time.Second, Latencies: lat[500:]},
	})
	if st.Rate != 500 || st.P50 != 500*time.Microsecond || st.P99 != 990*time.Microsecond ||
		st.P999 != 999*time.Microsecond || st.Max != 1000*time.Microsecond || len(st.RoundRates) != 2 {
		t.Errorf("%+v", st)
	}
}
