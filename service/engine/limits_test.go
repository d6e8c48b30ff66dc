package engine

import (
	"errors"
	"testing"
)

func TestLimits(t *testing.T) {
	e, _ := newTestEngine(t)
	WithLimits(Limits{MaxLocks: 2, MaxWaitersPerLock: 2, MaxWaitsPerOwner: 3})(e)

	a := mustTryLock(t, e, Request{Name: "a"})
	mustTryLock(t, e, Request{Name: "b"})
	if _, _, err := e.TryLock(Request{Name: "c"}); !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("a third lock: %v, want ErrLimitExceeded", err)
	}

	mustPark(t, e, Request{Name: "a", Key: "w1", Owner: own("o")}, 0)
	mustPark(t, e, Request{Name: "a", Key: "w2", Owner: own("o")}, 0)
	if _, _, err := e.Lock(Request{Name: "a", Key: "w3"}, 0, func(Grant, error) {}); !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("a third waiter on a: %v, want ErrLimitExceeded", err)
	}
	mustPark(t, e, Request{Name: "b", Key: "w4", Owner: own("o")}, 0)
	if _, _, err := e.Lock(Request{Name: "b", Key: "w5", Owner: own("o")}, 0, func(Grant, error) {}); !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("a fourth wait of owner o: %v, want ErrLimitExceeded", err)
	}
	// Another owner may still wait on b.
	mustPark(t, e, Request{Name: "b", Key: "w6", Owner: own("p")}, 0)

	// When o's first waiter is granted, o may wait once more.
	if _, err := e.Unlock("a", a.Key); err != nil {
		t.Fatal(err)
	}
	mustPark(t, e, Request{Name: "a", Key: "w7", Owner: own("o")}, 0)
	e.ReleaseOwner(own("o"))
	e.ReleaseOwner(own("p"))
	for _, l := range e.Snapshot() {
		for _, h := range l.Holders {
			if _, err := e.Unlock(l.Name, h.Key); err != nil {
				t.Fatal(err)
			}
		}
	}
}
