package clientlib_test

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
)

// clusterGrace is the reconnect grace of the tests' clusters: short, so
// that a test can wait it out.
const clusterGrace = time.Second

// startCluster starts a service on member 0 of a two-member cluster.
func startCluster(t *testing.T) *ldlmtest.Cluster {
	t.Helper()
	return ldlmtest.StartCluster(t, 2, ldlmtest.WithConfig(service.Config{ReconnectGrace: clusterGrace}))
}

// memberClient connects to member i of c, reconnecting (with nats.go's
// defaults otherwise) to the other members it learns from the cluster.
func memberClient(t *testing.T, c *ldlmtest.Cluster, i int, opts ...nats.Option) (*clientlib.Client, *nats.Conn) {
	t.Helper()
	nc, err := nats.Connect(c.Members[i].ClientURL(), append([]nats.Option{nats.MaxReconnects(-1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	eventually(t, "the client learnt the other members", func() bool { return len(nc.DiscoveredServers()) > 0 })
	return clientOn(t, nc), nc
}

// serviceReachable waits until a request from c reaches the service
// (interest crosses the cluster's routes after the service subscribed).
func serviceReachable(t *testing.T, c *clientlib.Client) {
	t.Helper()
	eventually(t, "the service answers", func() bool {
		l, err := c.TryLock(testContext(t), "probe")
		if err != nil {
			return false
		}
		_ = l.Unlock(testContext(t))
		return true
	})
}

// leave takes member i of c out: a shutdown, or lame duck mode (which
// closes its clients, then shuts the server down). It returns when the
// member is gone.
func leave(t *testing.T, c *ldlmtest.Cluster, i int, how string) {
	t.Helper()
	switch how {
	case "shutdown":
		c.Members[i].Shutdown()
	case "lame duck":
		c.Members[i].NATSServer().LameDuckShutdown()
		c.Members[i].NATSServer().WaitForShutdown()
	default:
		t.Fatalf("unknown way to leave %q", how)
	}
}

// pastGrace waits until the grace that a cut at cutAt started has ended,
// and no session is in grace any more.
func pastGrace(t *testing.T, c *ldlmtest.Cluster, cutAt time.Time) {
	t.Helper()
	eventually(t, "the grace has passed", func() bool {
		return time.Since(cutAt) > clusterGrace+100*time.Millisecond && c.Service.SessionsInGrace() == 0
	})
}

// A holder whose NATS server shuts down, or enters lame duck mode,
// reconnects to another member and keeps its lock past the grace: same
// key and token, Done not closed, renewable, and nobody else gets it.
// Five runs of each, as issue 13 asks.
func TestLockSurvivesServerLeaving(t *testing.T) {
	for _, how := range []string{"shutdown", "lame duck"} {
		for run := 1; run <= 5; run++ {
			t.Run(fmt.Sprintf("%s/%d", how, run), func(t *testing.T) {
				c := startCluster(t)
				holder, nc := memberClient(t, c, 1)
				other, _ := memberClient(t, c, 0)
				serviceReachable(t, holder)

				l := mustLock(t, holder, "job", clientlib.WithLockTimeout(10*time.Second))
				key, token, done := l.Key(), l.Token(), l.Done()
				before := nc.ConnectedServerId()
				cutAt := time.Now()
				leave(t, c, 1, how)
				eventually(t, "the holder reconnected to the other member", func() bool {
					return nc.IsConnected() && nc.ConnectedServerId() != before
				})
				pastGrace(t, c, cutAt)

				select {
				case <-done:
					t.Fatalf("Done closed: %v", l.Err())
				default:
				}
				if !l.Locked() || l.Key() != key || l.Token() != token {
					t.Fatalf("after the reconnect: locked %v, key %q, token %d; want %q, %d", l.Locked(), l.Key(), l.Token(), key, token)
				}
				if err := l.Renew(testContext(t), 10*time.Second); err != nil {
					t.Fatalf("Renew after the reconnect: %v", err)
				}
				if isFree(t, other, "job") {
					t.Fatal("another client got the lock")
				}
				if err := l.Unlock(testContext(t)); err != nil {
					t.Fatal(err)
				}
				if !isFree(t, other, "job") {
					t.Fatal("the lock is not free after Unlock")
				}
			})
		}
	}
}

// A holder that closes its connection (as when its process dies: the
// server sees the socket close, "Client Closed") frees its locks at once,
// though the grace is an hour.
func TestClosedConnectionFreesSessionLocksAtOnce(t *testing.T) {
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{ReconnectGrace: time.Hour}))
	holder, nc := newClient(t, srv)
	other, _ := newClient(t, srv)
	mustLock(t, holder, "job")
	wait := make(chan *clientlib.Lock, 1)
	go func() {
		l, err := other.Lock(testContext(t), "job")
		if err != nil {
			t.Error(err)
		}
		wait <- l
	}()
	eventually(t, "the other client waits", func() bool {
		snap := srv.Service.Engine().Snapshot()
		return len(snap) == 1 && len(snap[0].Waiters) == 1
	})
	nc.Close()
	select {
	case l := <-wait:
		if !l.Locked() {
			t.Fatalf("the waiter: %v", l.Err())
		}
	case <-time.After(testTimeout):
		t.Fatal("the closed connection's lock was not freed")
	}
}

// A holder that is gone for good when its server shuts down (it never
// reconnects) keeps its lock only for the grace: then a waiter gets it.
func TestGoneHolderFreedAfterGrace(t *testing.T) {
	c := startCluster(t)
	holder, _ := memberClient(t, c, 1, nats.NoReconnect())
	waiter, _ := memberClient(t, c, 0)
	serviceReachable(t, holder)
	mustLock(t, holder, "job")
	got := make(chan time.Time, 1)
	go func() {
		l, err := waiter.Lock(testContext(t), "job")
		if err != nil || !l.Locked() {
			t.Errorf("the waiter: %v, %v", l, err)
		}
		got <- time.Now()
	}()
	eventually(t, "the waiter waits", func() bool {
		snap := c.Service.Engine().Snapshot()
		return len(snap) == 1 && len(snap[0].Waiters) == 1
	})
	cutAt := time.Now()
	leave(t, c, 1, "shutdown")
	select {
	case at := <-got:
		t.Logf("the waiter got the lock %v after the holder's server shut down (grace %v)", at.Sub(cutAt).Round(time.Millisecond), clusterGrace)
	case <-time.After(testTimeout):
		t.Fatal("the gone holder's lock was not freed")
	}
}

// A Lock call waiting while its server shuts down keeps its place in the
// queue: after the reconnect it is granted before a waiter that came
// after it.
func TestWaiterKeepsItsPlaceAcrossReconnect(t *testing.T) {
	c := startCluster(t)
	first, nc := memberClient(t, c, 1)
	second, _ := memberClient(t, c, 0)
	holder, _ := memberClient(t, c, 0)
	serviceReachable(t, first)
	held := mustLock(t, holder, "queue")
	waiters := func() int {
		snap := c.Service.Engine().Snapshot()
		if len(snap) == 0 {
			return 0
		}
		return len(snap[0].Waiters)
	}
	type result struct {
		who string
		l   *clientlib.Lock
	}
	got := make(chan result, 2)
	wait := func(who string, c *clientlib.Client) {
		l, err := c.Lock(testContext(t), "queue")
		if err != nil {
			t.Error(err)
		}
		got <- result{who, l}
	}
	go wait("first", first)
	eventually(t, "the first waits", func() bool { return waiters() == 1 })
	firstKey := c.Service.Engine().Snapshot()[0].Waiters[0].Key
	go wait("second", second)
	eventually(t, "the second waits", func() bool { return waiters() == 2 })

	before := nc.ConnectedServerId()
	cutAt := time.Now()
	leave(t, c, 1, "shutdown")
	eventually(t, "the first waiter reconnected", func() bool { return nc.IsConnected() && nc.ConnectedServerId() != before })
	pastGrace(t, c, cutAt)
	if snap := c.Service.Engine().Snapshot(); len(snap[0].Waiters) != 2 || snap[0].Waiters[0].Key != firstKey {
		t.Fatalf("the queue after the reconnect: %+v; want the first waiter's request still first", snap[0].Waiters)
	}
	if err := held.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.who != "first" || !r.l.Locked() {
		t.Fatalf("%s was granted first (locked %v); want first", r.who, r.l.Locked())
	}
	if err := r.l.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.who != "second" || !r.l.Locked() {
		t.Fatalf("then %s (locked %v); want second", r.who, r.l.Locked())
	}
}

// Without sessions a lock belongs to the connection, as before: the
// server's shutdown loses it.
func TestWithoutSessionsReconnectLosesLocks(t *testing.T) {
	c := startCluster(t)
	nc, err := nats.Connect(c.Members[1].ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	holder := clientOn(t, nc, clientlib.WithSessions(false))
	serviceReachable(t, holder)
	l := mustLock(t, holder, "job")
	leave(t, c, 1, "shutdown")
	waitClosed(t, "the lock is lost", l.Done())
	if err := l.Err(); !errors.Is(err, clientlib.ErrConnectionLost) {
		t.Fatalf("Err() = %v, want ErrConnectionLost", err)
	}
}

// gatedDialer dials only while its gate is open: a test holds a client's
// reconnect back with it.
type gatedDialer struct {
	mu   sync.Mutex
	open chan struct{} // closed while dials may go on
	d    net.Dialer
}

func (g *gatedDialer) Dial(network, address string) (net.Conn, error) {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	<-open
	return g.d.Dial(network, address)
}

// shut holds later dials back until the returned func opens the gate.
func (g *gatedDialer) shut() (reopen func()) {
	ch := make(chan struct{})
	g.mu.Lock()
	g.open = ch
	g.mu.Unlock()
	return func() { close(ch) }
}

// A holder that comes back after the grace finds its lock released: the
// attach does not list it, and the lock ends with ErrConnectionLost; the
// client takes a new session, with which it locks again.
func TestLockReleasedWhileReconnectingIsLost(t *testing.T) {
	c := startCluster(t)
	gate := &gatedDialer{}
	gate.shut()() // open at first
	nc, err := nats.Connect(c.URLs(1)+","+c.Members[0].ClientURL(), nats.MaxReconnects(-1), nats.DontRandomize(), nats.SetCustomDialer(gate))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if c.MemberOf(nc) != c.Members[1] {
		t.Fatal("the holder is not on member 1")
	}
	holder := clientOn(t, nc)
	other, _ := memberClient(t, c, 0)
	serviceReachable(t, holder)
	l := mustLock(t, holder, "job")

	reopen := gate.shut() // hold the reconnect back
	leave(t, c, 1, "shutdown")
	eventually(t, "the grace ended and the lock is free", func() bool {
		return c.Service.SessionsInGrace() == 0 && isFree(t, other, "job")
	})
	select {
	case <-l.Done():
		t.Fatalf("the lock ended before the client could know: %v", l.Err())
	default:
	}
	reopen()
	waitClosed(t, "the lock is known lost after the reconnect", l.Done())
	if err := l.Err(); !errors.Is(err, clientlib.ErrLockLost) || !errors.Is(err, clientlib.ErrConnectionLost) {
		t.Fatalf("Err() = %v, want a loss caused by ErrConnectionLost", err)
	}
	again := mustLock(t, holder, "job")
	if isFree(t, other, "job") {
		t.Fatal("the lock taken after the reconnect is not held")
	}
	if err := again.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
}

// The single binary with a data folder: the service and its NATS server
// stop and start again on the same folder and address. The holder's
// connection reconnects by itself, its session attaches within the grace,
// and it keeps its lock (same key and token, Done open, Renew works); a
// waiter is still waiting and gets the lock when the holder unlocks.
func TestLockSurvivesDurableRestart(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	start := func() *ldlmtest.Server {
		s, err := ldlmtest.StartServer(ldlmtest.WithDataDir(dir), ldlmtest.WithListen(addr))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s1 := start()
	connect := func() (*clientlib.Client, *nats.Conn) {
		nc, err := nats.Connect("nats://"+addr, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.ReconnectJitter(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return clientOn(t, nc), nc
	}
	holder, nc := connect()
	waiter, _ := connect()
	other, _ := connect()

	lock := mustLock(t, holder, "job", clientlib.WithLockTimeout(30*time.Second))
	key, token, done := lock.Key(), lock.Token(), lock.Done()
	waited := make(chan *clientlib.Lock, 1)
	go func() {
		l, err := waiter.Lock(testContext(t), "job")
		if err != nil {
			t.Errorf("the waiter's Lock: %v", err)
		}
		waited <- l
	}()
	eventually(t, "the waiter is parked", func() bool { return s1.Service.Engine().Stats().Waiters == 1 })

	s1.Close()
	s2 := start()
	defer s2.Close()
	eventually(t, "the holder reconnected", nc.IsConnected)
	eventually(t, "the holder's session attached", func() bool { return s2.Service.SessionsInGrace() == 0 })

	select {
	case <-done:
		t.Fatalf("Done closed: %v", lock.Err())
	default:
	}
	if !lock.Locked() || lock.Key() != key || lock.Token() != token {
		t.Fatalf("after the restart: locked %v, key %q, token %d; want %q, %d", lock.Locked(), lock.Key(), lock.Token(), key, token)
	}
	if err := lock.Renew(testContext(t), 30*time.Second); err != nil {
		t.Fatalf("Renew after the restart: %v", err)
	}
	if isFree(t, other, "job") {
		t.Fatal("another client got the lock")
	}
	if err := lock.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-waited:
		if !l.Locked() || l.Token() <= token {
			t.Fatalf("the waiter's lock: locked %v, token %d (the holder's was %d)", l.Locked(), l.Token(), token)
		}
		if err := l.Unlock(testContext(t)); err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the waiter did not get the lock after the holder unlocked")
	}
}
