package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStress runs random operations from many goroutines on a few locks and
// checks, with counters kept by the clients, that no lock ever has more
// believed holders than slots. A client counts a grant when it learns of it
// and uncounts it before giving it up, so its count never exceeds the
// engine's. Grants never expire here (their timeouts are far beyond the
// fake time that passes), so that every release is one the client knows
// about; waits do time out.
func TestStress(t *testing.T) {
	e, clock := newTestEngine(t)
	locks := []struct {
		name string
		size int
	}{{"one-a", 1}, {"one-b", 1}, {"three-a", 3}, {"three-b", 3}}
	counts := make([]atomic.Int32, len(locks))
	// How waits ended, logged to show which paths the run exercised.
	var parked, granted, timedOut, cancelled, raced atomic.Int32
	const (
		workers     = 8
		ops         = 2500
		longTimeout = 1000 * time.Hour
	)

	stop := make(chan struct{})
	var background sync.WaitGroup
	background.Add(2)
	go func() { // time passes, so waits time out
		defer background.Done()
		for {
			select {
			case <-stop:
				return
			default:
				clock.Advance(time.Millisecond)
				runtime.Gosched()
			}
		}
	}()
	go func() { // the engine's own view stays consistent
		defer background.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, l := range e.Snapshot() {
				if len(l.Holders) > l.Size {
					t.Errorf("lock %s: %d holders, size %d", l.Name, len(l.Holders), l.Size)
				}
			}
			checkInvariants(t, e)
			runtime.Gosched()
		}
	}()

	type held struct {
		lock  int
		key   string
		token uint64
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			owner := own(fmt.Sprint("owner-", w))
			var mine []held
			seq := 0
			freshKey := func() string { seq++; return fmt.Sprintf("w%d-%d", w, seq) }
			gained := func(i int, g Grant) {
				if n := counts[i].Add(1); int(n) > locks[i].size {
					t.Errorf("lock %s: %d clients hold it, size %d", locks[i].name, n, locks[i].size)
				}
				mine = append(mine, held{i, g.Key, g.Token})
			}
			drop := func(j int) held {
				h := mine[j]
				counts[h.lock].Add(-1)
				mine[j] = mine[len(mine)-1]
				mine = mine[:len(mine)-1]
				return h
			}
			lockTimeout := func() time.Duration {
				if rng.IntN(2) == 0 {
					return 0
				}
				return longTimeout
			}

			for range ops {
				i := rng.IntN(len(locks))
				r := Request{Name: locks[i].name, Size: locks[i].size, Owner: owner, LockTimeout: lockTimeout()}
				switch op := rng.IntN(100); {
				case op < 30: // trylock, with a generated or a chosen key
					if rng.IntN(2) == 0 {
						r.Key = freshKey()
					}
					g, ok, err := e.TryLock(r)
					if err != nil {
						t.Errorf("TryLock: %v", err)
					} else if ok {
						gained(i, g)
					}

				case op < 55: // lock, then give up after a while
					r.Key = freshKey()
					type result struct {
						g   Grant
						err error
					}
					ch := make(chan result, 2) // room to notice a second call
					wait := time.Duration(rng.IntN(2)) * 2 * time.Millisecond
					g, ok, err := e.Lock(r, wait, func(g Grant, err error) { ch <- result{g, err} })
					if err != nil {
						t.Errorf("Lock: %v", err)
						continue
					}
					if ok {
						gained(i, g)
						continue
					}
					parked.Add(1)
					resolved := false
					for range rng.IntN(50) {
						select {
						case res := <-ch:
							resolved = true
							if res.err == nil {
								granted.Add(1)
								gained(i, res.g)
							} else {
								timedOut.Add(1)
								if res.err != ErrWaitTimeout {
									t.Errorf("wait ended with %v", res.err)
								}
							}
						default:
							runtime.Gosched()
							continue
						}
						break
					}
					if resolved {
						continue
					}
					// Give up: the unlock with our key cleans up whatever
					// state the request is in.
					wasWaiting, err := e.Unlock(r.Name, r.Key)
					var res result
					select {
					case res = <-ch:
					case <-time.After(time.Minute):
						t.Errorf("no done call after giving up (unlock: cancelled %v, %v)", wasWaiting, err)
						return
					}
					switch {
					case err == nil && wasWaiting:
						cancelled.Add(1)
						if res.err != ErrWaitCancelled {
							t.Errorf("cancelled wait ended with %v", res.err)
						}
					case err == nil:
						raced.Add(1)
						if res.err != nil || res.g.Key != r.Key {
							t.Errorf("released a grant, but done got %+v, %v", res.g, res.err)
						}
					case errors.Is(err, ErrInvalidLockKey) || errors.Is(err, ErrLockDoesNotExist):
						timedOut.Add(1)
						if res.err != ErrWaitTimeout {
							t.Errorf("unlock found nothing (%v), but done got %+v, %v", err, res.g, res.err)
						}
					default:
						t.Errorf("giving up: Unlock = cancelled %v, %v", wasWaiting, err)
					}

				case op < 75: // unlock one of mine
					if len(mine) == 0 {
						continue
					}
					h := drop(rng.IntN(len(mine)))
					if wasWaiting, err := e.Unlock(locks[h.lock].name, h.key); wasWaiting || err != nil {
						t.Errorf("Unlock of a held grant = cancelled %v, %v", wasWaiting, err)
					}

				case op < 90: // renew one of mine
					if len(mine) == 0 {
						continue
					}
					h := mine[rng.IntN(len(mine))]
					g, err := e.Renew(locks[h.lock].name, h.key, longTimeout)
					if err != nil || g.Token != h.token {
						t.Errorf("Renew of a held grant = %+v, %v", g, err)
					}

				case op < 95: // my connection closes
					n := len(mine)
					for len(mine) > 0 {
						drop(0)
					}
					if grants, waits := e.ReleaseOwner(owner); grants != n || waits != 0 {
						t.Errorf("ReleaseOwner = %d grants, %d waits; want %d, 0", grants, waits, n)
					}

				default: // a stranger's unlock
					_, err := e.Unlock(r.Name, "stranger")
					if !errors.Is(err, ErrInvalidLockKey) && !errors.Is(err, ErrLockDoesNotExist) {
						t.Errorf("Unlock with a bad key: %v", err)
					}
				}
			}
			for len(mine) > 0 {
				h := drop(0)
				if _, err := e.Unlock(locks[h.lock].name, h.key); err != nil {
					t.Errorf("final Unlock: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	background.Wait()
	t.Logf("%d waits: %d granted, %d timed out, %d cancelled, %d granted then released by the cancel",
		parked.Load(), granted.Load(), timedOut.Load(), cancelled.Load(), raced.Load())
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("after every client released everything: %+v", s)
	}
}
