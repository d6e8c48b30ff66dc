package clientlib_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

func TestLockAndUnlock(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	other, _ := newClient(t, srv)
	ctx := testContext(t)

	l := mustLock(t, c, "job")
	if l.Name() != "job" {
		t.Errorf("Name() = %q", l.Name())
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(l.Key()) {
		t.Errorf("Key() = %q, want 128 bits of hex", l.Key())
	}
	if l.Token() == 0 || l.Size() != 1 {
		t.Errorf("Token() = %d, Size() = %d", l.Token(), l.Size())
	}
	if err := l.Err(); err != nil {
		t.Errorf("Err() while held = %v", err)
	}
	select {
	case <-l.Done():
		t.Fatal("Done closed while held")
	default:
	}
	if isFree(t, other, "job") {
		t.Fatal("another client got the held lock")
	}

	if err := l.Unlock(ctx); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	waitClosed(t, "Done is closed after Unlock", l.Done())
	if !errors.Is(l.Err(), clientlib.ErrUnlocked) {
		t.Errorf("Err() after Unlock = %v, want ErrUnlocked", l.Err())
	}
	if l.Locked() {
		t.Error("Locked() is true after Unlock; it tells whether the lock is held")
	}
	if err := l.Unlock(ctx); !errors.Is(err, clientlib.ErrUnlocked) {
		t.Errorf("second Unlock = %v, want ErrUnlocked", err)
	}
	if err := l.Renew(ctx, time.Minute); !errors.Is(err, clientlib.ErrUnlocked) {
		t.Errorf("Renew after Unlock = %v, want ErrUnlocked", err)
	}
	if !isFree(t, other, "job") {
		t.Fatal("the lock is still held after Unlock")
	}

	l2 := mustLock(t, c, "job")
	if l2.Token() <= l.Token() {
		t.Errorf("later grant has token %d, not above %d", l2.Token(), l.Token())
	}
}

func TestTryLockOnHeldLock(t *testing.T) {
	srv := ldlmtest.Start(t)
	a, _ := newClient(t, srv)
	b, _ := newClient(t, srv)
	ctx := testContext(t)

	held := mustLock(t, a, "task")
	l, err := b.TryLock(ctx, "task")
	if err != nil {
		t.Fatalf("TryLock: %v", err)
	}
	if l.Locked() {
		t.Fatal("TryLock obtained a held lock")
	}
	if !errors.Is(l.Err(), clientlib.ErrNotObtained) {
		t.Errorf("Err() = %v, want ErrNotObtained", l.Err())
	}
	waitClosed(t, "Done of a lock not obtained is closed", l.Done())
	if l.Key() != "" || l.Token() != 0 {
		t.Errorf("a lock not obtained has key %q and token %d", l.Key(), l.Token())
	}
	if err := l.Unlock(ctx); !errors.Is(err, clientlib.ErrNotObtained) {
		t.Errorf("Unlock of a lock not obtained = %v, want ErrNotObtained", err)
	}

	if err := held.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	l, err = b.TryLock(ctx, "task")
	if err != nil || !l.Locked() {
		t.Fatalf("TryLock of a free lock: %v, %v", l.Locked(), err)
	}
}

func TestWaitTimeout(t *testing.T) {
	srv := ldlmtest.Start(t)
	a, _ := newClient(t, srv)
	b, _ := newClient(t, srv)

	mustLock(t, a, "busy")
	l, err := b.Lock(testContext(t), "busy", clientlib.WithWaitTimeout(50*time.Millisecond))
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	if l.Locked() {
		t.Fatal("obtained a held lock")
	}
	if !errors.Is(l.Err(), clientlib.ErrLockWaitTimeout) || !errors.Is(l.Err(), clientlib.ErrNotObtained) {
		t.Errorf("Err() = %v, want ErrLockWaitTimeout and ErrNotObtained", l.Err())
	}

	err = b.WithLock(testContext(t), "busy", func(context.Context) error {
		t.Error("fn ran without the lock")
		return nil
	}, clientlib.WithWaitTimeout(50*time.Millisecond))
	if !errors.Is(err, clientlib.ErrNotObtained) || !errors.Is(err, clientlib.ErrLockWaitTimeout) {
		t.Errorf("WithLock = %v, want ErrNotObtained and ErrLockWaitTimeout", err)
	}
}

func TestWaiterIsGrantedOnUnlock(t *testing.T) {
	srv := ldlmtest.Start(t)
	a, _ := newClient(t, srv)
	b, _ := newClient(t, srv)

	held := mustLock(t, a, "handover")
	got := make(chan *clientlib.Lock, 1)
	go func() {
		l, err := b.Lock(context.Background(), "handover") // no deadline: waits as long as it takes
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	// The waiter must not be granted while the lock is held. Give it a
	// moment to be parked; the check holds whatever the moment was.
	time.Sleep(20 * time.Millisecond)
	select {
	case <-got:
		t.Fatal("waiter granted while the lock is held")
	default:
	}
	if err := held.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got:
		if !l.Locked() || l.Token() <= held.Token() {
			t.Fatalf("waiter: locked %v, token %d after %d", l.Locked(), l.Token(), held.Token())
		}
	case <-time.After(testTimeout):
		t.Fatal("waiter not granted after Unlock")
	}
}

func TestSizeAndMismatch(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	ctx := testContext(t)

	var ls []*clientlib.Lock
	for range 3 {
		ls = append(ls, mustLock(t, c, "slots", clientlib.WithSize(3)))
	}
	if ls[0].Size() != 3 {
		t.Errorf("Size() = %d", ls[0].Size())
	}
	if isFree(t, c, "slots", clientlib.WithSize(3)) {
		t.Fatal("a fourth holder got a lock of size 3")
	}
	_, err := c.TryLock(ctx, "slots", clientlib.WithSize(2))
	if !errors.Is(err, clientlib.ErrLockSizeMismatch) {
		t.Fatalf("TryLock with another size = %v, want ErrLockSizeMismatch", err)
	}
	var e *clientlib.Error
	if !errors.As(err, &e) || e.Code != subjects.CodeLockSizeMismatch || e.Op != subjects.OpTryLock || e.Name != "slots" {
		t.Errorf("error %#v does not carry the code, operation and name", e)
	}
	if errors.Is(err, clientlib.ErrInvalidLockSize) {
		t.Error("a size mismatch also matches ErrInvalidLockSize")
	}
	for _, l := range ls {
		if err := l.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestServiceErrors(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	ctx := testContext(t)

	if _, err := c.Lock(ctx, ""); !errors.Is(err, clientlib.ErrInvalidLockName) {
		t.Errorf("empty name: %v, want ErrInvalidLockName", err)
	}
	if _, err := c.Lock(ctx, strings.Repeat("n", subjects.DefaultMaxNameLength+1)); !errors.Is(err, clientlib.ErrInvalidLockName) {
		t.Errorf("long name: %v, want ErrInvalidLockName", err)
	}
	if _, err := c.Lock(ctx, "x", clientlib.WithSize(-1)); !errors.Is(err, clientlib.ErrInvalidLockSize) {
		t.Errorf("size -1: %v, want ErrInvalidLockSize", err)
	}
	if _, err := c.Lock(ctx, "x", clientlib.WithLockTimeout(-time.Second)); !errors.Is(err, clientlib.ErrInvalidTimeout) {
		t.Errorf("negative lock timeout: %v, want ErrInvalidTimeout", err)
	}
	if _, err := c.TryLock(ctx, "x", clientlib.WithWaitTimeout(time.Second)); !errors.Is(err, clientlib.ErrBadRequest) {
		t.Errorf("TryLock with a wait timeout: %v, want ErrBadRequest", err)
	}
	l := mustLock(t, c, "x")
	if err := l.Renew(ctx, -time.Second); !errors.Is(err, clientlib.ErrInvalidTimeout) {
		t.Errorf("Renew with a negative timeout: %v, want ErrInvalidTimeout", err)
	}
	if err := l.Err(); err != nil {
		t.Errorf("a refused renewal timeout made the lock end: %v", err)
	}
	if err := l.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestNoService(t *testing.T) {
	srv := ldlmtest.Start(t)
	// With neither a wait timeout nor a deadline on ctx, the request
	// timeout bounds how long Lock asks again while nobody answers.
	c, _ := newClient(t, srv, clientlib.WithPrefix("nobody"), clientlib.WithRequestTimeout(200*time.Millisecond))
	_, err := c.Lock(context.Background(), "job")
	if !errors.Is(err, clientlib.ErrNoService) || !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("Lock with no service = %v, want ErrNoService and nats.ErrNoResponders", err)
	}
	if !strings.Contains(err.Error(), "service running") || !strings.Contains(err.Error(), "nobody.lock.job") {
		t.Errorf("error %q does not say what to check", err)
	}
	t.Log(err)
}

// TestServiceStartsWhileAsked: Lock and TryLock sent before any service
// answers their prefix (a script that starts together with ldlm) get
// their answer from a real service that starts within the caller's
// budget, after the requests have gone unanswered for longer than the
// client's request timeout where the budget is a wait timeout or ctx's
// deadline.
func TestServiceStartsWhileAsked(t *testing.T) {
	const requestTimeout = 100 * time.Millisecond
	tests := []struct {
		name           string
		requestTimeout time.Duration
		call           func(ctx context.Context, c *clientlib.Client, name string) (*clientlib.Lock, error)
	}{
		{"Lock with a wait timeout", requestTimeout, func(ctx context.Context, c *clientlib.Client, name string) (*clientlib.Lock, error) {
			return c.Lock(ctx, name, clientlib.WithWaitTimeout(time.Minute))
		}},
		{"Lock with a deadline on ctx", requestTimeout, func(ctx context.Context, c *clientlib.Client, name string) (*clientlib.Lock, error) {
			return c.Lock(ctx, name)
		}},
		{"TryLock within the request timeout", time.Minute, func(ctx context.Context, c *clientlib.Client, name string) (*clientlib.Lock, error) {
			return c.TryLock(ctx, name)
		}},
	}
	srv := ldlmtest.Start(t)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("late%d", i)
			c, _ := newClient(t, srv, clientlib.WithPrefix(prefix), clientlib.WithRequestTimeout(tc.requestTimeout))
			type result struct {
				l   *clientlib.Lock
				err error
			}
			done := make(chan result, 1)
			go func() {
				l, err := tc.call(testContext(t), c, "job")
				done <- result{l, err}
			}()
			// Unanswered for three request timeouts first: not asserted
			// (nothing shows a no-responders reply to another connection),
			// it only makes the case likelier.
			time.Sleep(3 * requestTimeout)
			app, sys := srv.ServiceConns()
			svc, err := service.Start(service.Config{Prefix: prefix}, app, sys, nil)
			if err != nil {
				t.Fatalf("starting the service on %s: %v", prefix, err)
			}
			defer svc.Stop()
			select {
			case r := <-done:
				if r.err != nil || !r.l.Locked() {
					t.Fatalf("got %v, %v; want the lock from the service that started", r.l, r.err)
				}
				if err := r.l.Unlock(testContext(t)); err != nil {
					t.Fatal(err)
				}
			case <-time.After(testTimeout):
				t.Fatalf("no answer %s after the service started", testTimeout)
			}
		})
	}
}

func TestNamesThatAreNotSubjects(t *testing.T) {
	srv := ldlmtest.Start(t)
	a, _ := newClient(t, srv)
	b, _ := newClient(t, srv)
	ctx := testContext(t)
	for _, name := range []string{"My lock", "a*b", "a>b", "é", "~x", "a..b", ".a", "a.", "orders.123", "tab\there", "日本語"} {
		l := mustLock(t, a, name)
		if l.Name() != name {
			t.Errorf("Name() = %q, want %q", l.Name(), name)
		}
		if isFree(t, b, name) {
			t.Errorf("%q: another client got the held lock", name)
		}
		if err := l.Unlock(ctx); err != nil {
			t.Errorf("%q: Unlock: %v", name, err)
		}
		if !isFree(t, b, name) {
			t.Errorf("%q: still held after Unlock", name)
		}
	}
}

// TestOwnerHeader checks that requests name their connection, so that the
// service releases the locks when it closes.
func TestOwnerHeader(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, nc := newClient(t, srv)
	spy := srv.Connect(t)
	seen := make(chan string, 10)
	if _, err := spy.Subscribe("ldlm.>", func(m *nats.Msg) { seen <- m.Subject + " " + m.Header.Get(subjects.HeaderOwner) }); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	want := ownerOf(t, nc)

	l := mustLock(t, c, "owned")
	if err := l.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
	for _, subject := range []string{"ldlm.lock.owned", "ldlm.unlock.owned"} {
		select {
		case got := <-seen:
			if got != subject+" "+want {
				t.Errorf("request seen as %q, want %q", got, subject+" "+want)
			}
		case <-time.After(testTimeout):
			t.Fatal("request not seen")
		}
	}
}

func TestClientClose(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	c, err := clientlib.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := newClient(t, srv)
	l := mustLock(t, c, "closing")
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitClosed(t, "Done is closed by Close", l.Done())
	if !errors.Is(l.Err(), clientlib.ErrUnlocked) {
		t.Errorf("Err() after Close = %v, want ErrUnlocked", l.Err())
	}
	if !isFree(t, other, "closing") {
		t.Error("Close did not release the lock")
	}
	if _, err := c.Lock(testContext(t), "closing"); !errors.Is(err, clientlib.ErrClientClosed) {
		t.Errorf("Lock after Close = %v, want ErrClientClosed", err)
	}
	if nc.IsClosed() {
		t.Error("Close closed the caller's connection")
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestWithLock(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	other, _ := newClient(t, srv)
	ctx := testContext(t)

	ran := false
	err := c.WithLock(ctx, "with", func(ctx context.Context) error {
		ran = true
		if isFree(t, other, "with") {
			t.Error("lock free while fn runs")
		}
		return nil
	})
	if err != nil || !ran {
		t.Fatalf("WithLock = %v, ran %v", err, ran)
	}
	if !isFree(t, other, "with") {
		t.Fatal("lock held after WithLock")
	}

	boom := errors.New("boom")
	if err := c.WithLock(ctx, "with", func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("WithLock = %v, want fn's error", err)
	}
	if !isFree(t, other, "with") {
		t.Fatal("lock held after fn failed")
	}

	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic did not go through")
			}
		}()
		_ = c.WithLock(ctx, "with", func(context.Context) error { panic("fn panics") })
	}()
	if !isFree(t, other, "with") {
		t.Fatal("lock held after fn panicked")
	}
}

func TestWithTryLock(t *testing.T) {
	srv := ldlmtest.Start(t)
	a, _ := newClient(t, srv)
	b, _ := newClient(t, srv)
	ctx := testContext(t)

	if err := b.WithTryLock(ctx, "try", func(context.Context) error { return nil }); err != nil {
		t.Fatalf("WithTryLock on a free lock: %v", err)
	}
	mustLock(t, a, "try")
	err := b.WithTryLock(ctx, "try", func(context.Context) error {
		t.Error("fn ran without the lock")
		return nil
	})
	if !errors.Is(err, clientlib.ErrNotObtained) {
		t.Fatalf("WithTryLock on a held lock = %v, want ErrNotObtained", err)
	}
}

// TestWithLockLost: fn's context ends when the lock is lost, and WithLock
// reports the loss.
func TestWithLockLost(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	err := c.WithLock(testContext(t), "short", func(ctx context.Context) error {
		<-ctx.Done()
		if cause := context.Cause(ctx); !errors.Is(cause, clientlib.ErrExpired) {
			t.Errorf("cause = %v, want ErrExpired", cause)
		}
		return ctx.Err()
	}, clientlib.WithLockTimeout(100*time.Millisecond), clientlib.WithAutoRenew(false))
	if !errors.Is(err, clientlib.ErrLockLost) || !errors.Is(err, clientlib.ErrExpired) || !errors.Is(err, context.Canceled) {
		t.Fatalf("WithLock = %v, want fn's error and the loss", err)
	}
	t.Log(err)
}

func TestExpiryWithoutAutoRenew(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	other, _ := newClient(t, srv)

	l := mustLock(t, c, "expiring", clientlib.WithLockTimeout(100*time.Millisecond), clientlib.WithAutoRenew(false))
	if l.ExpiresAt().IsZero() {
		t.Fatal("no ExpiresAt for a lock with a timeout")
	}
	waitClosed(t, "the lock expires", l.Done())
	err := l.Err()
	var lost *clientlib.LostError
	if !errors.Is(err, clientlib.ErrLockLost) || !errors.Is(err, clientlib.ErrExpired) || !errors.As(err, &lost) || lost.Name != "expiring" {
		t.Fatalf("Err() = %v, want a LostError for ErrExpired", err)
	}
	eventually(t, "the service released the expired lock", func() bool { return isFree(t, other, "expiring") })
	if err := l.Unlock(testContext(t)); !errors.Is(err, clientlib.ErrExpired) {
		t.Errorf("Unlock of an expired lock = %v, want the loss", err)
	}
}

// TestLockTimeoutCountsFromGrant: a Lock that waited in the queue longer
// than its lock timeout gets a lock it can use, since the timeout counts
// from the grant (waited_ms), not from the request.
func TestLockTimeoutCountsFromGrant(t *testing.T) {
	srv := ldlmtest.Start(t)
	holder, _ := newClient(t, srv)
	waiter, _ := newClient(t, srv)
	h := mustLock(t, holder, "job")
	got := make(chan *clientlib.Lock, 1)
	go func() {
		l, err := waiter.Lock(testContext(t), "job", clientlib.WithLockTimeout(time.Second))
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	eventually(t, "the waiter is queued", func() bool { return srv.Service.Engine().Stats().Waiters == 1 })
	time.Sleep(1500 * time.Millisecond) // the scenario: a wait longer than the lock timeout
	if err := h.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
	var l *clientlib.Lock
	select {
	case l = <-got:
	case <-time.After(testTimeout):
		t.Fatal("the waiter was not granted")
	}
	if l == nil || !l.Locked() {
		t.Fatalf("the grant after the wait is not held: %v", l.Err())
	}
	if !l.ExpiresAt().After(time.Now()) {
		t.Fatalf("the grant arrived expired: ExpiresAt %v", l.ExpiresAt())
	}
	if err := l.Renew(testContext(t), time.Second); err != nil {
		t.Fatalf("Renew of the grant after the wait: %v", err)
	}
	select {
	case <-l.Done():
		t.Fatalf("the lock ended: %v", l.Err())
	default:
	}
	if isFree(t, holder, "job") {
		t.Fatal("another client got the lock")
	}
	if err := l.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
}

func TestAutoRenew(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	other, _ := newClient(t, srv)

	const timeout = 2 * time.Second
	l := mustLock(t, c, "renewed", clientlib.WithLockTimeout(timeout))
	first := l.ExpiresAt()
	// Renewed every third of the timeout: twice renewed, the lock has
	// outlived its first timeout.
	eventually(t, "the lock is renewed twice", func() bool { return l.ExpiresAt().After(first.Add(timeout / 2)) })
	if err := l.Err(); err != nil {
		t.Fatalf("lock lost while auto-renewed: %v", err)
	}
	if isFree(t, other, "renewed") {
		t.Fatal("the service released an auto-renewed lock")
	}
	if err := l.Unlock(testContext(t)); err != nil {
		t.Fatal(err)
	}
}

func TestManualRenew(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	ctx := testContext(t)

	l := mustLock(t, c, "manual", clientlib.WithLockTimeout(time.Minute), clientlib.WithAutoRenew(false))
	before := l.ExpiresAt()
	if err := l.Renew(ctx, time.Hour); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if !l.ExpiresAt().After(before.Add(50 * time.Minute)) {
		t.Errorf("ExpiresAt %v not pushed an hour from %v", l.ExpiresAt(), before)
	}

	// Renew gives a lock without a timeout one.
	plain := mustLock(t, c, "plain")
	if !plain.ExpiresAt().IsZero() {
		t.Error("a lock without timeout has an expiry")
	}
	if err := plain.Renew(ctx, 100*time.Millisecond); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	// ... and auto-renew (on by default) now keeps it: wait for two renewals.
	first := plain.ExpiresAt()
	eventually(t, "the lock is renewed", func() bool { return plain.ExpiresAt().After(first.Add(50 * time.Millisecond)) })
	for _, l := range []*clientlib.Lock{l, plain} {
		if err := l.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReleasedByKey: when the lock is released behind the holder's back
// (an operator unlocking with its key), the next renewal finds out and the
// lock is lost.
func TestReleasedByKey(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	operator := srv.Connect(t)

	for _, auto := range []bool{true, false} {
		// The automatic renewal goes out a third into the timeout and must
		// be answered before the lock would expire (2 s later), or the
		// client counts the lock as expired: ample on a loaded machine.
		l := mustLock(t, c, "stolen", clientlib.WithLockTimeout(3*time.Second), clientlib.WithAutoRenew(auto))
		msg := nats.NewMsg("ldlm.unlock.stolen")
		msg.Data = []byte(`{"key":"` + l.Key() + `"}`)
		if _, err := operator.RequestMsg(msg, testTimeout); err != nil {
			t.Fatal(err)
		}
		if !auto {
			err := l.Renew(testContext(t), time.Minute)
			if !errors.Is(err, clientlib.ErrLockLost) || !errors.Is(err, clientlib.ErrLockDoesNotExist) {
				t.Fatalf("Renew after release = %v, want a LostError for LockDoesNotExist", err)
			}
		}
		waitClosed(t, "the lock is known lost", l.Done())
		if err := l.Err(); !errors.Is(err, clientlib.ErrLockLost) || errors.Is(err, clientlib.ErrExpired) {
			t.Fatalf("auto-renew %v: Err() = %v, want a refused renewal", auto, err)
		}
		t.Logf("auto-renew %v: %v", auto, l.Err())
	}
}

func TestLocker(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	mu := c.NewLocker("counter")

	var inside, counter atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				mu.Lock()
				if inside.Add(1) != 1 {
					t.Error("two holders at once")
				}
				counter.Add(1)
				inside.Add(-1)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if counter.Load() != 80 {
		t.Errorf("counter = %d", counter.Load())
	}

	defer func() {
		if recover() == nil {
			t.Error("Unlock of an unlocked Locker did not panic")
		}
	}()
	mu.Unlock()
}

// TestManyWaitersOneConnection: thousands of goroutines share one client
// and its connection; the lock never has more holders than its size.
func TestManyWaitersOneConnection(t *testing.T) {
	srv := ldlmtest.Start(t)
	c, _ := newClient(t, srv)
	ctx := testContext(t)
	const goroutines, size = 2000, 10

	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			l, err := c.Lock(ctx, "crowded", clientlib.WithSize(size))
			if err != nil || !l.Locked() {
				t.Errorf("Lock: %v", err)
				return
			}
			n := inside.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			if n > size {
				t.Errorf("%d holders of a lock of size %d", n, size)
			}
			time.Sleep(time.Millisecond) // hold it a moment, so that holders overlap
			inside.Add(-1)
			if err := l.Unlock(ctx); err != nil {
				t.Errorf("Unlock: %v", err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d goroutines, size %d: at most %d held at once", goroutines, size, most.Load())
	if !isFree(t, c, "crowded", clientlib.WithSize(size)) {
		t.Fatal("lock still held at the end")
	}
}

// TestNoReply: a request that a responder takes but never answers ends
// after the request timeout, and says so.
func TestNoReply(t *testing.T) {
	srv := ldlmtest.Start(t)
	silent := srv.Connect(t)
	// It grants "granted" and answers nothing else.
	if _, err := silent.Subscribe("silent.>", func(m *nats.Msg) {
		if m.Subject == "silent.trylock.granted" {
			_ = m.Respond([]byte(`{"locked":true,"name":"granted","key":"k","token":1,"size":1}`))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := silent.Flush(); err != nil {
		t.Fatal(err)
	}
	c, _ := newClient(t, srv, clientlib.WithPrefix("silent"), clientlib.WithRequestTimeout(100*time.Millisecond))
	_, err := c.TryLock(testContext(t), "job")
	if !errors.Is(err, nats.ErrTimeout) || !strings.Contains(err.Error(), "no reply") {
		t.Errorf("TryLock with no reply = %v, want nats.ErrTimeout", err)
	}
	l, err := c.Lock(testContext(t), "job", clientlib.WithWaitTimeout(50*time.Millisecond))
	if !errors.Is(err, nats.ErrTimeout) || l != nil {
		t.Errorf("Lock with no reply after its wait timeout = %v, %v, want nats.ErrTimeout", l, err)
	}
	for _, ctx := range []context.Context{context.Background(), testContext(t)} { // the two ways of waiting
		held := tryLockNow(t, c, "granted")
		if err := held.Unlock(ctx); !errors.Is(err, nats.ErrTimeout) {
			t.Errorf("Unlock with no reply = %v, want nats.ErrTimeout", err)
		}
	}
}
