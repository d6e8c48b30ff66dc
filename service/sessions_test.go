package service

import (
	"slices"
	"testing"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// fakeGraces is the sessionTable's timers, fired by hand.
type fakeGraces struct {
	fns     []func()
	stopped []bool
}

func (f *fakeGraces) after(d time.Duration, fn func()) func() bool {
	i := len(f.fns)
	f.fns = append(f.fns, fn)
	f.stopped = append(f.stopped, false)
	return func() bool { f.stopped[i] = true; return true }
}

// fireAll ends every grace started so far and not stopped, as if the
// grace had passed.
func (f *fakeGraces) fireAll() {
	for i, fn := range f.fns {
		if !f.stopped[i] && fn != nil {
			f.fns[i] = nil
			fn()
		}
	}
}

// The grace logic, step by step, without NATS or sleeps: each case is a
// list of events, then the sessions that must have been released before
// the graces end and after.
func TestSessionGrace(t *testing.T) {
	connA := subjects.Owner{ServerID: "S1", ClientID: 5}
	connB := subjects.Owner{ServerID: "S2", ClientID: 9}
	connC := subjects.Owner{ServerID: "S1", ClientID: 6}
	type step struct {
		bind    string         // a request of this session…
		over    subjects.Owner // …over this connection
		closed  subjects.Owner // a disconnect advisory of this connection…
		reason  string         // …with this reason
		server  string         // a server shut down
		expect  []string       // a restored state expects these sessions
		sweep   subjects.Owner // a sweep finds this connection gone
		oldMark bool           // the sweep's mark was taken before the last bind
	}
	tests := []struct {
		name          string
		steps         []step
		releasedNow   []string // released before any grace ends
		releasedLater []string // released when the graces end
		inGrace       int      // sessions in grace after the steps
	}{
		{name: "client closed: released at once",
			steps:       []step{{bind: "s1", over: connA}, {closed: connA, reason: "Client Closed"}},
			releasedNow: []string{"s1"}},
		{name: "kicked: released at once",
			steps:       []step{{bind: "s1", over: connA}, {closed: connA, reason: "Kicked"}},
			releasedNow: []string{"s1"}},
		{name: "server shutdown reason, no reconnect: released when the grace ends",
			steps:         []step{{bind: "s1", over: connA}, {closed: connA, reason: "Server Shutdown"}},
			releasedLater: []string{"s1"}, inGrace: 1},
		{name: "stale connection, reconnect within grace: kept",
			steps: []step{{bind: "s1", over: connA}, {closed: connA, reason: "Stale Connection"}, {bind: "s1", over: connB}}},
		{name: "a late request of the cut connection does not end the grace",
			steps:         []step{{bind: "s1", over: connA}, {closed: connA, reason: "Read Error"}, {bind: "s1", over: connA}},
			releasedLater: []string{"s1"}, inGrace: 1},
		{name: "two sessions on one connection, one comes back",
			steps: []step{{bind: "s1", over: connA}, {bind: "s2", over: connA}, {closed: connA, reason: "Write Error"},
				{bind: "s2", over: connB}},
			releasedLater: []string{"s1"}, inGrace: 1},
		{name: "server announces shutdown: its connections' sessions get grace, others not",
			steps: []step{{bind: "s1", over: connA}, {bind: "s2", over: connB}, {bind: "s3", over: connC}, {server: "S1"},
				{bind: "s3", over: connB}},
			releasedLater: []string{"s1"}, inGrace: 1},
		{name: "a session that moved before its old server shut down is not touched",
			steps: []step{{bind: "s1", over: connA}, {bind: "s1", over: connB}, {server: "S1"}}},
		{name: "closed after it moved: the old connection's end does not concern it",
			steps: []step{{bind: "s1", over: connA}, {bind: "s1", over: connB}, {closed: connA, reason: "Client Closed"}}},
		{name: "restored sessions are expected; one comes back",
			steps:         []step{{expect: []string{"r1", "r2"}}, {bind: "r2", over: connB}},
			releasedLater: []string{"r1"}, inGrace: 1},
		{name: "expecting a bound session changes nothing",
			steps: []step{{bind: "s1", over: connA}, {expect: []string{"s1"}}}},
		{name: "sweep finds the connection gone: grace",
			steps:         []step{{bind: "s1", over: connA}, {sweep: connA}},
			releasedLater: []string{"s1"}, inGrace: 1},
		{name: "sweep spares a connection bound after its mark",
			steps: []step{{bind: "s1", over: connA}, {sweep: connA, oldMark: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var released []string
			timers := &fakeGraces{}
			tab := newSessionTable(time.Second, func(s, why string) { released = append(released, s) })
			tab.after = timers.after
			for _, st := range tt.steps {
				switch {
				case st.bind != "":
					tab.bind(st.bind, st.over)
				case !st.closed.IsZero():
					tab.connClosed(st.closed, st.reason)
				case st.server != "":
					tab.connsGone(^uint64(0), func(c subjects.Owner) bool { return c.ServerID == st.server })
				case st.expect != nil:
					tab.expect(st.expect)
				case !st.sweep.IsZero():
					mark := tab.mark()
					if st.oldMark {
						mark--
					}
					tab.connsGone(mark, func(c subjects.Owner) bool { return c == st.sweep })
				}
			}
			slices.Sort(released)
			if !slices.Equal(released, tt.releasedNow) {
				t.Errorf("released at once: %v, want %v", released, tt.releasedNow)
			}
			if got := tab.inGrace(); got != tt.inGrace {
				t.Errorf("%d sessions in grace, want %d", got, tt.inGrace)
			}
			released = nil
			timers.fireAll()
			slices.Sort(released)
			if !slices.Equal(released, tt.releasedLater) {
				t.Errorf("released when the graces end: %v, want %v", released, tt.releasedLater)
			}
			if got := tab.inGrace(); got != 0 {
				t.Errorf("%d sessions still in grace after it ended", got)
			}
		})
	}
}

// bind reports whether the session was known, which the attach reply
// says (resumed): a client whose session was released must make a new one.
func TestSessionBindKnown(t *testing.T) {
	timers := &fakeGraces{}
	tab := newSessionTable(time.Second, func(string, string) {})
	tab.after = timers.after
	a, b := subjects.Owner{ServerID: "S", ClientID: 1}, subjects.Owner{ServerID: "S", ClientID: 2}
	if tab.bind("s1", a) {
		t.Error("a new session is known")
	}
	if !tab.bind("s1", a) {
		t.Error("a bound session is not known")
	}
	tab.connClosed(a, "Server Shutdown")
	if !tab.bind("s1", b) {
		t.Error("a session in grace is not known")
	}
	if got := tab.connOf("s1"); got != b {
		t.Errorf("bound to %v, want %v", got, b)
	}
	tab.connClosed(b, "Client Closed")
	if tab.known("s1") || tab.bind("s1", subjects.Owner{ServerID: "S", ClientID: 3}) {
		t.Error("a released session is still known")
	}
	started := len(timers.fns)
	tab.close()
	tab.connClosed(subjects.Owner{ServerID: "S", ClientID: 3}, "Server Shutdown")
	if n := len(timers.fns) - started; n != 0 {
		t.Errorf("%d timers started after close; want none", n)
	}
}

// A session that owns nothing at two sweeps in a row, without a request
// between, is forgotten; one that owns something, or that made a request
// since, is kept.
func TestSessionIdleForgotten(t *testing.T) {
	tab := newSessionTable(time.Second, func(string, string) {})
	tab.after = (&fakeGraces{}).after
	a := subjects.Owner{ServerID: "S", ClientID: 1}
	b := subjects.Owner{ServerID: "S", ClientID: 2}
	tab.bind("idle", a)
	tab.bind("holder", a)
	tab.bind("busy", a)
	owns := func(s string) bool { return s == "holder" }
	if n := tab.forgetIdle(owns); n != 0 {
		t.Fatalf("first sweep forgot %d sessions; none before a second", n)
	}
	tab.bind("busy", b) // a request over another connection between the sweeps
	if n := tab.forgetIdle(owns); n != 1 || tab.known("idle") {
		t.Fatalf("second sweep forgot %d sessions (idle known: %v); want the idle one", n, tab.known("idle"))
	}
	if !tab.known("holder") || !tab.known("busy") {
		t.Fatal("a session that owns something, or was used since, was forgotten")
	}
	if tab.bind("idle", a) {
		t.Error("a forgotten session is still known when it comes back")
	}
	// The connection's end concerns only the sessions still bound to it.
	if n := tab.connClosed(a, "Client Closed"); n != 2 {
		t.Errorf("the connection's end concerned %d sessions, want 2 (holder, idle)", n)
	}
}
