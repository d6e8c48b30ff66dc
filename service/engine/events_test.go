package engine

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// eventLog collects the events of an engine.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (l *eventLog) add(ev Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
}

// kinds returns the kinds seen so far and forgets them.
func (l *eventLog) kinds() []EventKind {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ks []EventKind
	for _, ev := range l.events {
		ks = append(ks, ev.Kind)
	}
	l.events = nil
	return ks
}

func TestEvents(t *testing.T) {
	clock := NewFakeClock(time.Time{})
	var log eventLog
	e := New(WithClock(clock), WithEvents(log.add))
	t.Cleanup(func() { checkInvariants(t, e) })

	expect := func(step string, want ...EventKind) {
		t.Helper()
		if got := log.kinds(); !slices.Equal(got, want) {
			t.Fatalf("%s: events %v, want %v", step, got, want)
		}
	}

	a := mustTryLock(t, e, Request{Name: "x", Owner: own("o1")})
	expect("trylock", EventGranted)
	w := mustPark(t, e, Request{Name: "x", Key: "w", Owner: own("o2")}, 0)
	expect("parking is no event")
	clock.Advance(3 * time.Second)
	if _, err := e.Unlock("x", a.Key); err != nil {
		t.Fatal(err)
	}
	expect("unlock hands over", EventReleased, EventGranted)
	if _, g, _ := w.get(); g.Token == 0 {
		t.Fatal("the waiter was not granted")
	}

	mustPark(t, e, Request{Name: "x", Key: "t"}, time.Second)
	clock.Advance(time.Second)
	expect("wait timeout", EventWaitTimedOut)
	mustPark(t, e, Request{Name: "x", Key: "c"}, 0)
	if _, err := e.Unlock("x", "c"); err != nil {
		t.Fatal(err)
	}
	expect("cancel", EventWaitCancelled)
	mustPark(t, e, Request{Name: "x", Key: "gone", Owner: own("o3")}, 0)
	e.ReleaseOwner(own("o3"))
	expect("waiter's owner gone", EventWaitOwnerGone)
	e.ReleaseOwner(own("o2"))
	expect("holder's owner gone", EventOwnerGone)

	mustTryLock(t, e, Request{Name: "y", LockTimeout: time.Second})
	clock.Advance(time.Second)
	expect("lock timeout", EventGranted, EventExpired)

	mustTryLock(t, e, Request{Name: "z"})
	mustPark(t, e, Request{Name: "z", Key: "closing"}, 0)
	log.kinds()
	e.Close()
	expect("close", EventWaitClosed)

	if !EventExpired.Lost() || !EventOwnerGone.Lost() || !EventForced.Lost() || EventReleased.Lost() {
		t.Fatal("Lost() is wrong")
	}
	if EventOwnerGone.String() != "released-on-disconnect" || EventKind(99).String() != "unknown" {
		t.Fatal("String() is wrong")
	}
}

func TestEventDurations(t *testing.T) {
	clock := NewFakeClock(time.Time{})
	var log eventLog
	e := New(WithClock(clock), WithEvents(log.add))
	a := mustTryLock(t, e, Request{Name: "x"})
	mustPark(t, e, Request{Name: "x", Key: "w"}, 0)
	clock.Advance(5 * time.Second)
	if _, err := e.Unlock("x", a.Key); err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	held, waited := log.events[1], log.events[2]
	if held.Kind != EventReleased || held.Duration != 5*time.Second || waited.Kind != EventGranted || waited.Duration != 5*time.Second {
		t.Fatalf("events %+v", log.events)
	}
}

func TestForceUnlock(t *testing.T) {
	tests := []struct {
		name      string
		key       string
		token     func(gs []Grant) uint64
		wantCount int
		wantErr   error
	}{
		{name: "all holders", wantCount: 3},
		{name: "by key", key: "k1", wantCount: 1},
		{name: "by token", token: func(gs []Grant) uint64 { return gs[2].Token }, wantCount: 1},
		{name: "no such key", key: "nope", wantErr: ErrInvalidLockKey},
		{name: "no such token", token: func([]Grant) uint64 { return 1 << 60 }, wantErr: ErrInvalidLockKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := newTestEngine(t)
			var gs []Grant
			for _, k := range []string{"k0", "k1", "k2"} {
				gs = append(gs, mustTryLock(t, e, Request{Name: "s", Size: 3, Key: k, Owner: own("o")}))
			}
			waiter := mustPark(t, e, Request{Name: "s", Size: 3, Key: "w"}, 0)
			var token uint64
			if tt.token != nil {
				token = tt.token(gs)
			}
			released, err := e.ForceUnlock("s", tt.key, token)
			if !errors.Is(err, tt.wantErr) || len(released) != tt.wantCount {
				t.Fatalf("ForceUnlock = %v, %v; want %d released, error %v", released, err, tt.wantCount, tt.wantErr)
			}
			if calls, g, _ := waiter.get(); (tt.wantCount > 0) != (calls == 1 && g.Token != 0) {
				t.Fatalf("the waiter must be granted exactly when a slot was freed; calls %d", calls)
			}
			e.ReleaseOwner(own("o"))
			if _, err := e.Unlock("s", "w"); tt.wantCount > 0 && err != nil {
				t.Fatal(err)
			}
		})
	}
	e, _ := newTestEngine(t)
	if _, err := e.ForceUnlock("missing", "", 0); !errors.Is(err, ErrLockDoesNotExist) {
		t.Fatalf("ForceUnlock of a missing lock: %v", err)
	}
}

func TestFirstToken(t *testing.T) {
	e := New(WithFirstToken(1_000_000))
	g := mustTryLock(t, e, Request{Name: "x"})
	if g.Token != 1_000_000 {
		t.Fatalf("first token %d", g.Token)
	}
}
