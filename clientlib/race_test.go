package clientlib_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
)

// assertNothingLeft fails the test unless the service holds no lock and
// parks no waiter at all.
func assertNothingLeft(t *testing.T, srv *ldlmtest.Server) {
	t.Helper()
	if snap := srv.Service.Engine().Snapshot(); len(snap) != 0 {
		t.Fatalf("left behind in the service: %+v", snap)
	}
}

// TestCancelLeavesNothingBehind cancels Lock calls at random moments while
// other calls hold and release the same lock, so that cancellations land
// before the request is sent, while it waits, and just as a grant is on its
// way. Whatever the moment, nothing may stay held or queued.
func TestCancelLeavesNothingBehind(t *testing.T) {
	srv := ldlmtest.Start(t)
	clients := []*clientlib.Client{}
	for range 3 {
		c, _ := newClient(t, srv)
		clients = append(clients, c)
	}
	const workers, rounds = 9, 80

	var cancelled, obtained, lateGrants atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		c := clients[w%len(clients)]
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for range rounds {
				// Half the calls end by deadline, half by cancel, at a
				// random moment within about the time of a handover.
				delay := time.Duration(rng.IntN(2000)) * time.Microsecond
				var ctx context.Context
				var cancel context.CancelFunc
				if rng.IntN(2) == 0 {
					ctx, cancel = context.WithTimeout(context.Background(), delay)
				} else {
					ctx, cancel = context.WithCancel(context.Background())
					time.AfterFunc(delay, cancel)
				}
				l, err := c.Lock(ctx, "contended")
				if err == nil && ctx.Err() != nil {
					lateGrants.Add(1) // granted as the context ended: ours to unlock
				}
				cancel()
				switch {
				case err != nil:
					if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("Lock: %v", err)
					}
					cancelled.Add(1)
				case l.Locked():
					obtained.Add(1)
					time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
					if err := l.Unlock(context.Background()); err != nil {
						t.Errorf("Unlock: %v", err)
					}
				default:
					t.Errorf("Lock returned a lock not obtained, without error: %v", l.Err())
				}
			}
		})
	}
	wg.Wait()

	// Poll: the check holds whenever it is made.
	eventually(t, "nothing is left in the service", func() bool { return len(srv.Service.Engine().Snapshot()) == 0 })
	if !isFree(t, clients[0], "contended") {
		t.Fatal("the lock is held after every caller released or gave up")
	}
	t.Logf("%d Lock calls cancelled while waiting or sending, %d obtained (%d of them as the context ended); nothing left behind",
		cancelled.Load(), obtained.Load(), lateGrants.Load())
	if cancelled.Load() == 0 {
		t.Error("no call was cancelled: the test tested nothing")
	}
}

// reconnecting connects to srv with quick reconnects, as long-lived services do.
func reconnecting(t *testing.T, srv *ldlmtest.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.ReconnectWait(10 * time.Millisecond), nats.MaxReconnects(-1)}, opts...)
	return srv.Connect(t, opts...)
}

// waitReconnected waits until nc has reconnected after Kick.
func waitReconnected(t *testing.T, nc *nats.Conn, before uint64) {
	t.Helper()
	eventually(t, "the connection is back", func() bool { return nc.Stats().Reconnects > before && nc.IsConnected() })
}

// TestConnectionLossLosesLocks: the service releases the locks of a
// connection that closes; the client marks them lost, and works again
// once reconnected. Handlers the application set on its connection still run.
func TestConnectionLossLosesLocks(t *testing.T) {
	srv := ldlmtest.Start(t)
	var appReconnects atomic.Int32
	nc := reconnecting(t, srv, nats.ReconnectHandler(func(*nats.Conn) { appReconnects.Add(1) }))
	c := clientOn(t, nc)
	other, _ := newClient(t, srv)

	plain := mustLock(t, c, "kicked")
	timed := mustLock(t, c, "kicked-timed", clientlib.WithLockTimeout(time.Minute))
	srv.Kick(t, nc)
	for _, l := range []*clientlib.Lock{plain, timed} {
		waitClosed(t, "the lock is known lost", l.Done())
		if err := l.Err(); !errors.Is(err, clientlib.ErrLockLost) || !errors.Is(err, clientlib.ErrConnectionLost) {
			t.Errorf("%s: Err() = %v, want ErrConnectionLost", l.Name(), err)
		}
	}
	eventually(t, "the service released the locks", func() bool {
		return isFree(t, other, "kicked") && isFree(t, other, "kicked-timed")
	})
	waitReconnected(t, nc, 0)
	eventually(t, "the application's reconnect handler ran", func() bool { return appReconnects.Load() > 0 })

	l := mustLock(t, c, "kicked")
	if isFree(t, other, "kicked") {
		t.Fatal("lock taken after the reconnect is not held")
	}
	if err := l.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if err := plain.Unlock(testContext(t)); !errors.Is(err, clientlib.ErrConnectionLost) {
		t.Errorf("Unlock of a lost lock = %v, want the loss", err)
	}
}

// TestWaitSurvivesReconnect: a Lock call waiting when its connection drops
// asks again over the new connection and gets the lock when it is freed.
func TestWaitSurvivesReconnect(t *testing.T) {
	srv := ldlmtest.Start(t)
	holder, _ := newClient(t, srv)
	nc := reconnecting(t, srv)
	c := clientOn(t, nc)

	held := mustLock(t, holder, "queue")
	got := make(chan *clientlib.Lock, 1)
	go func() {
		l, err := c.Lock(testContext(t), "queue")
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	waiters := func() int {
		snap := srv.Service.Engine().Snapshot()
		if len(snap) == 0 {
			return 0
		}
		return len(snap[0].Waiters)
	}
	eventually(t, "the request waits", func() bool { return waiters() == 1 })
	first := srv.Service.Engine().Snapshot()[0].Waiters[0].Key
	srv.Kick(t, nc) // a deliberate end: the wait is dropped, even with a session
	waitReconnected(t, nc, 0)
	eventually(t, "the request waits again, asked anew", func() bool {
		snap := srv.Service.Engine().Snapshot()
		return len(snap) == 1 && len(snap[0].Waiters) == 1 && snap[0].Waiters[0].Key != first
	})
	if err := held.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got:
		if !l.Locked() || l.Err() != nil {
			t.Fatalf("after the reconnect: locked %v, %v", l.Locked(), l.Err())
		}
		if err := l.Unlock(testContext(t)); err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the waiter was not granted")
	}
	assertNothingLeft(t, srv)
}

// TestKeepOnDisconnect: with a service that keeps locks across
// disconnects, a reconnect does not lose them.
func TestKeepOnDisconnect(t *testing.T) {
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{NoClearOnDisconnect: true}))
	nc := reconnecting(t, srv)
	c := clientOn(t, nc, clientlib.WithKeepOnDisconnect(true))
	other, _ := newClient(t, srv)

	l := mustLock(t, c, "kept", clientlib.WithLockTimeout(time.Minute))
	srv.Kick(t, nc)
	waitReconnected(t, nc, 0)
	if err := l.Err(); err != nil {
		t.Fatalf("lock lost on reconnect: %v", err)
	}
	if isFree(t, other, "kept") {
		t.Fatal("the service released the lock")
	}
	if err := l.Renew(testContext(t), time.Minute); err != nil {
		t.Fatalf("Renew after reconnect: %v", err)
	}
	if err := l.Unlock(testContext(t)); err != nil {
		t.Fatalf("Unlock after reconnect: %v", err)
	}
	assertNothingLeft(t, srv)
}

// TestHandoverLatency measures how long after Unlock a waiter is granted.
// It logs the figures and asserts nothing about them.
func TestHandoverLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	srv := ldlmtest.Start(t)
	a, _ := newClient(t, srv)
	b, _ := newClient(t, srv)
	const handovers = 200

	var lat []time.Duration
	held := mustLock(t, a, "baton")
	holder, waiter := a, b
	for range handovers {
		got := make(chan *clientlib.Lock, 1)
		go func() {
			l, err := waiter.Lock(testContext(t), "baton")
			if err != nil {
				t.Error(err)
			}
			got <- l
		}()
		eventually(t, "the waiter is queued", func() bool {
			snap := srv.Service.Engine().Snapshot()
			return len(snap) == 1 && len(snap[0].Waiters) == 1
		})
		start := time.Now()
		if err := held.Unlock(testContext(t)); err != nil {
			t.Fatal(err)
		}
		var l *clientlib.Lock
		select {
		case l = <-got:
		case <-time.After(testTimeout):
			t.Fatal("waiter not granted")
		}
		lat = append(lat, time.Since(start))
		if l == nil || !l.Locked() {
			t.Fatal("waiter not granted")
		}
		held, holder, waiter = l, waiter, holder
	}
	_ = holder
	slices.Sort(lat)
	t.Logf("Unlock to waiter granted, %d handovers between two connections: median %v, p90 %v, max %v",
		handovers, lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)-1])
}
