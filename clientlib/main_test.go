package clientlib_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// exampleServer starts an LDLM server (an embedded NATS server with the lock
// service) for one example, and returns its URL and a function that stops
// it. Your own server runs elsewhere: connect to its URL instead.
func exampleServer() (url string, stop func()) {
	srv, err := ldlmtest.StartServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the example server:", err)
		os.Exit(1)
	}
	return srv.URL(), srv.Close
}

// testTimeout bounds every wait of the tests. It is generous because the
// machine may be loaded: no test asserts on how fast anything is.
const testTimeout = 30 * time.Second

// testContext is a context bounded by testTimeout and the test's end.
func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newClient connects to srv and returns a client, closed when the test ends.
func newClient(t testing.TB, srv *ldlmtest.Server, opts ...clientlib.Option) (*clientlib.Client, *nats.Conn) {
	t.Helper()
	nc := srv.Connect(t)
	return clientOn(t, nc, opts...), nc
}

// clientOn returns a client on nc, closed when the test ends.
func clientOn(t testing.TB, nc *nats.Conn, opts ...clientlib.Option) *clientlib.Client {
	t.Helper()
	c, err := clientlib.New(nc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("closing the client: %v", err)
		}
	})
	return c
}

// eventually polls cond until it holds, or fails the test after testTimeout.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitClosed waits for ch to be closed, or fails the test after testTimeout.
func waitClosed(t testing.TB, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting until %s", what)
	}
}

// mustLock locks name and fails the test unless it was obtained.
func mustLock(t testing.TB, c *clientlib.Client, name string, opts ...clientlib.LockOption) *clientlib.Lock {
	t.Helper()
	l, err := c.Lock(testContext(t), name, opts...)
	if err != nil {
		t.Fatalf("Lock(%q): %v", name, err)
	}
	if !l.Locked() {
		t.Fatalf("Lock(%q): not obtained: %v", name, l.Err())
	}
	return l
}

// isFree reports whether a TryLock of name by c succeeds now; it unlocks
// what it got.
func isFree(t testing.TB, c *clientlib.Client, name string, opts ...clientlib.LockOption) bool {
	t.Helper()
	l, err := c.TryLock(testContext(t), name, opts...)
	if err != nil {
		t.Fatalf("TryLock(%q): %v", name, err)
	}
	if !l.Locked() {
		return false
	}
	if err := l.Unlock(testContext(t)); err != nil {
		t.Fatalf("Unlock(%q): %v", name, err)
	}
	return true
}

// ownerOf is the Ldlm-Owner value that the client sends over nc.
func ownerOf(t testing.TB, nc *nats.Conn) string {
	t.Helper()
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	return subjects.FormatOwner(nc.ConnectedServerId(), cid)
}
