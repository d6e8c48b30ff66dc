package clientlib_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// forceUnlock asks the service, as an operator would, to release the
// grants of name that body selects (see subjects.ForceUnlockRequest).
func forceUnlock(t *testing.T, operator *nats.Conn, name string, body subjects.ForceUnlockRequest) {
	t.Helper()
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := operator.Request(subjects.AdminSubject(subjects.DefaultPrefix, subjects.OpAdminUnlock, name), data, testTimeout)
	if err != nil {
		t.Fatalf("force unlock of %q: %v", name, err)
	}
	var resp subjects.ForceUnlockResponse
	if err := json.Unmarshal(reply.Data, &resp); err != nil || !resp.Unlocked {
		t.Fatalf("force unlock of %q: %s (%v)", name, reply.Data, err)
	}
}

// waitLost waits until l is lost and fails the test unless the loss
// matches cause.
func waitLost(t *testing.T, l *clientlib.Lock, cause error) {
	t.Helper()
	waitClosed(t, "lock "+l.Name()+" is known lost", l.Done())
	var lost *clientlib.LostError
	if err := l.Err(); !errors.As(err, &lost) || !errors.Is(err, clientlib.ErrLockLost) || !errors.Is(err, cause) {
		t.Fatalf("%s: Err() = %v, want a LostError for %v", l.Name(), err, cause)
	}
}

// assertHeld fails the test unless l is still held, both as the client
// sees it and at the service: its Unlock then succeeds.
func assertHeld(t *testing.T, l *clientlib.Lock) {
	t.Helper()
	if err := l.Err(); err != nil {
		t.Fatalf("%s (token %d) is not held: %v", l.Name(), l.Token(), err)
	}
	if err := l.Unlock(testContext(t)); err != nil {
		t.Fatalf("%s (token %d): Unlock = %v, want the lock still held", l.Name(), l.Token(), err)
	}
}

// TestForceUnlockEndsTheLock: an operator's force unlock ends exactly the
// grants it released, whichever client holds the other slots.
func TestForceUnlockEndsTheLock(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, nc := newClient(t, srv)
	other, _ := newClient(t, srv)
	operator := srv.Connect(t)

	tests := []struct {
		name string
		// sameClient takes both slots from c; else the second from other.
		sameClient bool
		// selects picks the grants to release from the two holders.
		selects func(a, b *clientlib.Lock) subjects.ForceUnlockRequest
		lost    []int // indexes of the holders that must be lost
	}{
		{"by token, same client", true, func(a, _ *clientlib.Lock) subjects.ForceUnlockRequest {
			return subjects.ForceUnlockRequest{Token: a.Token()}
		}, []int{0}},
		{"by key, same client", true, func(_, b *clientlib.Lock) subjects.ForceUnlockRequest {
			return subjects.ForceUnlockRequest{Key: b.Key()}
		}, []int{1}},
		{"by token, other client", false, func(a, _ *clientlib.Lock) subjects.ForceUnlockRequest {
			return subjects.ForceUnlockRequest{Token: a.Token()}
		}, []int{0}},
		{"every holder", false, func(_, _ *clientlib.Lock) subjects.ForceUnlockRequest {
			return subjects.ForceUnlockRequest{}
		}, []int{0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := "forced " + tt.name
			second := other
			if tt.sameClient {
				second = c
			}
			holders := []*clientlib.Lock{
				mustLock(t, c, name, clientlib.WithSize(2)),
				mustLock(t, second, name, clientlib.WithSize(2)),
			}
			forceUnlock(t, operator, name, tt.selects(holders[0], holders[1]))
			for _, i := range tt.lost {
				waitLost(t, holders[i], clientlib.ErrForceReleased)
			}
			// Every notice the service sent c is in by the time the flush
			// returns; a spared grant must still be held after it.
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			for i, l := range holders {
				if len(tt.lost) == 1 && tt.lost[0] != i {
					assertHeld(t, l)
				}
			}
			if !isFree(t, other, name, clientlib.WithSize(2)) {
				t.Fatal("the lock is still held")
			}
		})
	}
}

// TestExpiryEndsTheLock: a lock whose timeout passes is lost with
// ErrExpired, whether the client's own timer or the service's notice
// tells first, and also when only the service knows the timeout.
func TestExpiryEndsTheLock(t *testing.T) {
	tests := []struct {
		name   string
		config service.Config
		client []clientlib.Option
		lock   []clientlib.LockOption
	}{
		{
			name: "lock timeout without auto-renew",
			lock: []clientlib.LockOption{clientlib.WithLockTimeout(200 * time.Millisecond), clientlib.WithAutoRenew(false)},
		},
		{
			// The service gives a lock without a timeout one when locks
			// outlive their connection: the client has no timer for it, so
			// only the service's notice can end it.
			name:   "timeout the client does not know",
			config: service.Config{NoClearOnDisconnect: true, AnonymousLockTimeout: 200 * time.Millisecond},
			client: []clientlib.Option{clientlib.WithKeepOnDisconnect(true)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ldlmtest.Start(t, ldlmtest.WithConfig(tt.config))
			c, _ := newClient(t, srv, tt.client...)
			other, _ := newClient(t, srv, tt.client...)

			l := mustLock(t, c, "expiring", tt.lock...)
			waitLost(t, l, clientlib.ErrExpired)
			eventually(t, "the service released the lock", func() bool { return isFree(t, other, "expiring") })
			if err := l.Unlock(testContext(t)); !errors.Is(err, clientlib.ErrExpired) {
				t.Errorf("Unlock of an expired lock = %v, want the loss", err)
			}
		})
	}
}

// startInstance starts another instance of the lock service on srv's NATS
// server, on connections of its own, as a restarted `ldlm` would. It
// returns the instance and its application connection; both are stopped
// when the test ends.
func startInstance(t *testing.T, srv *ldlmtest.Server) (*service.Service, *nats.Conn) {
	t.Helper()
	app, err := srv.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	sys, err := srv.NATS.ConnectSystem()
	if err != nil {
		app.Close()
		t.Fatal(err)
	}
	s, err := service.Start(service.Config{}, app, sys, nil)
	if err != nil {
		app.Close()
		sys.Close()
		t.Fatalf("starting another instance: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		app.Close()
		sys.Close()
	})
	return s, app
}

// tryLockNow fails the test unless c gets name at once.
func tryLockNow(t *testing.T, c *clientlib.Client, name string, opts ...clientlib.LockOption) *clientlib.Lock {
	t.Helper()
	l, err := c.TryLock(testContext(t), name, opts...)
	if err != nil || !l.Locked() {
		t.Fatalf("TryLock(%q): locked %v, %v", name, l.Locked(), err)
	}
	return l
}

// TestServiceRestart: when the service stops, the locks it granted are
// lost at once, and the instance started after it grants them to others.
func TestServiceRestart(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	other, _ := newClient(t, srv)

	held := []*clientlib.Lock{
		mustLock(t, c, "plain"),
		mustLock(t, c, "renewed", clientlib.WithLockTimeout(time.Minute)),
		mustLock(t, c, "semaphore", clientlib.WithSize(3)),
	}
	stopping := time.Now()
	srv.Service.Stop()
	for _, l := range held {
		waitLost(t, l, clientlib.ErrServiceRestarted)
	}
	t.Logf("%d locks known lost %v after Stop began", len(held), time.Since(stopping))

	startInstance(t, srv)
	for _, l := range held {
		got := tryLockNow(t, other, l.Name(), clientlib.WithSize(l.Size()))
		if got.Token() <= l.Token() {
			t.Errorf("%s: the new instance's token %d is not above the old one's %d", l.Name(), got.Token(), l.Token())
		}
		assertHeld(t, got) // and unlocked: the new instance stops before the clients close
	}
	// c works with the new instance too.
	assertHeld(t, mustLock(t, c, "after restart"))
}

// TestInstanceDiesSilently: an instance that vanishes without announcing
// it (its connection closed, as when the process is killed) leaves its
// clients believing they hold their locks until the next instance
// announces its start. Then the held locks are lost, and a Lock call that
// was waiting at the dead instance asks the new one.
func TestInstanceDiesSilently(t *testing.T) {
	srv := ldlmtest.Start(t)
	srv.Service.Stop() // make way for an instance whose connection the test owns
	c, _ := newClient(t, srv)
	waiter, _ := newClient(t, srv)

	dying, dyingConn := startInstance(t, srv)
	held := []*clientlib.Lock{
		mustLock(t, c, "queue"),
		mustLock(t, c, "timed", clientlib.WithLockTimeout(time.Minute)),
	}
	got := make(chan *clientlib.Lock, 1)
	go func() {
		l, err := waiter.Lock(testContext(t), "queue")
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	eventually(t, "the waiter is parked", func() bool {
		snap := dying.Engine().Snapshot()
		return len(snap) > 0 && snap[0].Name == "queue" && len(snap[0].Waiters) == 1
	})

	dyingConn.Close() // no announcement, no reply to the waiter
	// Nothing tells c yet: it still believes it holds its locks.
	for _, l := range held {
		if err := l.Err(); err != nil {
			t.Fatalf("%s lost before any instance said so: %v", l.Name(), err)
		}
	}

	starting := time.Now()
	startInstance(t, srv)
	for _, l := range held {
		waitLost(t, l, clientlib.ErrServiceRestarted)
	}
	t.Logf("%d locks known lost %v after the new instance began to start", len(held), time.Since(starting))
	select {
	case l := <-got:
		if l == nil || !l.Locked() {
			t.Fatal("the waiter did not get the lock from the new instance")
		}
		assertHeld(t, l)
	case <-time.After(testTimeout):
		t.Fatal("the waiter still waits at the dead instance")
	}
}

// TestLostNoticesAfterReconnect: after a reconnect the connection has a
// new owner identity, and the service's notices about locks taken under
// it still reach the client. With WithKeepOnDisconnect, locks taken before
// the reconnect keep their old owner at the service, and their notices
// still arrive too.
func TestLostNoticesAfterReconnect(t *testing.T) {
	tests := []struct {
		name   string
		keep   bool
		config service.Config
	}{
		{name: "default"},
		{name: "keep on disconnect", keep: true, config: service.Config{NoClearOnDisconnect: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ldlmtest.Start(t, ldlmtest.WithConfig(tt.config))
			nc := reconnecting(t, srv)
			c := clientOn(t, nc, clientlib.WithKeepOnDisconnect(tt.keep))
			operator := srv.Connect(t)

			before := mustLock(t, c, "before", clientlib.WithLockTimeout(time.Minute))
			subs := nc.NumSubscriptions()
			oldCID, _ := nc.GetClientID()
			srv.Kick(t, nc)
			waitReconnected(t, nc, 0)
			if cid, _ := nc.GetClientID(); cid == oldCID {
				t.Fatalf("the connection kept client id %d: the owner did not change", cid)
			}
			if !tt.keep {
				waitLost(t, before, clientlib.ErrConnectionLost)
			}

			after := mustLock(t, c, "after")
			forceUnlock(t, operator, "after", subjects.ForceUnlockRequest{})
			waitLost(t, after, clientlib.ErrForceReleased)
			if tt.keep {
				forceUnlock(t, operator, "before", subjects.ForceUnlockRequest{})
				waitLost(t, before, clientlib.ErrForceReleased)
				return
			}
			// One lost-notice subscription, the new owner's: the old one's
			// went with its locks.
			if n := nc.NumSubscriptions(); n != subs {
				t.Errorf("%d subscriptions after the reconnect, %d before", n, subs)
			}
		})
	}
}

// BenchmarkForceUnlockNotice measures how long a holder takes to learn
// that an operator released its lock: from sending the admin unlock until
// Done is closed (the admin round trip included).
func BenchmarkForceUnlockNotice(b *testing.B) {
	srv := ldlmtest.Start(b)
	c, _ := newClient(b, srv)
	operator := srv.Connect(b)
	subject := subjects.AdminSubject(subjects.DefaultPrefix, subjects.OpAdminUnlock, "bench")
	var total time.Duration
	for b.Loop() {
		l := mustLock(b, c, "bench")
		start := time.Now()
		if _, err := operator.Request(subject, nil, testTimeout); err != nil {
			b.Fatal(err)
		}
		waitClosed(b, "the holder hears of the force unlock", l.Done())
		total += time.Since(start)
		if !errors.Is(l.Err(), clientlib.ErrForceReleased) {
			b.Fatalf("Err() = %v", l.Err())
		}
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs/force-to-done")
}

// TestWaitSurvivesGracefulStop: a Lock call waiting when the service stops
// gracefully (it answers the waiter Unavailable) asks again while no
// service answers, and gets the lock from the instance started next.
// Before the client asked again, the waiter failed with Unavailable.
func TestWaitSurvivesGracefulStop(t *testing.T) {
	srv := ldlmtest.Start(t)
	holder, _ := newClient(t, srv)
	waiter, _ := newClient(t, srv, clientlib.WithRequestTimeout(testTimeout))

	held := mustLock(t, holder, "queue")
	got := make(chan *clientlib.Lock, 1)
	go func() {
		l, err := waiter.Lock(testContext(t), "queue")
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	eventually(t, "the waiter is parked", func() bool {
		snap := srv.Service.Engine().Snapshot()
		return len(snap) == 1 && len(snap[0].Waiters) == 1
	})
	srv.Service.Stop()
	waitLost(t, held, clientlib.ErrServiceRestarted)
	// Let the waiter meet the stopped service (no responders) a few times;
	// the test holds whatever this pause was.
	time.Sleep(50 * time.Millisecond)

	startInstance(t, srv)
	select {
	case l := <-got:
		if l == nil || !l.Locked() {
			t.Fatal("the waiter did not get the lock from the new instance")
		}
		assertHeld(t, l)
	case <-time.After(testTimeout):
		t.Fatal("the waiter was not granted after the restart")
	}
}

// TestRequestsRideOutRestart: TryLock, Unlock and Renew sent while no
// service answers ask again until one does, within the request timeout.
func TestRequestsRideOutRestart(t *testing.T) {
	srv := ldlmtest.Start(t)
	srv.Service.Stop() // make way for an instance the test starts
	c, nc := newClient(t, srv, clientlib.WithRequestTimeout(testTimeout))
	_, appConn := startInstance(t, srv)

	held := mustLock(t, c, "kept", clientlib.WithLockTimeout(time.Minute), clientlib.WithAutoRenew(false))
	appConn.Close() // the instance dies without a word: c still holds its lock
	// Until the NATS server has noticed the close, a request still goes to
	// the dead instance's subscription and is lost (a timeout, not a retry):
	// start the requests once nobody answers.
	eventually(t, "the dead instance's subscription is gone", func() bool {
		_, err := nc.Request("ldlm.admin.status", nil, time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})

	type result struct {
		op  string
		err error
	}
	results := make(chan result, 3)
	go func() {
		l, err := c.TryLock(testContext(t), "free")
		if err == nil {
			err = l.Unlock(testContext(t))
		}
		results <- result{"trylock", err}
	}()
	go func() { results <- result{"renew", held.Renew(testContext(t), time.Minute)} }()
	time.Sleep(50 * time.Millisecond) // let them meet no responders; the test holds whatever this was
	startInstance(t, srv)
	for range 2 {
		r := <-results
		switch r.op {
		case "trylock":
			if r.err != nil {
				t.Errorf("TryLock across the restart: %v", r.err)
			}
		case "renew":
			// The new instance knows nothing of the lock: a refused renewal,
			// or the loss already learned from its announcement.
			if !errors.Is(r.err, clientlib.ErrLockLost) {
				t.Errorf("Renew across the restart = %v, want the loss", r.err)
			}
		}
	}
}
