package engine

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// restoreAll restores recs into a new engine on a clock at now, whose
// restored waiters report to the outcomes returned, by key.
func restoreAll(t *testing.T, now time.Time, recs ...LockRecord) (*Engine, *FakeClock, map[string]*outcome) {
	t.Helper()
	clock := NewFakeClock(now)
	e := New(WithClock(clock))
	t.Cleanup(func() { checkInvariants(t, e) })
	outs := map[string]*outcome{}
	for _, r := range recs {
		err := e.Restore(r, func(w WaiterRecord) func(Grant, error) {
			o := new(outcome)
			outs[w.Key] = o
			return o.done
		})
		if err != nil {
			t.Fatalf("Restore(%q) = %v", r.Name, err)
		}
	}
	return e, clock, outs
}

func TestRecordRestoreRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		make func(t *testing.T, e *Engine) // builds lock "x"
	}{
		{"mutex held forever", func(t *testing.T, e *Engine) {
			mustTryLock(t, e, Request{Name: "x", Key: "k1", Owner: own("S:1")})
		}},
		{"mutex with lock timeout and waiters", func(t *testing.T, e *Engine) {
			mustTryLock(t, e, Request{Name: "x", Key: "k1", LockTimeout: time.Minute})
			mustPark(t, e, Request{Name: "x", Key: "w1", Owner: own("S:2"), LockTimeout: 5 * time.Second, Reply: "_INBOX.a"}, 0)
			mustPark(t, e, Request{Name: "x", Key: "w2", Reply: "_INBOX.b"}, time.Hour)
		}},
		{"semaphore, renewed holder", func(t *testing.T, e *Engine) {
			mustTryLock(t, e, Request{Name: "x", Key: "k1", Size: 3})
			mustTryLock(t, e, Request{Name: "x", Key: "k2", Size: 3, Owner: own("S:1")})
			mustTryLock(t, e, Request{Name: "x", Key: "k3", Size: 3, LockTimeout: time.Second})
			if _, err := e.Renew("x", "k3", 2*time.Minute); err != nil {
				t.Fatal(err)
			}
			mustPark(t, e, Request{Name: "x", Key: "w1", Size: 3}, time.Minute)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, clock := newTestEngine(t)
			clock.Advance(time.Second)
			tt.make(t, a)
			before, ok := a.Record("x")
			if !ok {
				t.Fatal("Record(x): no record")
			}
			b, _, outs := restoreAll(t, clock.Now(), before)
			after, _ := b.Record("x")
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("restored record differs:\n got %+v\nwant %+v", after, before)
			}
			if len(outs) != len(before.Waiters) {
				t.Fatalf("doneFor called for %d waiters, want %d", len(outs), len(before.Waiters))
			}
			// Later grants get larger tokens than every restored one.
			g := mustTryLock(t, b, Request{Name: "other"})
			for _, h := range before.Holders {
				if g.Token <= h.Token {
					t.Errorf("new token %d <= restored token %d", g.Token, h.Token)
				}
			}
		})
	}
}

func TestRestoredTimersFireAtStoredDeadlines(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := LockRecord{Name: "x", Size: 1,
		Holders: []HolderRecord{{Key: "h", Token: 100, Acquired: start, Expires: start.Add(10 * time.Second), LockTimeout: 10 * time.Second}},
		Waiters: []WaiterRecord{
			{Key: "w1", Since: start, Deadline: start.Add(5 * time.Second)}, // times out before the expiry
			{Key: "w2", Since: start, LockTimeout: 7 * time.Second, Reply: "r2"},
		}}
	// Restored 3 s after the record was made: the timers keep the stored
	// instants, not the durations from now.
	e, clock, outs := restoreAll(t, start.Add(3*time.Second), rec)
	clock.Advance(2*time.Second - time.Nanosecond)
	wantPending(t, outs["w1"])
	clock.Advance(time.Nanosecond)
	wantDone(t, outs["w1"], ErrWaitTimeout)
	clock.Advance(5*time.Second - time.Nanosecond)
	wantPending(t, outs["w2"])
	clock.Advance(time.Nanosecond)
	g := wantDone(t, outs["w2"], nil)
	if g.Token <= 100 || g.Key != "w2" || !g.ExpiresAt.Equal(start.Add(17*time.Second)) {
		t.Fatalf("w2's grant = %+v; want a token above 100 and expiry at start+17s", g)
	}
	r, _ := e.Record("x")
	if len(r.Holders) != 1 || r.Holders[0].LockTimeout != 7*time.Second || len(r.Waiters) != 0 {
		t.Fatalf("record after hand-over = %+v", r)
	}
}

func TestRestoredEntriesAnswerKeysAndOwners(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := LockRecord{Name: "x", Size: 1,
		Holders: []HolderRecord{{Key: "h", Token: 7, Owner: own("S:1"), Acquired: now}},
		Waiters: []WaiterRecord{{Key: "w", Owner: own("S:2"), Since: now}}}
	e, _, outs := restoreAll(t, now, rec)
	if _, err := e.Renew("x", "nope", time.Second); !errors.Is(err, ErrInvalidLockKey) {
		t.Fatalf("Renew with a wrong key = %v", err)
	}
	if grants, _ := e.ReleaseOwner(own("S:1")); grants != 1 {
		t.Fatalf("ReleaseOwner(S:1) released %d grants, want 1", grants)
	}
	wantDone(t, outs["w"], nil)
	if _, err := e.Unlock("x", "w"); err != nil {
		t.Fatalf("Unlock by the restored waiter's key = %v", err)
	}
	if _, ok := e.Record("x"); ok {
		t.Fatal("lock x still has a record after its last holder left")
	}
}

func TestRestoreRefusesBadRecords(t *testing.T) {
	now := time.Now()
	h := func(key string, token uint64) HolderRecord {
		return HolderRecord{Key: key, Token: token, Acquired: now}
	}
	w := func(key string) WaiterRecord { return WaiterRecord{Key: key, Since: now} }
	tests := []struct {
		name string
		rec  LockRecord
	}{
		{"no name", LockRecord{Size: 1, Holders: []HolderRecord{h("a", 1)}}},
		{"no size", LockRecord{Name: "x", Holders: []HolderRecord{h("a", 1)}}},
		{"no holder", LockRecord{Name: "x", Size: 1}},
		{"more holders than slots", LockRecord{Name: "x", Size: 1, Holders: []HolderRecord{h("a", 1), h("b", 2)}}},
		{"waiter with a free slot", LockRecord{Name: "x", Size: 2, Holders: []HolderRecord{h("a", 1)}, Waiters: []WaiterRecord{w("b")}}},
		{"repeated key", LockRecord{Name: "x", Size: 1, Holders: []HolderRecord{h("a", 1)}, Waiters: []WaiterRecord{w("a")}}},
		{"empty key", LockRecord{Name: "x", Size: 1, Holders: []HolderRecord{h("", 1)}}},
		{"no token", LockRecord{Name: "x", Size: 1, Holders: []HolderRecord{h("a", 0)}}},
		{"lock exists", LockRecord{Name: "held", Size: 1, Holders: []HolderRecord{h("a", 1)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := newTestEngine(t)
			mustTryLock(t, e, Request{Name: "held"})
			err := e.Restore(tt.rec, func(WaiterRecord) func(Grant, error) { return func(Grant, error) {} })
			if !errors.Is(err, ErrBadRecord) {
				t.Fatalf("Restore = %v, want ErrBadRecord", err)
			}
			if st := e.Stats(); st.Locks != 1 || st.Holders != 1 || st.Waiters != 0 {
				t.Fatalf("after a refused Restore: %+v", st)
			}
		})
	}
}
