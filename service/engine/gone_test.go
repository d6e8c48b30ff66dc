package engine

import (
	"errors"
	"testing"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

const goneWindow = 5 * time.Second

func newGoneEngine(t *testing.T, max int) (*Engine, *FakeClock) {
	t.Helper()
	clock := NewFakeClock(time.Time{})
	e := New(WithClock(clock), WithGoneOwnerMemory(goneWindow, max))
	t.Cleanup(func() { checkInvariants(t, e) })
	return e, clock
}

// An unlock that finds nothing leaves nothing behind: a lock request with
// that key afterwards is served (the service reads one connection's
// requests in order, so an unlock can no longer overtake its lock). And
// without the option no owner is remembered.
func TestUnlockThatFoundNothingLeavesNothing(t *testing.T) {
	e, _ := newTestEngine(t)
	if _, err := e.Unlock("x", "k"); !errors.Is(err, ErrLockDoesNotExist) {
		t.Fatalf("unlock of nothing: %v", err)
	}
	e.ReleaseOwner(own("o"))
	g, ok, err := e.TryLock(Request{Name: "x", Key: "k", Owner: own("o")})
	if !ok || err != nil {
		t.Fatalf("%v, %v", ok, err)
	}
	mustUnlock(t, e, "x", g.Key)
}

// A request of an owner that was released moments ago was sent before the
// owner went away: it is refused, whether the release came from
// ReleaseOwner (even for an owner with nothing) or a sweep.
func TestGoneOwnerRequestsRefused(t *testing.T) {
	e, clock := newGoneEngine(t, 100)
	mustTryLock(t, e, Request{Name: "a", Owner: own("swept")})
	e.ReleaseOwner(own("closed")) // it had nothing here yet
	if got := e.ReleaseStaleOwners(e.OwnerMark(), closedUnless(func(o string) bool { return o != "swept" })); len(got) != 1 {
		t.Fatalf("sweep released %v", got)
	}
	for _, owner := range []string{"closed", "swept"} {
		if _, _, err := e.TryLock(Request{Name: "b", Owner: own(owner)}); !errors.Is(err, ErrOwnerGone) {
			t.Fatalf("trylock of gone owner %q: %v", owner, err)
		}
		if _, _, err := e.Lock(Request{Name: "b", Owner: own(owner)}, 0, func(Grant, error) {}); !errors.Is(err, ErrOwnerGone) {
			t.Fatalf("lock of gone owner %q: %v", owner, err)
		}
	}
	g := mustTryLock(t, e, Request{Name: "b", Owner: own("alive")})
	mustUnlock(t, e, "b", g.Key)

	if _, _, err := e.TryLock(Request{Name: "b", Owner: own("swept")}); !errors.Is(err, ErrOwnerGone) {
		t.Fatalf("swept owner must still be refused: %v", err)
	}
	clock.Advance(goneWindow)
	g = mustTryLock(t, e, Request{Name: "b", Owner: own("swept")})
	mustUnlock(t, e, "b", g.Key)
}

// The memory's bookkeeping stays within its bound however keys come and go.
func TestRecentStaysBounded(t *testing.T) {
	r := recent[int]{window: time.Hour, max: 10}
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 1000 {
		r.add(i%7, now) // keys added again
		if n := len(r.order) - r.head; n > r.max || r.len() > r.max {
			t.Fatalf("after %d adds: %d items, %d keys; max %d", i+1, n, r.len(), r.max)
		}
		if cap(r.order) > 4*r.max+128 {
			t.Fatalf("order slice grew to %d", cap(r.order))
		}
		now = now.Add(time.Second)
	}
	now = now.Add(time.Hour)
	r.prune(now)
	if r.len() != 0 || len(r.order) != r.head {
		t.Fatalf("expired keys kept: %d keys, %d items", r.len(), len(r.order)-r.head)
	}
}

// A sweep releases an owner it knows nothing about (a claim for a client id
// not handed out yet) but does not remember it: the connection that gets
// that id later must be served.
func TestUnknownOwnerReleasedButNotRemembered(t *testing.T) {
	e, _ := newGoneEngine(t, 100)
	mustTryLock(t, e, Request{Name: "a", Owner: own("srv:9")})
	got := e.ReleaseStaleOwners(e.OwnerMark(), func(subjects.Owner) OwnerState { return OwnerUnknown })
	if len(got) != 1 || got[0] != own("srv:9") {
		t.Fatalf("sweep released %v, want [srv:9]", got)
	}
	g, ok, err := e.TryLock(Request{Name: "a", Owner: own("srv:9")})
	if !ok || err != nil {
		t.Fatalf("trylock of the genuine srv:9 after the sweep: %v, %v; want granted", ok, err)
	}
	mustUnlock(t, e, "a", g.Key)
}

// len is the number of keys held, expired or not.
func (r *recent[K]) len() int { return len(r.until) }
