package clientlib

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// The tests of what the client asks until a service answers: the attach
// after a reconnect, and the unlocks that got no answer. They stop a
// durable service (its locks stay in the state stream) and start another
// on the same NATS server, which restores them: the way a takeover looks
// to a client, which must not lose what the service kept.

// waitTimeout bounds every wait of these tests; the machine may be loaded.
const waitTimeout = 30 * time.Second

// shortRequests is the request timeout of the clients under test: the
// service is away for several of them.
const shortRequests = 200 * time.Millisecond

func bounded(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// waitUntil polls cond until it holds, or fails the test after waitTimeout.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// durableConfig keeps the locks in the state stream, and a session's for
// an hour after its connection is cut: in these tests nothing is released
// unless the client asks.
var durableConfig = service.Config{State: service.StateJetStream, ReconnectGrace: time.Hour}

// startDurable starts a server whose service keeps its locks in JetStream.
func startDurable(t *testing.T) *ldlmtest.Server {
	t.Helper()
	return ldlmtest.Start(t, ldlmtest.WithDataDir(t.TempDir()), ldlmtest.WithConfig(durableConfig))
}

// stopService stops srv's service (its locks stay in the stream) and waits
// until no service answers.
func stopService(t *testing.T, srv *ldlmtest.Server, nc *nats.Conn) {
	t.Helper()
	srv.Service.Stop()
	waitUntil(t, "no service answers", func() bool {
		_, err := nc.Request("ldlm.admin.status", nil, time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})
}

// startService starts a new service on srv's NATS server, which restores
// the locks of the stopped one; it stops when the test ends.
func startService(t *testing.T, srv *ldlmtest.Server) {
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
	s, err := service.Start(durableConfig, app, sys, nil)
	if err != nil {
		app.Close()
		sys.Close()
		t.Fatalf("starting the service again: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		app.Close()
		sys.Close()
	})
}

// testClient returns a client on nc, closed when the test ends.
func testClient(t *testing.T, nc *nats.Conn, opts ...Option) *Client {
	t.Helper()
	c, err := New(nc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// free reports whether c gets name now; it unlocks what it got.
func free(t *testing.T, c *Client, name string) bool {
	t.Helper()
	l, err := c.TryLock(bounded(t), name)
	if err != nil {
		t.Logf("TryLock(%q): %v", name, err)
		return false
	}
	if !l.Locked() {
		return false
	}
	if err := l.Unlock(bounded(t)); err != nil {
		t.Fatalf("Unlock(%q): %v", name, err)
	}
	return true
}

// kickAndReconnect cuts nc from the server side and waits until it is back.
func kickAndReconnect(t *testing.T, srv *ldlmtest.Server, nc *nats.Conn) {
	t.Helper()
	before := nc.Stats().Reconnects
	srv.Kick(t, nc)
	waitUntil(t, "the connection is back", func() bool { return nc.Stats().Reconnects > before && nc.IsConnected() })
}

func (c *Client) attachSettled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur != nil && c.attached == c.cur
}

func (c *Client) pendingReleases() []unconfirmedRelease {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]unconfirmedRelease(nil), c.releases...)
}

// A holder whose service is away, after a reconnect, for several request
// timeouts (within the attach budget) keeps its lock: it asks for the
// attach until the service is back, which kept the lock.
func TestAttachOutlastsRequestTimeout(t *testing.T) {
	srv := startDurable(t)
	nc := srv.Connect(t, nats.ReconnectWait(10*time.Millisecond), nats.MaxReconnects(-1))
	c := testClient(t, nc, WithRequestTimeout(shortRequests))
	other := testClient(t, srv.Connect(t))
	l, err := c.Lock(bounded(t), "job")
	if err != nil || !l.Locked() {
		t.Fatalf("Lock: %v, %v", l, err)
	}
	done := l.Done()

	stopService(t, srv, nc)
	kickAndReconnect(t, srv, nc)
	time.Sleep(5 * shortRequests) // the scenario: the attach goes unanswered this long
	select {
	case <-done:
		t.Fatalf("the lock ended while no service answered the attach: %v", l.Err())
	default:
	}
	if c.attachSettled() {
		t.Fatal("the attach settled while no service answered")
	}

	startService(t, srv)
	waitUntil(t, "the client re-attached", c.attachSettled)
	if !l.Locked() {
		t.Fatalf("the lock was lost: %v", l.Err())
	}
	if free(t, other, "job") {
		t.Fatal("another client got the lock")
	}
	if err := l.Unlock(bounded(t)); err != nil {
		t.Fatalf("Unlock after the re-attach: %v", err)
	}
	if !free(t, other, "job") {
		t.Fatal("the lock is not free after Unlock")
	}
}

// An unlock that no service answers returns the error, and the client
// sends it again in the background until a service answers: the lock is
// freed then, though the session keeps its locks for an hour.
func TestUnansweredUnlockIsRetried(t *testing.T) {
	srv := startDurable(t)
	nc := srv.Connect(t)
	c := testClient(t, nc, WithRequestTimeout(shortRequests))
	other := testClient(t, srv.Connect(t))
	l, err := c.Lock(bounded(t), "job")
	if err != nil || !l.Locked() {
		t.Fatalf("Lock: %v, %v", l, err)
	}

	stopService(t, srv, nc)
	if err := l.Unlock(bounded(t)); !errors.Is(err, ErrNoService) {
		t.Fatalf("Unlock while no service answers = %v, want ErrNoService", err)
	}
	if l.Locked() {
		t.Fatal("the lock is still held in the client after Unlock")
	}
	if got := c.pendingReleases(); len(got) != 1 || got[0].key != l.Key() || got[0].name != "job" {
		t.Fatalf("releases pending: %+v, want the lock's key", got)
	}

	startService(t, srv)
	waitUntil(t, "the lock is released in the background", func() bool { return free(t, other, "job") })
	waitUntil(t, "no release is pending", func() bool { return len(c.pendingReleases()) == 0 })
}

// After a re-attach, a grant of the session that the client does not know
// (its unlock went unanswered with the old connection, say) is released.
func TestAttachReleasesStrangers(t *testing.T) {
	srv := startDurable(t)
	nc := srv.Connect(t, nats.ReconnectWait(10*time.Millisecond), nats.MaxReconnects(-1))
	c := testClient(t, nc, WithRequestTimeout(shortRequests))
	other := testClient(t, srv.Connect(t))
	// A grant of the session, sent behind the client's back.
	reply, err := nc.RequestMsg(&nats.Msg{Subject: subjects.Subject("ldlm", subjects.OpTryLock, "stray"),
		Header: c.header(), Data: []byte(`{"key":"` + newKey() + `"}`)}, waitTimeout)
	if err != nil || !strings.Contains(string(reply.Data), `"locked":true`) {
		t.Fatalf("trylock of the session: %v, %v", reply, err)
	}
	held, err := c.Lock(bounded(t), "known")
	if err != nil || !held.Locked() {
		t.Fatalf("Lock: %v, %v", held, err)
	}

	stopService(t, srv, nc)
	kickAndReconnect(t, srv, nc)
	startService(t, srv)
	waitUntil(t, "the stray grant is released", func() bool { return free(t, other, "stray") })
	if !held.Locked() || free(t, other, "known") {
		t.Fatalf("the lock the client knows was not kept: %v", held.Err())
	}
}

// A grant whose lock timeout passed, by the client's count, before the
// reply arrived is given back at once, and reported as an expiry. A
// stand-in service on a real NATS server makes the grant late.
func TestGrantExpiredOnArrival(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	var unlocks atomic.Int32
	if _, err := nc.Subscribe("late.>", func(m *nats.Msg) {
		switch strings.Split(m.Subject, ".")[1] {
		case subjects.OpUnlock:
			unlocks.Add(1)
			_ = m.Respond([]byte(`{"unlocked":true,"name":"job"}`))
		default:
			time.Sleep(20 * time.Millisecond) // longer than the lock timeout
			_ = m.Respond([]byte(`{"locked":true,"name":"job","key":"k","token":3,"size":1,"instance":"I1"}`))
		}
	}); err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{subjects.OpLock, subjects.OpTryLock} {
		t.Run(op, func(t *testing.T) {
			c := testClient(t, nc, WithPrefix("late"))
			unlocks.Store(0)
			lock := c.Lock
			if op == subjects.OpTryLock {
				lock = c.TryLock
			}
			l, err := lock(bounded(t), "job", WithLockTimeout(time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			if l.Locked() || !errors.Is(l.Err(), ErrExpired) || !errors.Is(l.Err(), ErrLockLost) {
				t.Fatalf("locked %v, Err %v; want the expiry", l.Locked(), l.Err())
			}
			if n := unlocks.Load(); n != 1 {
				t.Fatalf("%d unlocks sent, want 1 to give the grant back", n)
			}
		})
	}
}

// TestReleaseUnconfirmed: which results of an unlock leave the key to the
// releaser: those where no service answered, not the service's verdicts.
func TestReleaseUnconfirmed(t *testing.T) {
	deadline, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	<-deadline.Done()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"unlocked", nil, false},
		{"no responders", wrap(subjects.OpUnlock, "job", fmt.Errorf("%w (%w)", ErrNoService, nats.ErrNoResponders)), true},
		{"stopping", &Error{Op: subjects.OpUnlock, Name: "job", Code: subjects.CodeUnavailable}, true},
		{"request timeout", fmt.Errorf("%w (%w)", errNoReply, nats.ErrTimeout), true},
		{"caller's deadline", deadline.Err(), true},
		{"reconnect buffer full", nats.ErrReconnectBufExceeded, true},
		{"unknown key", &Error{Op: subjects.OpUnlock, Name: "job", Code: subjects.CodeInvalidLockKey}, false},
		{"unreadable reply", unreadable([]byte("x"), errors.New("bad")), false},
		{"connection closed", nats.ErrConnectionClosed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := releaseUnconfirmed(tc.err); got != tc.want {
				t.Errorf("releaseUnconfirmed(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestReleasesBounded: the releases pending keep the newest maxReleases
// keys, each once.
func TestReleasesBounded(t *testing.T) {
	c := &Client{releaseWake: make(chan struct{}, 1)}
	c.addReleaseLocked("job", "k0")
	c.addReleaseLocked("job", "k0")
	if len(c.releases) != 1 {
		t.Fatalf("a key added twice is pending %d times", len(c.releases))
	}
	for i := 1; i <= maxReleases; i++ {
		c.addReleaseLocked("job", fmt.Sprint("k", i))
	}
	if len(c.releases) != maxReleases || c.releases[0].key != "k1" || c.releases[maxReleases-1].key != fmt.Sprint("k", maxReleases) {
		t.Fatalf("%d pending, first %q, last %q; want %d, k1 .. k%d",
			len(c.releases), c.releases[0].key, c.releases[len(c.releases)-1].key, maxReleases, maxReleases)
	}
}
