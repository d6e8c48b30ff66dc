package engine

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// A lock that once had more than indexMin entries keeps its key index; a
// slot granted at once afterwards must be in it, or its key cannot unlock.
func TestIndexHasImmediateGrants(t *testing.T) {
	e, _ := newTestEngine(t)
	r := func(key string) Request { return Request{Name: "sem", Key: key, Size: 2} }
	h1 := mustTryLock(t, e, r("h1"))
	mustTryLock(t, e, r("h2"))
	var waits []*outcome
	for i := range indexMin + 1 {
		waits = append(waits, mustPark(t, e, r(fmt.Sprint("w", i)), 0))
	}
	for i, o := range waits {
		if cancelled, err := e.Unlock("sem", fmt.Sprint("w", i)); !cancelled || err != nil {
			t.Fatalf("cancel w%d: cancelled %v, %v", i, cancelled, err)
		}
		wantDone(t, o, ErrWaitCancelled)
	}
	mustUnlock(t, e, "sem", h1.Key)

	g := mustTryLock(t, e, r("new"))
	checkInvariants(t, e)
	if _, err := e.Renew("sem", g.Key, time.Minute); err != nil {
		t.Fatalf("renew by the key of a grant made after the index was built: %v", err)
	}
	mustUnlock(t, e, "sem", g.Key)
	mustUnlock(t, e, "sem", "h2")
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("left behind: %+v", s)
	}
}

// TestBigSemaphoreKeysProperty runs random operations on big semaphores and
// checks after each one that the engine agrees with a model of who holds
// and who waits, and that every holder's key renews and every waiter's key
// cancels.
func TestBigSemaphoreKeysProperty(t *testing.T) {
	for _, size := range []int{1, 2, indexMin, indexMin + 1, 40} {
		for seed := range uint64(5) {
			t.Run(fmt.Sprintf("size%d/seed%d", size, seed), func(t *testing.T) {
				runKeysProperty(t, size, rand.New(rand.NewPCG(seed, uint64(size))))
			})
		}
	}
}

func runKeysProperty(t *testing.T, size int, rng *rand.Rand) {
	e, _ := newTestEngine(t)
	const name = "big"
	held := map[string]subjects.Owner{}    // key → owner of the slots the model says are held
	waiting := map[string]subjects.Owner{} // key → owner of the waits
	outcomes := map[string]*outcome{}
	next := 0
	newKey := func() string { next++; return fmt.Sprint("k", next) }
	owner := func() subjects.Owner { return own(fmt.Sprint("o", rng.IntN(4))) }
	pick := func(m map[string]subjects.Owner) string {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys) // map order is random; the seed must decide
		return keys[rng.IntN(len(keys))]
	}
	// collect moves the waiters whose done callback granted them.
	collect := func() {
		for k, o := range outcomes {
			calls, _, err := o.get()
			if calls == 0 {
				continue
			}
			if err == nil {
				held[k] = waiting[k]
			}
			delete(outcomes, k)
			delete(waiting, k)
		}
	}

	// Phases that fill the lock past its size, with a queue, alternate
	// with phases that drain it, so that both full and part-free locks, with
	// and without an index, are exercised.
	fill := []int{5, 7, 8, 9, 10} // cumulative weights of the ops below, out of 10
	drain := []int{1, 2, 6, 7, 9}
	for step := range 4000 {
		w := fill
		if (step/200)%2 == 1 {
			w = drain
		}
		switch op := rng.IntN(10); {
		case op < w[0]: // trylock
			key, o := newKey(), owner()
			_, ok, err := e.TryLock(Request{Name: name, Key: key, Size: size, Owner: o})
			if err != nil {
				t.Fatalf("step %d: trylock: %v", step, err)
			}
			if ok != (len(held) < size) {
				t.Fatalf("step %d: trylock ok=%v with %d of %d held", step, ok, len(held), size)
			}
			if ok {
				held[key] = o
			}
		case op < w[1]: // lock, parked when full
			key, o, out := newKey(), owner(), new(outcome)
			_, ok, err := e.Lock(Request{Name: name, Key: key, Size: size, Owner: o}, 0, out.done)
			if err != nil {
				t.Fatalf("step %d: lock: %v", step, err)
			}
			if ok {
				held[key] = o
			} else {
				waiting[key] = o
				outcomes[key] = out
			}
		case op < w[2] && len(held) > 0: // unlock a holder
			key := pick(held)
			if cancelled, err := e.Unlock(name, key); cancelled || err != nil {
				t.Fatalf("step %d: unlock of holder %s: cancelled %v, %v", step, key, cancelled, err)
			}
			delete(held, key)
		case op < w[3] && len(held) > 0: // renew a holder
			key := pick(held)
			if _, err := e.Renew(name, key, time.Hour); err != nil {
				t.Fatalf("step %d: renew of holder %s: %v", step, key, err)
			}
		case op < w[4] && len(waiting) > 0: // cancel a waiter
			key := pick(waiting)
			if cancelled, err := e.Unlock(name, key); !cancelled || err != nil {
				t.Fatalf("step %d: cancel of waiter %s: cancelled %v, %v", step, key, cancelled, err)
			}
		case op >= w[4] && rng.IntN(4) == 0: // an owner goes away; its waits end in collect
			o := owner()
			e.ReleaseOwner(o)
			for k, ko := range held {
				if ko == o {
					delete(held, k)
				}
			}
		}
		collect()
		if step%100 == 0 {
			checkInvariants(t, e)
		}
	}

	checkInvariants(t, e)
	for k := range held {
		if _, err := e.Renew(name, k, time.Hour); err != nil {
			t.Fatalf("renew of holder %s: %v", k, err)
		}
	}
	for k := range waiting {
		if cancelled, err := e.Unlock(name, k); !cancelled || err != nil {
			t.Fatalf("cancel of waiter %s: cancelled %v, %v", k, cancelled, err)
		}
	}
	for k := range held {
		if cancelled, err := e.Unlock(name, k); cancelled || err != nil {
			t.Fatalf("unlock of holder %s: cancelled %v, %v", k, cancelled, err)
		}
	}
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("left behind: %+v", s)
	}
}
