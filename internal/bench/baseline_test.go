package bench

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// TestShortBaseline measures two lock services on one NATS server side by
// side, as `ldlm bench --server URL --baseline-prefix P` does, and checks
// that both get every lock row with a positive rate. It asserts nothing
// about timing.
func TestShortBaseline(t *testing.T) {
	e, err := StartEmbedded(service.Config{}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	app, err := e.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	sys, err := e.NATS.ConnectSystem()
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	other, err := service.Start(service.Config{Prefix: "ldlmold"}, app, sys, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Stop()

	target, err := NewExternalTarget(e.NATS.ClientURL(), "ldlm")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	for _, bad := range []string{"ldlm", "nobody"} {
		if err := target.SetBaseline(bad); err == nil {
			t.Errorf("SetBaseline(%q) accepted", bad)
		}
	}
	if err := target.SetBaseline("ldlmold"); err != nil {
		t.Fatal(err)
	}

	cfg := ShortConfig()
	cfg.Workers = []int{1, 8}
	cfg.Conns = []ConnMode{SharedConn}
	cfg.Workloads = []string{WorkUncontended, WorkContended}
	var out bytes.Buffer
	rows, err := Run(target, cfg, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Row{}
	for _, r := range rows {
		got[r.System+" "+r.Workload+" "+strconv.Itoa(r.Workers)] = r
	}
	var want []string
	for _, n := range []string{"1", "8"} {
		want = append(want, "ldlm echo "+n)
		for _, system := range []string{"ldlm", BaselineSystem} {
			want = append(want, system+" uncontended "+n, system+" contended "+n)
		}
	}
	if len(rows) != len(want) {
		t.Errorf("%d rows, want %d", len(rows), len(want))
	}
	for _, k := range want {
		r, ok := got[k]
		switch {
		case !ok:
			t.Errorf("no row %q", k)
		case r.Err != nil || r.Rate <= 0 || r.Ratio <= 0:
			t.Errorf("%q: rate %v, ratio %v, err %v", k, r.Rate, r.Ratio, r.Err)
		}
	}
	if !strings.Contains(out.String(), "\nbaseline contended shared 8 workers: hand-over") {
		t.Error("no hand-over figures for the baseline")
	}
	// In both services every cycle unlocked what it locked.
	for _, st := range []struct {
		name string
		svc  *service.Service
	}{{"ldlm", e.Service}, {"baseline", other}} {
		if s := st.svc.Engine().Stats(); s.Locks != 0 || s.Waiters != 0 {
			t.Errorf("%s left behind: %+v", st.name, s)
		}
	}
}

// A baseline is for an external target only.
func TestBaselineNeedsExternal(t *testing.T) {
	target, err := NewEmbeddedTarget(false)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := target.SetBaseline("ldlmold"); err == nil {
		t.Error("SetBaseline on an embedded target accepted")
	}
}

// SetJSONBaseline on an embedded target adds baseline rows for every lock
// workload, against the same service, whose clients decode with
// encoding/json; both sets of rows are there with a positive rate. It
// asserts nothing about timing.
func TestShortJSONBaseline(t *testing.T) {
	target, err := NewEmbeddedTarget(false)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	target.SetJSONBaseline()

	cfg := ShortConfig()
	cfg.Workers = []int{8}
	cfg.Conns = []ConnMode{SharedConn}
	cfg.Workloads = []string{WorkUncontended, WorkContended}
	var out bytes.Buffer
	rows, err := Run(target, cfg, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Row{}
	for _, r := range rows {
		got[r.System+" "+r.Workload] = r
	}
	want := []string{"ldlm echo", "ldlm echo-tcp"}
	for _, system := range []string{"ldlm", BaselineSystem} {
		want = append(want, system+" uncontended", system+" contended")
	}
	if len(rows) != len(want) {
		t.Errorf("%d rows, want %d", len(rows), len(want))
	}
	for _, k := range want {
		r, ok := got[k]
		switch {
		case !ok:
			t.Errorf("no row %q", k)
		case r.Err != nil || r.Rate <= 0 || r.Ratio <= 0:
			t.Errorf("%q: rate %v, ratio %v, err %v", k, r.Rate, r.Ratio, r.Err)
		}
	}
	if !strings.Contains(out.String(), "baseline: the service under test, clients decoding replies with encoding/json") {
		t.Error("the header does not say what the baseline is")
	}
	if s := target.Embedded.Service.Engine().Stats(); s.Locks != 0 || s.Waiters != 0 {
		t.Errorf("left behind: %+v", s)
	}
}

// The bench client's decoders give what json.Unmarshal gives, on both
// paths, for a reply the service writes.
func TestClientDecoders(t *testing.T) {
	data, err := subjects.AppendLockResponse(nil, subjects.LockResponse{Locked: true, Name: "n", Key: "k", Token: 7, Instance: "i"})
	if err != nil {
		t.Fatal(err)
	}
	var want subjects.LockResponse
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	for _, c := range []client{{}, {jsonReplies: true}} {
		var got subjects.LockResponse
		if err := c.decodeLock(data, &got); err != nil || got != want {
			t.Errorf("jsonReplies %v: decodeLock(%s) = %+v, %v; want %+v", c.jsonReplies, data, got, err, want)
		}
	}
}

// SetClientlib adds rows of the uncontended and contended workloads run
// through the Go client, with a positive rate and nothing left behind. It
// asserts nothing about timing.
func TestShortClientlib(t *testing.T) {
	target, err := NewEmbeddedTarget(false)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	target.SetClientlib()

	cfg := ShortConfig()
	cfg.Workers = []int{8}
	cfg.Conns = []ConnMode{SharedConn}
	cfg.Workloads = []string{WorkUncontended, WorkContended}
	var out bytes.Buffer
	rows, err := Run(target, cfg, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Row{}
	for _, r := range rows {
		got[r.System+" "+r.Workload] = r
	}
	for _, k := range []string{"ldlm uncontended", "ldlm contended", "clientlib uncontended", "clientlib contended"} {
		if r, ok := got[k]; !ok || r.Err != nil || r.Rate <= 0 || r.Ratio <= 0 {
			t.Errorf("%q: %+v", k, r)
		}
	}
	if s := target.Embedded.Service.Engine().Stats(); s.Locks != 0 || s.Waiters != 0 {
		t.Errorf("left behind: %+v", s)
	}
}
