package service

import (
	"slices"
	"testing"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

func set(ids ...string) map[string]bool {
	out := map[string]bool{}
	for _, id := range ids {
		out[id] = true
	}
	return out
}

// Route checks, one after the other: which servers become suspects, when
// they stop being suspects, and that the own server changing (the
// service's connection moved) makes the former one a suspect.
func TestRouteWatchObserve(t *testing.T) {
	type check struct {
		at      time.Duration // since the first check
		own     string
		remotes []string
		judge   []string // the suspects to judge after it
	}
	tests := []struct {
		name   string
		checks []check
	}{
		{"nothing changes", []check{
			{0, "A", []string{"B", "C"}, nil},
			{time.Second, "A", []string{"B", "C"}, nil},
		}},
		{"a server that was never seen is not suspect", []check{
			{0, "A", []string{"B"}, nil},
			{time.Second, "A", []string{"B"}, nil},
		}},
		{"a new server is not suspect", []check{
			{0, "A", []string{"B"}, nil},
			{time.Second, "A", []string{"B", "C"}, nil},
		}},
		{"a lost route makes a suspect until judged or back", []check{
			{0, "A", []string{"B", "C"}, nil},
			{time.Second, "A", []string{"B"}, []string{"C"}},
			{2 * time.Second, "A", []string{"B"}, []string{"C"}},
			{3 * time.Second, "A", []string{"B", "C"}, nil},
			{4 * time.Second, "A", []string{"B", "C"}, nil},
		}},
		{"a suspect is dropped after suspectFor", []check{
			{0, "A", []string{"B", "C"}, nil},
			{time.Second, "A", []string{"B"}, []string{"C"}},
			{time.Second + suspectFor, "A", []string{"B"}, []string{"C"}},
			{2*time.Second + suspectFor, "A", []string{"B"}, nil},
		}},
		{"the own server changes: the former one is suspect", []check{
			{0, "A", []string{"B", "C"}, nil},
			{time.Second, "B", []string{"C"}, []string{"A"}},
		}},
		{"the own server changes, the new one has a route to the former", []check{
			{0, "A", []string{"B", "C"}, nil},
			{time.Second, "B", []string{"A", "C"}, nil},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newRouteWatch()
			start := time.Now()
			for i, c := range tt.checks {
				got := w.observe(start.Add(c.at), c.own, set(c.remotes...))
				slices.Sort(got)
				if !slices.Equal(got, c.judge) {
					t.Fatalf("check %d: judge %v, want %v", i, got, c.judge)
				}
				if want := slices.Sorted(slices.Values(append([]string{c.own}, c.remotes...))); !slices.Equal(w.watched(), want) {
					t.Fatalf("check %d: watched %v, want %v", i, w.watched(), want)
				}
			}
		})
	}
}

// A suspect is gone only when there is a witness, every witness answered,
// and no server that answered has a route to it.
func TestJudgeGone(t *testing.T) {
	tests := []struct {
		name      string
		witnesses []string
		answers   map[string]map[string]bool
		gone      bool
	}{
		{"every witness answered without it", []string{"B", "C"}, map[string]map[string]bool{"A": set("B", "C"), "B": set("A", "C"), "C": set("A", "B")}, true},
		{"a witness still has a route to it", []string{"B", "C"}, map[string]map[string]bool{"B": set("A", "C", "X"), "C": set("A", "B")}, false},
		{"a witness did not answer", []string{"B", "C"}, map[string]map[string]bool{"B": set("A", "C")}, false},
		{"no witness", nil, map[string]map[string]bool{"A": set()}, false},
		{"it answered itself", []string{"B"}, map[string]map[string]bool{"B": set("A"), "X": set("B")}, false},
		{"a server that is no witness has a route to it", []string{"B"}, map[string]map[string]bool{"B": set("A"), "D": set("X")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := judgeGone("X", set(tt.witnesses...), tt.answers); got != tt.gone {
				t.Fatalf("judgeGone = %v, want %v", got, tt.gone)
			}
		})
	}
}

// A session that makes a request over a connection on another server
// than the live one it was bound to tells liveness (moved), so that the
// route check runs at once; the usual requests, and a client coming back
// from a cut connection, do not.
func TestSessionMoveTold(t *testing.T) {
	tab := newSessionTable(time.Second, func(string, string) {})
	timers := &fakeGraces{}
	tab.after = timers.after
	moves := 0
	tab.moved = func() { moves++ }
	onA := subjects.Owner{ServerID: "A", ClientID: 1}
	steps := []struct {
		name  string
		do    func()
		moves int
	}{
		{"a new session", func() { tab.bind("s", onA) }, 0},
		{"another request on its connection", func() { tab.bind("s", onA) }, 0},
		{"another connection on the same server", func() { tab.bind("s", subjects.Owner{ServerID: "A", ClientID: 2}) }, 0},
		{"a connection on another server", func() { tab.bind("s", subjects.Owner{ServerID: "B", ClientID: 1}) }, 1},
		{"back after its connection was cut", func() {
			tab.connClosed(subjects.Owner{ServerID: "B", ClientID: 1}, "Server Shutdown")
			tab.bind("s", subjects.Owner{ServerID: "C", ClientID: 1})
		}, 1},
	}
	for _, st := range steps {
		st.do()
		if moves != st.moves {
			t.Fatalf("%s: %d moves told, want %d", st.name, moves, st.moves)
		}
	}
}
