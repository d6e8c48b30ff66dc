package engine

import (
	"errors"
	"fmt"
	"regexp"
	"testing"
	"time"
)

func TestRequestValidation(t *testing.T) {
	e, _ := newTestEngine(t)
	nop := func(Grant, error) {}
	tests := []struct {
		name    string
		call    func() error
		wantErr error
	}{
		{"trylock empty name", func() error { _, _, err := e.TryLock(Request{}); return err }, ErrInvalidLockName},
		{"lock empty name", func() error { _, _, err := e.Lock(Request{}, 0, nop); return err }, ErrInvalidLockName},
		{"trylock negative size", func() error { _, _, err := e.TryLock(Request{Name: "a", Size: -1}); return err }, ErrInvalidLockSize},
		{"lock negative size", func() error { _, _, err := e.Lock(Request{Name: "a", Size: -3}, 0, nop); return err }, ErrInvalidLockSize},
		{"trylock negative lock timeout", func() error {
			_, _, err := e.TryLock(Request{Name: "a", LockTimeout: -time.Second})
			return err
		}, ErrInvalidTimeout},
		{"lock negative lock timeout", func() error {
			_, _, err := e.Lock(Request{Name: "a", LockTimeout: -1}, 0, nop)
			return err
		}, ErrInvalidTimeout},
		{"lock negative wait timeout", func() error { _, _, err := e.Lock(Request{Name: "a"}, -1, nop); return err }, ErrInvalidTimeout},
		{"unlock empty name", func() error { _, err := e.Unlock("", "k"); return err }, ErrInvalidLockName},
		{"unlock unknown lock", func() error { _, err := e.Unlock("nope", "k"); return err }, ErrLockDoesNotExist},
		{"renew empty name", func() error { _, err := e.Renew("", "k", time.Second); return err }, ErrInvalidLockName},
		{"renew zero timeout", func() error { _, err := e.Renew("a", "k", 0); return err }, ErrInvalidTimeout},
		{"renew negative timeout", func() error { _, err := e.Renew("a", "k", -time.Second); return err }, ErrInvalidTimeout},
		{"renew unknown lock", func() error { _, err := e.Renew("nope", "k", time.Second); return err }, ErrLockDoesNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("failed requests left state behind: %+v", s)
	}
}

func TestSizeDefaultAndMismatch(t *testing.T) {
	e, _ := newTestEngine(t)
	g := mustTryLock(t, e, Request{Name: "a", Key: "k1"})
	if g.Size != 1 || g.Name != "a" || g.Key != "k1" || !g.ExpiresAt.IsZero() {
		t.Fatalf("grant = %+v; want size 1, name a, key k1, no expiry", g)
	}
	if _, ok, err := e.TryLock(Request{Name: "a", Size: 1}); ok || err != nil {
		t.Fatalf("second TryLock with the explicit default size = %v, %v; want not ok, no error", ok, err)
	}
	for _, size := range []int{2, 3} {
		_, _, err := e.TryLock(Request{Name: "a", Size: size})
		if !errors.Is(err, ErrLockSizeMismatch) {
			t.Fatalf("TryLock size %d on a held size-1 lock: err = %v", size, err)
		}
		_, _, err = e.Lock(Request{Name: "a", Size: size}, 0, func(Grant, error) {})
		if !errors.Is(err, ErrLockSizeMismatch) {
			t.Fatalf("Lock size %d on a held size-1 lock: err = %v", size, err)
		}
	}
	// Still a mismatch while only the waiter keeps the size... the lock has
	// a holder and a waiter; release the holder, the waiter holds it.
	w := mustPark(t, e, Request{Name: "a", Key: "w"}, 0)
	if _, err := e.Unlock("a", "k1"); err != nil {
		t.Fatal(err)
	}
	wantDone(t, w, nil)
	if _, _, err := e.TryLock(Request{Name: "a", Size: 5}); !errors.Is(err, ErrLockSizeMismatch) {
		t.Fatalf("size 5 while the waiter holds: err = %v", err)
	}
	if _, err := e.Unlock("a", "w"); err != nil {
		t.Fatal(err)
	}
	// Forgotten: any size is fine now.
	g = mustTryLock(t, e, Request{Name: "a", Size: 5})
	if g.Size != 5 {
		t.Fatalf("recreated lock has size %d, want 5", g.Size)
	}
}

func TestGeneratedKeys(t *testing.T) {
	e, _ := newTestEngine(t)
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
	seen := map[string]bool{}
	for i := range 1000 {
		g := mustTryLock(t, e, Request{Name: "sem", Size: 1000})
		if !hex32.MatchString(g.Key) {
			t.Fatalf("generated key %q is not 32 lowercase hex characters", g.Key)
		}
		if seen[g.Key] {
			t.Fatalf("key %q generated twice (after %d keys)", g.Key, i)
		}
		seen[g.Key] = true
	}
	if other := New(); other.newKey() == New().newKey() {
		t.Fatal("two engines generated the same first key: the generator is not seeded randomly")
	}
}

func TestKeyInUse(t *testing.T) {
	e, _ := newTestEngine(t)
	mustTryLock(t, e, Request{Name: "a", Key: "h", Size: 2})
	mustTryLock(t, e, Request{Name: "a", Key: "h2", Size: 2})
	mustPark(t, e, Request{Name: "a", Key: "w", Size: 2}, 0)
	nop := func(Grant, error) {}
	for _, key := range []string{"h", "h2", "w"} {
		if _, _, err := e.TryLock(Request{Name: "a", Key: key, Size: 2}); !errors.Is(err, ErrKeyInUse) {
			t.Errorf("TryLock with key %q in use: err = %v", key, err)
		}
		if _, _, err := e.Lock(Request{Name: "a", Key: key, Size: 2}, 0, nop); !errors.Is(err, ErrKeyInUse) {
			t.Errorf("Lock with key %q in use: err = %v", key, err)
		}
	}
	// The same key on another lock is fine.
	mustTryLock(t, e, Request{Name: "b", Key: "h"})
	// A released key may be used again.
	if cancelled, err := e.Unlock("a", "h"); cancelled || err != nil {
		t.Fatalf("Unlock = cancelled %v, %v", cancelled, err)
	}
	if _, err := e.Unlock("a", "w"); err != nil { // it was granted the slot
		t.Fatal(err)
	}
	mustTryLock(t, e, Request{Name: "a", Key: "h", Size: 2})
}

func TestUnlockAndRenewErrors(t *testing.T) {
	e, _ := newTestEngine(t)
	mustTryLock(t, e, Request{Name: "a", Key: "holder"})
	mustPark(t, e, Request{Name: "a", Key: "waiter"}, 0)
	tests := []struct {
		name    string
		call    func() error
		wantErr error
	}{
		{"unlock wrong key", func() error { _, err := e.Unlock("a", "other"); return err }, ErrInvalidLockKey},
		{"unlock empty key", func() error { _, err := e.Unlock("a", ""); return err }, ErrInvalidLockKey},
		{"unlock no such lock", func() error { _, err := e.Unlock("b", "holder"); return err }, ErrLockDoesNotExist},
		{"renew wrong key", func() error { _, err := e.Renew("a", "other", time.Second); return err }, ErrInvalidLockKey},
		{"renew waiter key", func() error { _, err := e.Renew("a", "waiter", time.Second); return err }, ErrNotLocked},
		{"renew no such lock", func() error { _, err := e.Renew("b", "holder", time.Second); return err }, ErrLockDoesNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestTokensIncrease(t *testing.T) {
	e, clock := newTestEngine(t)
	var last uint64
	next := func(g Grant) {
		t.Helper()
		if g.Token <= last {
			t.Fatalf("token %d after %d", g.Token, last)
		}
		last = g.Token
	}
	for i := range 5 {
		// The same name, forgotten between rounds.
		g := mustTryLock(t, e, Request{Name: "a", Key: "k"})
		next(g)
		w := mustPark(t, e, Request{Name: "a", Key: "w"}, 0)
		if _, err := e.Unlock("a", "k"); err != nil {
			t.Fatal(err)
		}
		next(wantDone(t, w, nil))
		if _, err := e.Unlock("a", "w"); err != nil {
			t.Fatal(err)
		}
		if s := e.Stats(); s.Locks != 0 {
			t.Fatalf("round %d: lock not forgotten: %+v", i, s)
		}
		// Other names, and an expiry, share the counter.
		next(mustTryLock(t, e, Request{Name: fmt.Sprint("other", i), LockTimeout: time.Second}))
		clock.Advance(time.Second)
	}
}

func TestFIFO(t *testing.T) {
	e, _ := newTestEngine(t)
	mustTryLock(t, e, Request{Name: "a", Key: "k0"})
	var order []string
	for i := 1; i <= 5; i++ {
		key := fmt.Sprint("k", i)
		_, ok, err := e.Lock(Request{Name: "a", Key: key}, 0, func(g Grant, err error) {
			if err != nil {
				t.Errorf("waiter %s: %v", key, err)
			}
			order = append(order, g.Key)
		})
		if ok || err != nil {
			t.Fatalf("Lock %s = %v, %v; want parked", key, ok, err)
		}
	}
	// A TryLock must not overtake the queue.
	if _, ok, _ := e.TryLock(Request{Name: "a"}); ok {
		t.Fatal("TryLock got a slot while others wait")
	}
	for i := range 5 {
		if _, err := e.Unlock("a", fmt.Sprint("k", i)); err != nil {
			t.Fatal(err)
		}
		if len(order) != i+1 || order[i] != fmt.Sprint("k", i+1) {
			t.Fatalf("after %d unlocks, grant order %v", i+1, order)
		}
	}
	if s := e.Stats(); s.Holders != 1 || s.Waiters != 0 {
		t.Fatalf("stats %+v; want the last waiter holding", s)
	}
}

func TestSemaphoreOfThree(t *testing.T) {
	e, _ := newTestEngine(t)
	r := func(key string) Request { return Request{Name: "s", Key: key, Size: 3} }
	for _, k := range []string{"h1", "h2", "h3"} {
		mustTryLock(t, e, r(k))
	}
	if _, ok, err := e.TryLock(r("x")); ok || err != nil {
		t.Fatalf("fourth TryLock = %v, %v; want no slot", ok, err)
	}
	w1 := mustPark(t, e, r("w1"), 0)
	w2 := mustPark(t, e, r("w2"), 0)
	w3 := mustPark(t, e, r("w3"), 0)
	if s := e.Stats(); s != (Stats{Locks: 1, Holders: 3, Waiters: 3}) {
		t.Fatalf("stats %+v", s)
	}
	mustUnlock(t, e, "s", "h2")
	g1 := wantDone(t, w1, nil)
	wantPending(t, w2)
	mustUnlock(t, e, "s", "h1")
	g2 := wantDone(t, w2, nil)
	wantPending(t, w3)
	if g1.Size != 3 || g2.Token <= g1.Token {
		t.Fatalf("grants %+v then %+v", g1, g2)
	}
	if s := e.Stats(); s != (Stats{Locks: 1, Holders: 3, Waiters: 1}) {
		t.Fatalf("stats %+v", s)
	}
	for _, k := range []string{"h3", "w1", "w2"} {
		mustUnlock(t, e, "s", k)
	}
	wantDone(t, w3, nil)
	mustUnlock(t, e, "s", "w3")
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v; want all gone", s)
	}
}

func mustUnlock(t testing.TB, e *Engine, name, key string) {
	t.Helper()
	if cancelled, err := e.Unlock(name, key); cancelled || err != nil {
		t.Fatalf("Unlock(%q, %q) = cancelled %v, %v; want released", name, key, cancelled, err)
	}
}

func TestWaitTimeout(t *testing.T) {
	e, clock := newTestEngine(t)
	mustTryLock(t, e, Request{Name: "a", Key: "h"})
	w := mustPark(t, e, Request{Name: "a", Key: "w"}, 5*time.Second)
	forever := mustPark(t, e, Request{Name: "a", Key: "forever"}, 0)
	snap := e.Snapshot()
	if want := clock.Now().Add(5 * time.Second); !snap[0].Waiters[0].Deadline.Equal(want) || !snap[0].Waiters[1].Deadline.IsZero() {
		t.Fatalf("waiter deadlines %+v; want %v then none", snap[0].Waiters, want)
	}
	clock.Advance(5*time.Second - 1)
	wantPending(t, w)
	clock.Advance(1)
	wantDone(t, w, ErrWaitTimeout)
	if s := e.Stats(); s.Waiters != 1 {
		t.Fatalf("stats %+v; want one waiter left", s)
	}
	clock.Advance(time.Hour)
	wantPending(t, forever)
	mustUnlock(t, e, "a", "h")
	wantDone(t, forever, nil)
	mustUnlock(t, e, "a", "forever")

	// A waiter that times out on a lock that then empties: the lock is
	// forgotten.
	mustTryLock(t, e, Request{Name: "b", Key: "h"})
	w = mustPark(t, e, Request{Name: "b"}, time.Second)
	mustUnlock(t, e, "b", "h")
	g := wantDone(t, w, nil) // granted before the timeout: the timer is stopped
	if clock.Pending() != 0 {
		t.Fatalf("%d timers pending after the grant", clock.Pending())
	}
	clock.Advance(time.Minute)
	wantDone(t, w, nil)
	mustUnlock(t, e, "b", g.Key)

	mustTryLock(t, e, Request{Name: "c", Key: "h", LockTimeout: time.Minute})
	w = mustPark(t, e, Request{Name: "c"}, time.Second)
	clock.Advance(time.Second)
	wantDone(t, w, ErrWaitTimeout)
	clock.Advance(time.Minute)
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v; want everything forgotten", s)
	}
}

func TestLockTimeoutHandsOver(t *testing.T) {
	e, clock := newTestEngine(t)
	start := clock.Now()
	g := mustTryLock(t, e, Request{Name: "a", Key: "h", LockTimeout: 10 * time.Second})
	if !g.ExpiresAt.Equal(start.Add(10 * time.Second)) {
		t.Fatalf("ExpiresAt %v; want start + 10s", g.ExpiresAt)
	}
	w := mustPark(t, e, Request{Name: "a", Key: "w", LockTimeout: 3 * time.Second}, 0)
	clock.Advance(10*time.Second - 1)
	wantPending(t, w)
	clock.Advance(1)
	wg := wantDone(t, w, nil)
	if wg.Token <= g.Token || wg.Key != "w" || !wg.ExpiresAt.Equal(start.Add(13*time.Second)) {
		t.Fatalf("waiter grant %+v after %+v; want a new token, expiry at start + 13s", wg, g)
	}
	if _, err := e.Unlock("a", "h"); !errors.Is(err, ErrInvalidLockKey) {
		t.Fatalf("Unlock with the expired key: %v", err)
	}
	if _, err := e.Renew("a", "h", time.Second); !errors.Is(err, ErrInvalidLockKey) {
		t.Fatalf("Renew with the expired key: %v", err)
	}
	clock.Advance(3 * time.Second)
	if _, err := e.Renew("a", "w", time.Second); !errors.Is(err, ErrLockDoesNotExist) {
		t.Fatalf("Renew after expiry of the last grant: %v", err)
	}
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v", s)
	}
}

func TestRenew(t *testing.T) {
	e, clock := newTestEngine(t)
	start := clock.Now()
	g := mustTryLock(t, e, Request{Name: "a", Key: "h", LockTimeout: 10 * time.Second})
	clock.Advance(8 * time.Second)
	r, err := e.Renew("a", "h", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Token != g.Token || r.Key != "h" || r.Name != "a" || r.Size != 1 || !r.ExpiresAt.Equal(start.Add(18*time.Second)) {
		t.Fatalf("renewed grant %+v; want same token, expiry start + 18s", r)
	}
	clock.Advance(5 * time.Second) // past the old expiry
	if s := e.Stats(); s.Holders != 1 {
		t.Fatal("grant expired at its old expiry despite the renew")
	}
	if snap := e.Snapshot(); !snap[0].Holders[0].ExpiresAt.Equal(r.ExpiresAt) {
		t.Fatalf("snapshot expiry %v, want %v", snap[0].Holders[0].ExpiresAt, r.ExpiresAt)
	}
	clock.Advance(5 * time.Second)
	if s := e.Stats(); s.Holders != 0 {
		t.Fatal("grant outlived its renewed expiry")
	}
	if _, err := e.Renew("a", "h", time.Second); !errors.Is(err, ErrLockDoesNotExist) {
		t.Fatalf("Renew after expiry: %v", err)
	}

	// A grant without a lock timeout gets one.
	mustTryLock(t, e, Request{Name: "b", Key: "h"})
	if _, err := e.Renew("b", "h", time.Second); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v; want the renewed grant expired", s)
	}
	if clock.Pending() != 0 {
		t.Fatalf("%d timers left", clock.Pending())
	}
}

func TestUnlockCancelsWait(t *testing.T) {
	e, clock := newTestEngine(t)
	mustTryLock(t, e, Request{Name: "a", Key: "h"})
	w := mustPark(t, e, Request{Name: "a", Key: "w"}, time.Minute)
	cancelled, err := e.Unlock("a", "w")
	if !cancelled || err != nil {
		t.Fatalf("Unlock(waiter) = cancelled %v, %v; want cancelled", cancelled, err)
	}
	wantDone(t, w, ErrWaitCancelled)
	if _, err := e.Unlock("a", "w"); !errors.Is(err, ErrInvalidLockKey) {
		t.Fatalf("second Unlock(waiter): %v", err)
	}
	if clock.Pending() != 0 {
		t.Fatal("the cancelled wait's timer is still pending")
	}

	// The race: the grant arrives first, then the client's cancelling
	// Unlock releases it.
	w = mustPark(t, e, Request{Name: "a", Key: "w2"}, 0)
	mustUnlock(t, e, "a", "h")
	g := wantDone(t, w, nil)
	if g.Key != "w2" {
		t.Fatalf("grant %+v", g)
	}
	if cancelled, err := e.Unlock("a", "w2"); cancelled || err != nil {
		t.Fatalf("Unlock after the grant = cancelled %v, %v; want released", cancelled, err)
	}
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v", s)
	}
}

func TestReleaseOwner(t *testing.T) {
	e, _ := newTestEngine(t)
	mustTryLock(t, e, Request{Name: "x", Key: "ax", Owner: own("A")})
	mustTryLock(t, e, Request{Name: "y", Key: "ay", Owner: own("A"), LockTimeout: time.Minute})
	mustTryLock(t, e, Request{Name: "z", Key: "bz", Owner: own("B")})
	aWaitsZ := mustPark(t, e, Request{Name: "z", Key: "az", Owner: own("A")}, time.Minute)
	aWaitsX := mustPark(t, e, Request{Name: "x", Key: "ax2", Owner: own("A")}, 0) // A waits behind itself
	bWaitsX := mustPark(t, e, Request{Name: "x", Key: "bx", Owner: own("B")}, 0)
	cWaitsX := mustPark(t, e, Request{Name: "x", Key: "cx", Owner: own("C")}, 0)
	noneWaitsY := mustPark(t, e, Request{Name: "y", Key: "ny"}, 0)
	if s := e.Stats(); s.Owners != 3 {
		t.Fatalf("stats %+v; want 3 owners", s)
	}

	grants, waits := e.ReleaseOwner(own("A"))
	if grants != 2 || waits != 2 {
		t.Fatalf("ReleaseOwner(A) = %d grants, %d waits; want 2, 2", grants, waits)
	}
	wantDone(t, aWaitsZ, ErrOwnerGone)
	wantDone(t, aWaitsX, ErrOwnerGone)
	if g := wantDone(t, bWaitsX, nil); g.Key != "bx" {
		t.Fatalf("x went to %+v, want B's waiter", g)
	}
	wantPending(t, cWaitsX)
	wantDone(t, noneWaitsY, nil)
	if s := e.Stats(); s != (Stats{Locks: 3, Holders: 3, Waiters: 1, Owners: 2}) {
		t.Fatalf("stats %+v", s)
	}
	if g, w := e.ReleaseOwner(own("A")); g != 0 || w != 0 {
		t.Fatalf("second ReleaseOwner(A) = %d, %d", g, w)
	}
	if g, w := e.ReleaseOwner(own("")); g != 0 || w != 0 {
		t.Fatalf("ReleaseOwner(\"\") = %d, %d; the empty owner is nobody", g, w)
	}

	if g, w := e.ReleaseOwner(own("B")); g != 2 || w != 0 {
		t.Fatalf("ReleaseOwner(B) = %d, %d", g, w)
	}
	wantDone(t, cWaitsX, nil)
	e.ReleaseOwner(own("C"))
	mustUnlock(t, e, "y", "ny")
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v", s)
	}
}

func TestReleaseStaleOwners(t *testing.T) {
	e, _ := newTestEngine(t)
	mustTryLock(t, e, Request{Name: "a", Owner: own("old-dead")})
	mustTryLock(t, e, Request{Name: "b", Owner: own("old-alive")})
	mustTryLock(t, e, Request{Name: "c", Owner: own("recycled")})
	mark := e.OwnerMark()
	mustTryLock(t, e, Request{Name: "d", Owner: own("new")})
	if e.OwnerMark() <= mark {
		t.Fatal("the mark did not grow with a new owner")
	}
	var asked []string
	released := e.ReleaseStaleOwners(mark, closedUnless(func(owner string) bool {
		asked = append(asked, owner)
		if owner == "recycled" {
			// Gone and back while the sweep looks: it registers anew, after
			// the mark. Calling the engine here must not deadlock.
			e.ReleaseOwner(own("recycled"))
			mustTryLock(t, e, Request{Name: "c", Owner: own("recycled")})
			return false
		}
		return owner == "old-alive"
	}))
	if len(released) != 1 || released[0] != own("old-dead") {
		t.Fatalf("released %v; want [old-dead]", released)
	}
	for _, o := range asked {
		if o == "new" {
			t.Fatal("alive was asked about an owner newer than the mark")
		}
	}
	if s := e.Stats(); s != (Stats{Locks: 3, Holders: 3, Owners: 3}) {
		t.Fatalf("stats %+v", s)
	}
	if got := e.ReleaseStaleOwners(e.OwnerMark(), closedUnless(func(string) bool { return false })); len(got) != 3 {
		t.Fatalf("released %v; want all three", got)
	}
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v", s)
	}
}

func TestIdleLocksAreForgotten(t *testing.T) {
	e, clock := newTestEngine(t)
	for i := range 10_000 {
		name := fmt.Sprint("lock-", i)
		switch i % 4 {
		case 0:
			g := mustTryLock(t, e, Request{Name: name, Owner: own(fmt.Sprint("o", i))})
			mustUnlock(t, e, name, g.Key)
		case 1:
			mustTryLock(t, e, Request{Name: name, Size: 3, LockTimeout: time.Second})
		case 2:
			mustTryLock(t, e, Request{Name: name, Key: "h"})
			mustPark(t, e, Request{Name: name, Key: "w", Owner: own("waiters")}, time.Second)
			mustUnlock(t, e, name, "h")
			mustUnlock(t, e, name, "w")
		case 3:
			mustTryLock(t, e, Request{Name: name, Owner: own("shared")})
		}
	}
	clock.Advance(time.Second)
	e.ReleaseOwner(own("shared"))
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v; want nothing left", s)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.locks) != 0 || len(e.owners) != 0 {
		t.Fatalf("%d locks, %d owners left in the maps", len(e.locks), len(e.owners))
	}
	if clock.Pending() != 0 {
		t.Fatalf("%d timers left", clock.Pending())
	}
}

// TestBigLockIndex exercises the key index of locks with many entries.
func TestBigLockIndex(t *testing.T) {
	e, _ := newTestEngine(t)
	const size, extra = 40, 30
	r := func(i int) Request { return Request{Name: "big", Key: fmt.Sprint("k", i), Size: size} }
	waits := map[int]*outcome{}
	for i := range size + extra {
		if i < size {
			mustTryLock(t, e, r(i))
		} else {
			waits[i] = mustPark(t, e, r(i), 0)
		}
	}
	checkInvariants(t, e)
	if _, _, err := e.TryLock(r(size + 3)); !errors.Is(err, ErrKeyInUse) {
		t.Fatalf("waiting key reused: %v", err)
	}
	// Cancel every third waiter, release holders from the middle.
	for i := size; i < size+extra; i += 3 {
		if cancelled, err := e.Unlock("big", fmt.Sprint("k", i)); !cancelled || err != nil {
			t.Fatalf("cancel k%d: cancelled %v, %v", i, cancelled, err)
		}
		wantDone(t, waits[i], ErrWaitCancelled)
		delete(waits, i)
	}
	for i := size - 1; i >= 0; i -= 2 {
		mustUnlock(t, e, "big", fmt.Sprint("k", i))
	}
	checkInvariants(t, e)
	for i, w := range waits {
		g := wantDone(t, w, nil)
		if _, err := e.Renew("big", g.Key, time.Hour); err != nil {
			t.Fatalf("renew k%d: %v", i, err)
		}
		mustUnlock(t, e, "big", g.Key)
	}
	for i := size - 2; i >= 0; i -= 2 {
		mustUnlock(t, e, "big", fmt.Sprint("k", i))
	}
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v", s)
	}
}

func TestSnapshot(t *testing.T) {
	e, clock := newTestEngine(t)
	t0 := clock.Now()
	mustTryLock(t, e, Request{Name: "b", Key: "b1", Size: 2, Owner: own("o1"), LockTimeout: time.Minute})
	clock.Advance(time.Second)
	mustTryLock(t, e, Request{Name: "b", Key: "b2", Size: 2})
	mustTryLock(t, e, Request{Name: "a", Key: "a1"})
	mustPark(t, e, Request{Name: "a", Key: "a2", Owner: own("o2")}, 10*time.Second)
	mustPark(t, e, Request{Name: "a", Key: "a3"}, 0)
	t1 := clock.Now()

	snap := e.Snapshot()
	if len(snap) != 2 || snap[0].Name != "a" || snap[1].Name != "b" {
		t.Fatalf("snapshot %+v; want locks a then b", snap)
	}
	a, b := snap[0], snap[1]
	if a.Size != 1 || len(a.Holders) != 1 || len(a.Waiters) != 2 {
		t.Fatalf("lock a: %+v", a)
	}
	if w := a.Waiters[0]; w.Key != "a2" || w.Owner != own("o2") || !w.Since.Equal(t1) || !w.Deadline.Equal(t1.Add(10*time.Second)) {
		t.Fatalf("first waiter of a: %+v", w)
	}
	if w := a.Waiters[1]; w.Key != "a3" || !w.Owner.IsZero() || !w.Deadline.IsZero() {
		t.Fatalf("second waiter of a: %+v", w)
	}
	if b.Size != 2 || len(b.Holders) != 2 || b.Waiters != nil {
		t.Fatalf("lock b: %+v", b)
	}
	h1, h2 := b.Holders[0], b.Holders[1]
	if h1.Key != "b1" || h1.Owner != own("o1") || !h1.AcquiredAt.Equal(t0) || !h1.ExpiresAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("first holder of b: %+v", h1)
	}
	if h2.Key != "b2" || h2.Token <= h1.Token || !h2.AcquiredAt.Equal(t1) || !h2.ExpiresAt.IsZero() {
		t.Fatalf("second holder of b: %+v", h2)
	}
	if s := e.Stats(); s != (Stats{Locks: 2, Holders: 3, Waiters: 2, Owners: 2}) {
		t.Fatalf("stats %+v", s)
	}
}

func TestClose(t *testing.T) {
	e, clock := newTestEngine(t)
	mustTryLock(t, e, Request{Name: "a", Key: "h", LockTimeout: time.Minute})
	w1 := mustPark(t, e, Request{Name: "a", Key: "w1"}, time.Minute)
	w2 := mustPark(t, e, Request{Name: "a", Key: "w2", Owner: own("o")}, 0)
	e.Close()
	wantDone(t, w1, ErrEngineClosed)
	wantDone(t, w2, ErrEngineClosed)
	if clock.Pending() != 0 {
		t.Fatalf("%d timers left after Close", clock.Pending())
	}
	clock.Advance(time.Hour)
	if _, _, err := e.TryLock(Request{Name: "a"}); err != ErrEngineClosed {
		t.Errorf("TryLock after Close: %v", err)
	}
	if _, _, err := e.Lock(Request{Name: "a"}, 0, func(Grant, error) { t.Error("done called") }); err != ErrEngineClosed {
		t.Errorf("Lock after Close: %v", err)
	}
	if _, err := e.Unlock("a", "h"); err != ErrEngineClosed {
		t.Errorf("Unlock after Close: %v", err)
	}
	if _, err := e.Renew("a", "h", time.Second); err != ErrEngineClosed {
		t.Errorf("Renew after Close: %v", err)
	}
	if g, w := e.ReleaseOwner(own("o")); g != 0 || w != 0 {
		t.Errorf("ReleaseOwner after Close: %d, %d", g, w)
	}
	if s := e.Stats(); s != (Stats{}) {
		t.Errorf("stats after Close: %+v", s)
	}
	if len(e.Snapshot()) != 0 {
		t.Error("snapshot after Close is not empty")
	}
	e.Close()
}

// TestCallbacksRunOutsideTheMutex has done callbacks call back into the
// engine, which deadlocks if they run with the mutex held.
func TestCallbacksRunOutsideTheMutex(t *testing.T) {
	e, clock := newTestEngine(t)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var calls int
		reenter := func(g Grant, err error) {
			calls++
			if !e.mu.TryLock() {
				t.Error("done called with the engine mutex held")
				return
			}
			e.mu.Unlock()
			e.Stats()
			e.Snapshot()
			if g.Token != 0 {
				mustUnlock(t, e, g.Name, g.Key) // frees the slot for the next waiter, recursively
			}
			if _, _, err := e.TryLock(Request{Name: "other"}); err != nil {
				t.Error(err)
			}
		}
		mustTryLock(t, e, Request{Name: "a", Key: "h", LockTimeout: time.Second})
		for _, wait := range []time.Duration{0, 0, time.Minute} {
			if _, ok, err := e.Lock(Request{Name: "a"}, wait, reenter); ok || err != nil {
				t.Errorf("Lock = %v, %v", ok, err)
			}
		}
		clock.Advance(time.Second) // expiry: grants chain through all waiters
		mustTryLock(t, e, Request{Name: "b", Key: "h", Owner: own("o")})
		e.Lock(Request{Name: "b", Owner: own("o")}, time.Second, reenter)
		e.Lock(Request{Name: "b", Key: "c"}, 0, reenter)
		e.Lock(Request{Name: "b"}, time.Second, reenter)
		e.Unlock("b", "c")         // cancel
		clock.Advance(time.Second) // wait timeout
		e.ReleaseOwner(own("o"))   // owner gone
		if calls != 6 {
			t.Errorf("%d callbacks, want 6", calls)
		}
	}()
	select {
	case <-finished:
	case <-time.After(time.Minute):
		t.Fatal("deadlock: a callback that calls the engine did not return")
	}
}

// TestStaleTimers uses a clock whose timers cannot be stopped, as happens
// with real timers that have already fired and wait for the mutex. Their
// late calls must change nothing.
func TestStaleTimers(t *testing.T) {
	clock := &unstoppableClock{NewFakeClock(time.Time{})}
	e := New(WithClock(clock))
	defer checkInvariants(t, e)

	// Renewed: the old expiry must not release the grant.
	mustTryLock(t, e, Request{Name: "a", Key: "h", LockTimeout: time.Second})
	if _, err := e.Renew("a", "h", time.Minute); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if s := e.Stats(); s.Holders != 1 {
		t.Fatal("the stale expiry of a renewed grant released it")
	}
	mustUnlock(t, e, "a", "h")

	// Released, and the entries recycled for a new grant and a new waiter:
	// the old timers must not touch them.
	mustTryLock(t, e, Request{Name: "b", Key: "h", LockTimeout: time.Second})
	hEntry := e.locks["b"].find("h")
	w := mustPark(t, e, Request{Name: "b", Key: "w"}, time.Second)
	wEntry := e.locks["b"].find("w")
	mustUnlock(t, e, "b", "h")
	wantDone(t, w, nil) // its wait timer stays armed
	mustTryLock(t, e, Request{Name: "c", Key: "h2"})
	mustUnlock(t, e, "b", "w")
	w2 := mustPark(t, e, Request{Name: "c", Key: "w2"}, 0)
	if e.locks["c"].find("h2") != hEntry || e.locks["c"].find("w2") != wEntry {
		t.Fatal("test setup: the entries were not recycled")
	}
	clock.Advance(time.Second)
	if s := e.Stats(); s.Holders != 1 || s.Waiters != 1 {
		t.Fatalf("stale timers changed the state: %+v", s)
	}
	wantPending(t, w2)
	wantDone(t, w, nil)
	e.Close()
	wantDone(t, w2, ErrEngineClosed)
}

type unstoppableClock struct{ *FakeClock }

func (c *unstoppableClock) AfterFunc(d time.Duration, f func()) Timer {
	c.FakeClock.AfterFunc(d, f)
	return unstoppable{}
}

type unstoppable struct{}

func (unstoppable) Stop() bool { return false }

func TestLockNilDonePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Lock with a nil done did not panic")
		}
	}()
	New().Lock(Request{Name: "a"}, 0, nil)
}

func TestRealClock(t *testing.T) {
	e := New()
	fired := make(chan Grant, 1)
	mustTryLock(t, e, Request{Name: "a", LockTimeout: time.Millisecond})
	mustPark(t, e, Request{Name: "a"}, 0) // just to exercise the parking path
	_, ok, err := e.Lock(Request{Name: "a", Key: "me"}, 0, func(g Grant, err error) {
		if err == nil {
			fired <- g
		}
	})
	if ok || err != nil {
		t.Fatal(ok, err)
	}
	// The first grant expires, the anonymous waiter gets the lock without a
	// timeout: release it to let "me" in.
	deadline := time.After(time.Minute)
	for {
		snap := e.Snapshot()
		if len(snap) == 1 && len(snap[0].Waiters) == 1 {
			mustUnlock(t, e, "a", snap[0].Holders[0].Key)
			break
		}
		select {
		case <-deadline:
			t.Fatal("the real timer never expired the grant")
		case <-time.After(time.Millisecond):
		}
	}
	select {
	case g := <-fired:
		mustUnlock(t, e, "a", g.Key)
	case <-deadline:
		t.Fatal("no grant")
	}
	if s := e.Stats(); s != (Stats{}) {
		t.Fatalf("stats %+v", s)
	}
}

// An owner name can stand for two connections in turn: after a NATS server
// restart, its new connection 7 gets the name of its old connection 7. A
// sweep that releases the old connection's requests must spare what the new
// one was granted, or waits for, after the mark, and must not remember the
// name as gone while the new connection uses it.
func TestReleaseStaleOwnersSparesNewerRequestsOfTheSameName(t *testing.T) {
	e, _ := newGoneEngine(t, 100)
	old := mustTryLock(t, e, Request{Name: "a", Owner: own("srv:7")})
	mustTryLock(t, e, Request{Name: "b", Owner: own("other")})
	if _, ok, err := e.Lock(Request{Name: "b", Key: "old-wait", Owner: own("srv:7")}, 0, func(Grant, error) {}); ok || err != nil {
		t.Fatalf("old wait: %v, %v", ok, err)
	}
	mark := e.OwnerMark()

	// The new connection of the same name.
	fresh := mustTryLock(t, e, Request{Name: "c", Owner: own("srv:7")})
	var newWait Grant
	if _, ok, err := e.Lock(Request{Name: "a", Key: "new-wait", Owner: own("srv:7")}, 0, func(g Grant, err error) {
		if err != nil {
			t.Errorf("new wait ended: %v", err)
		}
		newWait = g
	}); ok || err != nil {
		t.Fatalf("new wait: %v, %v", ok, err)
	}

	released := e.ReleaseStaleOwners(mark, closedUnless(func(o string) bool { return o != "srv:7" }))
	if len(released) != 1 || released[0] != own("srv:7") {
		t.Fatalf("released %v; want [srv:7]", released)
	}
	checkInvariants(t, e)
	// The old grant is gone and its slot went to the new connection's wait;
	// the old wait is gone; the new grant stays.
	if newWait.Token <= old.Token {
		t.Fatalf("the new wait was not granted the old grant's slot: %+v", newWait)
	}
	if _, err := e.Renew("c", fresh.Key, time.Minute); err != nil {
		t.Fatalf("renew of the new connection's grant: %v", err)
	}
	if _, err := e.Unlock("b", "old-wait"); err == nil {
		t.Fatal("the old wait is still queued")
	}
	// The name is in use by a live connection: its requests are served.
	if _, ok, err := e.TryLock(Request{Name: "d", Owner: own("srv:7")}); !ok || err != nil {
		t.Fatalf("trylock of the new connection after the sweep: %v, %v", ok, err)
	}
	if s := e.Stats(); s.Holders != 4 || s.Waiters != 0 {
		t.Fatalf("stats %+v; want 4 holders (a, b, c, d), no waiters", s)
	}
}
