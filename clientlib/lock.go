package clientlib

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// Lock is the result of Lock or TryLock: a held lock when Locked is true.
// Its methods are safe for use by many goroutines.
type Lock struct {
	c         *Client
	name      string
	key       string // "" when not obtained
	token     uint64
	size      int
	locked    bool
	autoRenew bool
	epoch     *epoch // the connection the lock was granted over
	instance  string // the service instance that granted it; "" if the service did not say

	done     chan struct{}   // closed by finish
	poke     chan struct{}   // wakes watch after a renewal (buffer 1)
	watchCtx context.Context // cancelled by finish: stops watch and its renewals

	// renewMu makes renewals (automatic and by Renew) one at a time, so the
	// expiry we compute follows the service's last renewal.
	renewMu sync.Mutex

	mu        sync.Mutex         // guards the fields below
	err       error              // nil while held; why it ended otherwise
	timeout   time.Duration      // the lock timeout; 0: none
	expiresAt time.Time          // when the service releases it, as estimated by us; zero: never
	watching  bool               // watch is running
	stopWatch context.CancelFunc // cancels watchCtx
}

// Lock acquires the lock called name (any UTF-8 string), waiting while all
// its slots are held.
//
// It returns a held Lock when granted. When the wait timeout
// (WithWaitTimeout) passes first, it returns a Lock whose Locked is false and
// a nil error. When ctx is cancelled or its deadline passes while waiting, it
// returns ctx's error; before returning, Lock sends an unlock with the
// request's key (on a short context of its own, see WithCleanupTimeout), so
// that a grant that raced with the cancellation is released and a queued
// wait is withdrawn: nothing is left behind. If the connection drops or
// reconnects while waiting, Lock withdraws its request the same way and
// asks again once reconnected, for the time that is left; likewise when
// another instance of the service announces its start, since the wait may
// be parked at an instance that is gone.
//
// With a lock timeout (WithLockTimeout) the lock is renewed in the
// background unless WithAutoRenew(false). Watch Lock.Done to learn that the
// lock was lost.
func (c *Client) Lock(ctx context.Context, name string, opts ...LockOption) (*Lock, error) {
	return c.acquire(ctx, subjects.OpLock, name, newLockOptions(opts))
}

// TryLock acquires the lock called name only if a slot is free now; it never
// waits for the lock. When every slot is held it returns a Lock whose Locked
// is false and a nil error.
//
// TryLock still waits for the service's reply, at most the client's request
// timeout. If ctx ends first, it sends an unlock with the request's key, so a
// grant that was on its way is released. It fails at once, with
// ErrConnectionLost, while the connection is down.
func (c *Client) TryLock(ctx context.Context, name string, opts ...LockOption) (*Lock, error) {
	o := newLockOptions(opts)
	if o.waitTimeout != 0 {
		return nil, &Error{Op: subjects.OpTryLock, Name: name, Code: subjects.CodeBadRequest,
			Message: "TryLock never waits: WithWaitTimeout is for Lock"}
	}
	return c.acquire(ctx, subjects.OpTryLock, name, o)
}

// errNoReply is the cause of a request context whose time for a reply ran out.
var errNoReply = errors.New("no reply from the lock service in time")

// Pauses between the tries of acquire after the second: they double from
// retryPause up to maxRetryPause.
const (
	retryPause    = 10 * time.Millisecond
	maxRetryPause = time.Second
)

// acquire is Lock and TryLock: it asks until it gets an answer that does
// not depend on a connection that has gone away.
func (c *Client) acquire(ctx context.Context, op, name string, o lockOptions) (*Lock, error) {
	if o.waitTimeout < 0 || o.lockTimeout < 0 {
		return nil, &Error{Op: op, Name: name, Code: subjects.CodeInvalidTimeout,
			Message: fmt.Sprintf("timeouts must not be negative (wait %v, lock %v)", o.waitTimeout, o.lockTimeout)}
	}
	var waitUntil time.Time
	if o.waitTimeout > 0 {
		waitUntil = time.Now().Add(o.waitTimeout)
	}
	for retries := 0; ; retries++ {
		if retries > 1 {
			// Asking again at once is right after one change of connection
			// or instance; a change after every try (two instances serving
			// one prefix for a while) must not become a busy loop.
			pause := min(retryPause<<min(retries-2, 10), maxRetryPause)
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, wrap(op, name, err) // nothing sent yet: nothing to clean up
		}
		ep, err := c.currentEpoch(ctx, op == subjects.OpLock)
		if err != nil {
			return nil, wrap(op, name, err)
		}
		req := subjects.Request{Size: o.size, Key: newKey()}
		if o.lockTimeout > 0 {
			req.LockTimeoutSeconds = o.lockTimeout.Seconds()
		}
		if !waitUntil.IsZero() {
			left := time.Until(waitUntil)
			if left < time.Millisecond { // the service's smallest wait timeout
				return notObtained(name, &Error{Op: op, Name: name, Code: subjects.CodeLockWaitTimeout,
					Message: fmt.Sprintf("not granted within %v", o.waitTimeout)}), nil
			}
			req.WaitTimeoutSeconds = left.Seconds()
		}
		l, retry, err := c.attempt(ctx, ep, op, name, req, o, waitUntil)
		if !retry {
			return l, err
		}
	}
}

// attempt sends one lock or trylock request over the connection epoch ep.
// retry reports that the connection changed under it, so that Lock should
// ask again; whatever the request may have left behind is cleaned up first.
func (c *Client) attempt(ctx context.Context, ep *epoch, op, name string, req subjects.Request, o lockOptions, waitUntil time.Time) (l *Lock, retry bool, err error) {
	// The request ends when ctx ends; when the connection changes, since
	// the reply could be lost with it; and when the service should have
	// answered: a trylock at once, a lock soon after its wait timeout. A
	// lock without a wait timeout waits as long as ctx lets it.
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(ep.ctx, func() { cancel(errEpochEnded) })
	defer stop()
	if op == subjects.OpLock {
		// A wait parked at an instance of the service that is gone would
		// never be answered; a trylock is bounded by the request timeout.
		stopInstance := context.AfterFunc(c.instanceContext(), func() { cancel(errInstanceChanged) })
		defer stopInstance()
	}
	switch {
	case op == subjects.OpTryLock:
		var cancelTimeout context.CancelFunc
		reqCtx, cancelTimeout = context.WithTimeoutCause(reqCtx, c.requestTimeout, errNoReply)
		defer cancelTimeout()
	case !waitUntil.IsZero():
		var cancelTimeout context.CancelFunc
		reqCtx, cancelTimeout = context.WithDeadlineCause(reqCtx, waitUntil.Add(c.requestTimeout), errNoReply)
		defer cancelTimeout()
	}

	sentAt := time.Now()
	var resp subjects.LockResponse
	err = c.request(reqCtx, ep.owner, op, name, req, &resp)

	// giveUp cleans up after a request that may have reached the service,
	// and tells whether to ask again (only Lock does, and only when the
	// connection changed while the caller still wants the lock).
	giveUp := func(reason error) (*Lock, bool, error) {
		cleanupErr := c.withdraw(ctx, name, req.Key)
		if (errors.Is(reason, errEpochEnded) || errors.Is(reason, errInstanceChanged)) && op == subjects.OpLock && ctx.Err() == nil {
			return nil, true, nil
		}
		if ctx.Err() != nil {
			reason = ctx.Err()
		}
		if errors.Is(reason, errEpochEnded) {
			reason = fmt.Errorf("%w while waiting for the reply", ErrConnectionLost)
		}
		if errors.Is(reason, errNoReply) {
			reason = fmt.Errorf("%w (%w)", errNoReply, nats.ErrTimeout)
		}
		if cleanupErr != nil {
			reason = fmt.Errorf("%w; and the unlock sent to clean up failed, so a grant may stay until this connection closes: %w", reason, cleanupErr)
		}
		return nil, false, wrap(op, name, reason)
	}

	switch {
	case errors.Is(err, ErrNoService):
		return nil, false, wrap(op, name, err) // nobody received the request
	case err != nil && reqCtx.Err() != nil:
		return giveUp(context.Cause(reqCtx))
	case err != nil:
		return giveUp(err)
	case resp.Error != nil && resp.Error.Code == subjects.CodeLockWaitTimeout:
		return notObtained(name, serviceError(op, name, resp.Error)), false, nil
	case resp.Error != nil && resp.Error.Code == subjects.CodeOwnerGone:
		// The service saw our connection close while we waited. Make sure
		// we see it too before asking again over the new connection.
		c.refreshConnection()
		if ep.ctx.Err() != nil {
			return giveUp(errEpochEnded)
		}
		return nil, false, serviceError(op, name, resp.Error)
	case resp.Error != nil:
		return nil, false, serviceError(op, name, resp.Error)
	case !resp.Locked && op == subjects.OpTryLock:
		return notObtained(name, wrap(op, name, fmt.Errorf("%w: every slot is held", ErrNotObtained))), false, nil
	case !resp.Locked:
		return giveUp(errors.New("the service replied locked=false without an error"))
	}

	l = newLock(c, ep, name, req.Key, resp, o, sentAt)
	if refused := c.register(l); refused != nil {
		var lost *LostError
		if errors.As(refused, &lost) {
			// Granted, and released by the service before we saw the
			// reply: the caller gets the lock as it is, lost.
			l.finish(lost)
			return l, false, nil
		}
		// Granted over a connection that is gone (the service releases it
		// with that connection; unlock it anyway in case it has not seen
		// that yet), by an instance that is gone, or to a client that was
		// closed meanwhile.
		l.finish(&LostError{Name: name, Cause: refused})
		_ = c.release(ctx, name, req.Key)
		switch {
		case errors.Is(refused, ErrClientClosed):
			return nil, false, wrap(op, name, ErrClientClosed)
		case op == subjects.OpLock && ctx.Err() == nil:
			return nil, true, nil
		case ctx.Err() != nil:
			return nil, false, wrap(op, name, ctx.Err())
		}
		return nil, false, wrap(op, name, fmt.Errorf("%w while the reply came", refused))
	}
	l.startWatch()
	return l, false, nil
}

// newKey returns a fresh random key of 128 bits, in hex. The client always
// chooses the key itself, so that it can withdraw a request it gave up on.
func newKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand.Read crashes the program instead)
	return hex.EncodeToString(b)
}

func newLock(c *Client, ep *epoch, name, key string, resp subjects.LockResponse, o lockOptions, sentAt time.Time) *Lock {
	watchCtx, stopWatch := context.WithCancel(context.Background())
	l := &Lock{
		c:         c,
		name:      name,
		key:       key,
		token:     resp.Token,
		size:      resp.Size,
		locked:    true,
		autoRenew: o.autoRenew,
		epoch:     ep,
		instance:  resp.Instance,
		done:      make(chan struct{}),
		poke:      make(chan struct{}, 1),
		watchCtx:  watchCtx,
		timeout:   o.lockTimeout,
		stopWatch: stopWatch,
	}
	if o.lockTimeout > 0 {
		// Counted from before the request left: the service counts from
		// when it granted, later, so this errs on the early side whatever
		// the clocks of the two machines say.
		l.expiresAt = sentAt.Add(o.lockTimeout)
	}
	return l
}

// notObtained is the Lock that Lock and TryLock return when they did not
// get the lock; reason is what its Err reports.
func notObtained(name string, reason error) *Lock {
	done := make(chan struct{})
	close(done)
	return &Lock{name: name, done: done, err: reason}
}

// Locked reports whether the lock was obtained. It stays true after Unlock
// or loss; Done and Err tell about those. A nil Lock is not locked.
func (l *Lock) Locked() bool { return l != nil && l.locked }

// Name returns the lock's name.
func (l *Lock) Name() string { return l.name }

// Key returns the secret that unlocks and renews this grant; "" when not
// obtained. Another program can release the lock with it, for example
// `nats req ldlm.unlock.NAME '{"key":"KEY"}'`.
func (l *Lock) Key() string { return l.key }

// Token returns the fencing token of this grant: every later grant of any
// lock gets a larger one. Hand it to the resource you protect, so it can
// refuse the writes of a holder that lost the lock without knowing.
func (l *Lock) Token() uint64 { return l.token }

// Size returns the number of slots of the lock, as the service reported it.
func (l *Lock) Size() int { return l.size }

// ExpiresAt returns when the service will release the lock unless it is
// renewed, as estimated on this machine (slightly early, never late); zero
// when the lock has no lock timeout.
func (l *Lock) ExpiresAt() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expiresAt
}

// Done returns a channel that is closed when the lock is no longer held:
// Unlock was called, its lock timeout passed without renewal, a renewal was
// refused, the service said it released the lock (an operator forced it,
// or the lock expired), the service instance that granted it stopped or
// was replaced, or its connection dropped or reconnected. It is already
// closed when the lock was not obtained. Err tells which.
func (l *Lock) Done() <-chan struct{} { return l.done }

// Err returns nil while the lock is held. Once Done is closed it returns
// why: ErrUnlocked after Unlock, a *LostError (matching ErrLockLost) when
// the lock was lost, or an error matching ErrNotObtained when it never was
// obtained.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// finish ends the lock for reason err: it closes Done, stops renewals and
// forgets the lock. Only the first call has an effect; it reports whether
// this call was the one.
func (l *Lock) finish(err error) bool {
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return false
	}
	l.err = err
	close(l.done)
	l.mu.Unlock()

	l.stopWatch()
	l.c.forget(l)
	return true
}

// Unlock releases the lock. Done is closed as Unlock starts.
//
// The unlock is sent even when ctx is already done (then Unlock waits for
// the reply at most the client's cleanup timeout), so that `defer
// l.Unlock(ctx)` releases the lock even after ctx was cancelled. If the
// reply does not come, the lock stays held until its lock timeout passes
// or its connection closes.
//
// Unlock of a lock that was lost returns the loss (a *LostError): the work
// done under it may not have been protected. Unlock of a lock that was not
// obtained, or a second Unlock, returns an error matching ErrNotObtained or
// ErrUnlocked.
func (l *Lock) Unlock(ctx context.Context) error {
	if !l.Locked() {
		return wrap(subjects.OpUnlock, l.name, ErrNotObtained)
	}
	if !l.finish(ErrUnlocked) {
		prev := l.Err()
		if errors.Is(prev, ErrUnlocked) {
			return wrap(subjects.OpUnlock, l.name, ErrUnlocked)
		}
		// Lost. The service should not hold it any more, but our expiry
		// estimate runs ahead of the service's: unlock in case.
		_ = l.c.release(ctx, l.name, l.key)
		return prev
	}
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), l.c.cleanupTimeout)
		defer cancel()
	}
	return l.c.unlockKey(ctx, l.name, l.key)
}

// Renew sets the lock timeout to timeout from now, and keeps it so for
// later automatic renewals. It waits for the reply at most the client's
// request timeout; if ctx ends first the renewal may or may not have been
// made, and the lock keeps its earlier expiry as far as the client knows.
//
// When the service answers that this key holds no slot (the lock expired
// or was released), the lock is lost: Done is closed and Renew returns a
// *LostError. Other failures leave the lock as it was.
func (l *Lock) Renew(ctx context.Context, timeout time.Duration) error {
	if !l.Locked() {
		return wrap(subjects.OpRenew, l.name, ErrNotObtained)
	}
	return l.renew(ctx, timeout, time.Time{})
}

// renew sends a renewal with timeout. For an automatic renewal, ifExpiresAt
// is the expiry that watch saw: renew then uses the current timeout (Renew
// may have changed it) and does nothing if the expiry moved meanwhile.
func (l *Lock) renew(ctx context.Context, timeout time.Duration, ifExpiresAt time.Time) error {
	l.renewMu.Lock()
	defer l.renewMu.Unlock()
	l.mu.Lock()
	err, expiresAt, current := l.err, l.expiresAt, l.timeout
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if !ifExpiresAt.IsZero() {
		if !expiresAt.Equal(ifExpiresAt) {
			return nil // renewed by Renew meanwhile
		}
		timeout = current
	}

	ctx, cancel := context.WithTimeout(ctx, l.c.requestTimeout)
	defer cancel()
	req := subjects.Request{Key: l.key}
	if timeout > 0 {
		req.LockTimeoutSeconds = timeout.Seconds()
	} // else the service answers InvalidTimeout: renew needs a timeout
	sentAt := time.Now()
	var resp subjects.LockResponse
	if err := l.c.request(ctx, l.c.owner(), subjects.OpRenew, l.name, req, &resp); err != nil {
		return wrap(subjects.OpRenew, l.name, err)
	}
	if resp.Error != nil {
		e := serviceError(subjects.OpRenew, l.name, resp.Error)
		switch resp.Error.Code {
		case subjects.CodeInvalidLockKey, subjects.CodeLockDoesNotExist, subjects.CodeNotLocked:
			l.finish(&LostError{Name: l.name, Cause: e})
			return l.Err() // the loss, or ErrUnlocked if Unlock came first
		}
		return e
	}
	if !resp.Locked {
		return wrap(subjects.OpRenew, l.name, errors.New("the service replied locked=false without an error"))
	}

	l.mu.Lock()
	if l.err == nil {
		l.timeout = timeout
		l.expiresAt = sentAt.Add(timeout)
	}
	l.mu.Unlock()
	l.startWatch()
	select { // tell watch about the new expiry
	case l.poke <- struct{}{}:
	default:
	}
	return nil
}

// startWatch starts watch once the lock has a timeout.
func (l *Lock) startWatch() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.watching || l.timeout <= 0 || l.err != nil {
		return
	}
	l.watching = true
	go l.watch()
}

// watch runs while a lock with a timeout is held: it renews the lock a
// third of the way into each timeout (if auto-renew is on), and ends the
// lock with ErrExpired when the timeout passes without a renewal. A renewal
// that fails without the service refusing it (no reply, connection down)
// is retried every tenth of the timeout until the lock expires.
func (l *Lock) watch() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var retryAt time.Time // after a failed renewal: not before then
	for {
		l.mu.Lock()
		expiresAt, timeout := l.expiresAt, l.timeout
		l.mu.Unlock()

		wake := expiresAt
		var renewAt time.Time
		if l.autoRenew {
			renewAt = expiresAt.Add(-timeout * 2 / 3)
			if renewAt.Before(retryAt) {
				renewAt = retryAt
			}
			if renewAt.Before(wake) {
				wake = renewAt
			}
		}
		timer.Reset(time.Until(wake))
		select {
		case <-l.watchCtx.Done():
			return
		case <-l.poke:
			retryAt = time.Time{}
			continue
		case <-timer.C:
		}

		now := time.Now()
		if !now.Before(l.ExpiresAt()) { // read again: a Renew may have just moved it
			l.finish(&LostError{Name: l.name, Cause: ErrExpired})
			return
		}
		if l.autoRenew && !now.Before(renewAt) {
			// No point waiting for a reply after the lock expired.
			ctx, cancel := context.WithDeadline(l.watchCtx, expiresAt)
			err := l.renew(ctx, 0, expiresAt)
			cancel()
			retryAt = time.Time{}
			if err != nil {
				retryAt = time.Now().Add(timeout / 10)
			}
		}
	}
}
