package engine

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

const lateWindow = 5 * time.Second

func newLateEngine(t *testing.T, max int) (*Engine, *FakeClock) {
	t.Helper()
	clock := NewFakeClock(time.Time{})
	e := New(WithClock(clock), WithLateRequestMemory(lateWindow, max))
	t.Cleanup(func() { checkInvariants(t, e) })
	return e, clock
}

// An unlock that overtook its lock request cancels that request when it
// arrives, whether the lock was free, held or unknown, for lock and
// trylock alike, and only once.
func TestUnlockBeforeLock(t *testing.T) {
	tests := []struct {
		name      string
		holder    bool  // another key holds the lock when the unlock comes
		unlockErr error // what the early unlock answers
		park      bool  // Lock (parks if held) instead of TryLock
	}{
		{"free lock, lock", false, ErrLockDoesNotExist, true},
		{"free lock, trylock", false, ErrLockDoesNotExist, false},
		{"held lock, lock", true, ErrInvalidLockKey, true},
		{"held lock, trylock", true, ErrInvalidLockKey, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := newLateEngine(t, 100)
			if tt.holder {
				mustTryLock(t, e, Request{Name: "x", Key: "holder"})
			}
			if _, err := e.Unlock("x", "late"); !errors.Is(err, tt.unlockErr) {
				t.Fatalf("early unlock: %v, want %v", err, tt.unlockErr)
			}
			acquire := func() (bool, error) {
				if tt.park {
					o := new(outcome)
					_, ok, err := e.Lock(Request{Name: "x", Key: "late"}, 0, o.done)
					if calls, _, _ := o.get(); err != nil && calls != 0 {
						t.Fatalf("a refused Lock called done")
					}
					if err == nil && !ok { // parked behind the holder
						if res, err := e.Unlock("x", "late"); res != Cancelled || err != nil {
							t.Fatalf("cancel: %v, %v", res, err)
						}
					}
					return ok, err
				}
				_, ok, err := e.TryLock(Request{Name: "x", Key: "late"})
				return ok, err
			}
			if ok, err := acquire(); ok || !errors.Is(err, ErrWaitCancelled) {
				t.Fatalf("lock after its unlock: ok %v, err %v; want ErrWaitCancelled", ok, err)
			}
			if s := e.Stats(); s.Waiters != 0 || s.Holders != btoi(tt.holder) {
				t.Fatalf("the refused request left state: %+v", s)
			}
			// The memory is used up: the key is refused once only.
			if _, err := acquire(); err != nil {
				t.Fatalf("second lock with the key: %v", err)
			}
			if tt.holder {
				mustUnlock(t, e, "x", "holder")
			}
			if _, err := e.Unlock("x", "late"); err != nil && !errors.Is(err, ErrLockDoesNotExist) {
				t.Fatal(err)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestUnlockMemoryExpiresAndIsBounded(t *testing.T) {
	e, clock := newLateEngine(t, 3)
	e.Unlock("x", "old")
	clock.Advance(lateWindow)
	if _, ok, err := e.TryLock(Request{Name: "x", Key: "old"}); !ok || err != nil {
		t.Fatalf("a key unlocked a window ago must lock: %v, %v", ok, err)
	}
	mustUnlock(t, e, "x", "old")

	for i := range 4 {
		e.Unlock("y", fmt.Sprint("k", i))
	}
	if got := e.cancelled.len(); got != 3 {
		t.Fatalf("remembered %d unlocks, the limit is 3", got)
	}
	if _, ok, err := e.TryLock(Request{Name: "y", Key: "k0"}); !ok || err != nil {
		t.Fatalf("the oldest memory must go first: %v, %v", ok, err)
	}
	for i := 1; i < 4; i++ {
		if _, _, err := e.TryLock(Request{Name: "y", Key: fmt.Sprint("k", i)}); !errors.Is(err, ErrWaitCancelled) {
			t.Fatalf("k%d: %v", i, err)
		}
	}
	mustUnlock(t, e, "y", "k0")
	// A key that other locks or keys share is not confused with it.
	e.Unlock("z", "k")
	for _, r := range []Request{{Name: "z2", Key: "k"}, {Name: "z", Key: "k2"}, {Name: "z"}} {
		g, ok, err := e.TryLock(r)
		if !ok || err != nil {
			t.Fatalf("%+v: %v, %v", r, ok, err)
		}
		mustUnlock(t, e, g.Name, g.Key)
	}
}

// Without the option nothing is remembered: the engine's behaviour is the
// plain one.
func TestNoLateRequestMemory(t *testing.T) {
	e, _ := newTestEngine(t)
	e.Unlock("x", "k")
	e.ReleaseOwner("o")
	g, ok, err := e.TryLock(Request{Name: "x", Key: "k", Owner: "o"})
	if !ok || err != nil {
		t.Fatalf("%v, %v", ok, err)
	}
	mustUnlock(t, e, "x", g.Key)
}

// A request of an owner that was released moments ago was sent before the
// owner went away: it is refused, whether the release came from
// ReleaseOwner (even for an owner with nothing) or a sweep.
func TestGoneOwnerRequestsRefused(t *testing.T) {
	e, clock := newLateEngine(t, 100)
	mustTryLock(t, e, Request{Name: "a", Owner: "swept"})
	e.ReleaseOwner("closed") // it had nothing here yet
	if got := e.ReleaseStaleOwners(e.OwnerMark(), closedUnless(func(o string) bool { return o != "swept" })); len(got) != 1 {
		t.Fatalf("sweep released %v", got)
	}
	for _, owner := range []string{"closed", "swept"} {
		if _, _, err := e.TryLock(Request{Name: "b", Owner: owner}); !errors.Is(err, ErrOwnerGone) {
			t.Fatalf("trylock of gone owner %q: %v", owner, err)
		}
		if _, _, err := e.Lock(Request{Name: "b", Owner: owner}, 0, func(Grant, error) {}); !errors.Is(err, ErrOwnerGone) {
			t.Fatalf("lock of gone owner %q: %v", owner, err)
		}
	}
	g := mustTryLock(t, e, Request{Name: "b", Owner: "alive"})
	mustUnlock(t, e, "b", g.Key)

	// Owner names come back when a NATS server restarts.
	if n := e.ForgetGoneOwners(func(o string) bool { return strings.HasPrefix(o, "cl") }); n != 1 {
		t.Fatalf("forgot %d owners, want 1", n)
	}
	g = mustTryLock(t, e, Request{Name: "b", Owner: "closed"})
	mustUnlock(t, e, "b", g.Key)
	if _, _, err := e.TryLock(Request{Name: "b", Owner: "swept"}); !errors.Is(err, ErrOwnerGone) {
		t.Fatalf("swept owner must still be refused: %v", err)
	}
	clock.Advance(lateWindow)
	g = mustTryLock(t, e, Request{Name: "b", Owner: "swept"})
	mustUnlock(t, e, "b", g.Key)
}

// The memory's bookkeeping stays within its bound however keys come and go.
func TestRecentStaysBounded(t *testing.T) {
	r := recent[int]{window: time.Hour, max: 10}
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 1000 {
		r.add(i%7, now) // keys added again
		r.take(i%5, now)
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
	e, _ := newLateEngine(t, 100)
	mustTryLock(t, e, Request{Name: "a", Owner: "srv:9"})
	got := e.ReleaseStaleOwners(e.OwnerMark(), func(string) OwnerState { return OwnerUnknown })
	if len(got) != 1 || got[0] != "srv:9" {
		t.Fatalf("sweep released %v, want [srv:9]", got)
	}
	g, ok, err := e.TryLock(Request{Name: "a", Owner: "srv:9"})
	if !ok || err != nil {
		t.Fatalf("trylock of the genuine srv:9 after the sweep: %v, %v; want granted", ok, err)
	}
	mustUnlock(t, e, "a", g.Key)
}
