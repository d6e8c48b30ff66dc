package engine

import (
	"sync"
	"testing"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// newTestEngine returns an engine on a fake clock, checked for consistency
// when the test ends.
func newTestEngine(t testing.TB) (*Engine, *FakeClock) {
	t.Helper()
	clock := NewFakeClock(time.Time{})
	e := New(WithClock(clock))
	t.Cleanup(func() { checkInvariants(t, e) })
	return e, clock
}

// outcome records the done calls of one parked Lock.
type outcome struct {
	mu    sync.Mutex
	calls int
	grant Grant
	err   error
}

func (o *outcome) done(g Grant, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls++
	o.grant, o.err = g, err
}

func (o *outcome) get() (calls int, g Grant, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.calls, o.grant, o.err
}

// mustTryLock takes a slot or fails the test.
func mustTryLock(t testing.TB, e *Engine, r Request) Grant {
	t.Helper()
	g, ok, err := e.TryLock(r)
	if err != nil || !ok {
		t.Fatalf("TryLock(%+v) = %v, %v; want a grant", r, ok, err)
	}
	return g
}

// mustPark makes a Lock that must park and returns its outcome.
func mustPark(t testing.TB, e *Engine, r Request, waitTimeout time.Duration) *outcome {
	t.Helper()
	o := new(outcome)
	_, ok, err := e.Lock(r, waitTimeout, o.done)
	if err != nil || ok {
		t.Fatalf("Lock(%+v) = %v, %v; want parked", r, ok, err)
	}
	return o
}

// wantDone checks that o was called exactly once with err (nil: a grant).
func wantDone(t testing.TB, o *outcome, wantErr error) Grant {
	t.Helper()
	calls, g, err := o.get()
	if calls != 1 || err != wantErr {
		t.Fatalf("done called %d times, last with %v; want once with %v", calls, err, wantErr)
	}
	if wantErr == nil && g.Token == 0 {
		t.Fatalf("done got a grant without a token: %+v", g)
	}
	return g
}

// wantPending checks that o has not been called yet.
func wantPending(t testing.TB, o *outcome) {
	t.Helper()
	if calls, _, err := o.get(); calls != 0 {
		t.Fatalf("done called %d times (err %v); want not yet", calls, err)
	}
}

// checkInvariants walks the whole state and reports any inconsistency
// between the records, the lists, the indexes and the counters.
func checkInvariants(t testing.TB, e *Engine) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	holders, waiters, owned := 0, 0, 0
	for name, l := range e.locks {
		if l.name != name {
			t.Errorf("lock %q filed under %q", l.name, name)
		}
		if l.held == 0 && l.waiting == 0 {
			t.Errorf("lock %q is idle but not forgotten", name)
		}
		if l.held > l.size {
			t.Errorf("lock %q: %d holders, size %d", name, l.held, l.size)
		}
		if l.waiting > 0 && l.held != l.size {
			t.Errorf("lock %q: %d waiters with only %d of %d slots held", name, l.waiting, l.held, l.size)
		}
		keys := map[string]*entry{}
		n := 0
		var prev *entry
		for en := l.holders.head; en != nil; en = en.link[inLock].next {
			n++
			if en.link[inLock].prev != prev || en.lock != l || en.wait != nil || en.token == 0 || en.token > e.lastToken {
				t.Errorf("lock %q: bad holder %+v", name, en)
			}
			if prev != nil && en.token <= prev.token {
				t.Errorf("lock %q: holder token %d after %d: not in grant order", name, en.token, prev.token)
			}
			if (en.deadline == 0) != (en.timer == nil) {
				t.Errorf("lock %q: holder deadline %d with timer %v", name, en.deadline, en.timer)
			}
			keys[en.key] = en
			prev = en
		}
		if l.holders.tail != prev {
			t.Errorf("lock %q: holders' tail is not the last holder", name)
		}
		if n != l.held {
			t.Errorf("lock %q: held %d, listed %d", name, l.held, n)
		}
		n, prev = 0, nil
		for en := l.waiters.head; en != nil; en = en.link[inLock].next {
			n++
			if en.link[inLock].prev != prev || en.lock != l || en.wait == nil || en.token != 0 {
				t.Errorf("lock %q: bad waiter %+v", name, en)
			}
			keys[en.key] = en
			prev = en
		}
		if l.waiters.tail != prev {
			t.Errorf("lock %q: wait tail is not the last waiter", name)
		}
		if n != l.waiting {
			t.Errorf("lock %q: waiting %d, listed %d", name, l.waiting, n)
		}
		if len(keys) != l.held+l.waiting {
			t.Errorf("lock %q: %d distinct keys for %d entries", name, len(keys), l.held+l.waiting)
		}
		if l.index != nil {
			if len(l.index) != len(keys) {
				t.Errorf("lock %q: index has %d keys, lock %d", name, len(l.index), len(keys))
			}
			for k, en := range keys {
				if l.index[k] != en {
					t.Errorf("lock %q: index of %q is wrong", name, k)
				}
			}
		}
		for _, en := range keys {
			if en.owner != nil {
				owned++
				if e.owners[en.owner.id] != en.owner {
					t.Errorf("lock %q: entry owner %v is not registered", name, en.owner.id)
				}
			}
		}
		holders += l.held
		waiters += l.waiting
	}
	if holders != e.holders || waiters != e.waiters {
		t.Errorf("counters say %d holders, %d waiters; locks have %d, %d", e.holders, e.waiters, holders, waiters)
	}
	inOwners := 0
	for name, o := range e.owners {
		if o.id != name || o.n == 0 || o.entries.head == nil || o.entries.head.seq == 0 || o.entries.tail.seq > e.lastSeq {
			t.Errorf("bad owner %q: %+v", name, o)
		}
		n, waits := 0, 0
		var prev *entry
		for en := o.entries.head; en != nil; en = en.link[inOwner].next {
			n++
			if en.wait != nil {
				waits++
			}
			if en.owner != o || en.link[inOwner].prev != prev || en.lock == nil || e.locks[en.lock.name] != en.lock {
				t.Errorf("owner %q: bad entry %+v", name, en)
			}
			if en.seq == 0 || (prev != nil && en.seq <= prev.seq) {
				t.Errorf("owner %q: entry seq %d after %+v: not oldest first", name, en.seq, prev)
			}
			prev = en
		}
		if o.entries.tail != prev {
			t.Errorf("owner %q: tail %p, last entry %p", name, o.entries.tail, prev)
		}
		if n != o.n || waits != o.waits {
			t.Errorf("owner %q: n %d waits %d, listed %d and %d", name, o.n, o.waits, n, waits)
		}
		inOwners += n
	}
	if inOwners != owned {
		t.Errorf("owners list %d entries, locks have %d owned entries", inOwners, owned)
	}
	if len(e.freeLocks) > maxFree || len(e.freeEntries) > maxFree || len(e.freeOwners) > maxFree {
		t.Errorf("free lists too long: %d locks, %d entries, %d owners", len(e.freeLocks), len(e.freeEntries), len(e.freeOwners))
	}
	for _, o := range e.freeOwners {
		if *o != (owner{}) {
			t.Errorf("free owner record not cleared: %+v", o)
		}
	}
}

// closedUnless is a sweep verdict: live when alive says so, else closed.
func closedUnless(alive func(owner string) bool) func(subjects.Owner) OwnerState {
	return func(owner subjects.Owner) OwnerState {
		if alive(ownerText(owner)) {
			return OwnerLive
		}
		return OwnerClosed
	}
}

// own makes an owner for tests: "srv:7" is server srv, client 7; a name
// without a client id is client 1 of that server.
func own(s string) subjects.Owner {
	if o, err := subjects.ParseOwner(s); err == nil {
		return o
	}
	return subjects.Owner{ServerID: s, ClientID: 1}
}

// ownerText undoes own.
func ownerText(o subjects.Owner) string {
	if o.ClientID == 1 {
		return o.ServerID
	}
	return o.String()
}
