package clientlib

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// Lock is the result of Lock or TryLock: a held lock while Locked is true.
// Its methods are safe for use by many goroutines. Only Lock and TryLock
// make one: a Lock declared by other code has no client to ask.
type Lock struct {
	c         *Client
	name      string
	key       string // "" when not obtained
	token     uint64
	size      int
	autoRenew bool
	ep        *epoch // the connection the lock was granted over
	instance  string // the service instance that granted it; "" if the service did not say

	// Guarded by c.mu (see Client); for a lock not obtained, err is set
	// once at the start.
	err       error         // nil while held; why it ended otherwise
	timeout   time.Duration // the lock timeout; 0: none
	expiresAt time.Time     // when the service releases it, as estimated by us; zero: never
	sentAt    time.Time     // when the count of expiresAt started: the request that set it was sent (plus a lock's wait)
	renewing  bool          // an automatic renewal is in flight
	retryAt   time.Time     // after a failed automatic renewal: not before then
	timer     timer         // its next renewal or its expiry, while it has a lock timeout
	done      chan struct{} // made by the first call of Done while held, closed by finishLocked; most callers never ask
}

// closedDone is Done of every lock that ended before anybody asked for Done.
var closedDone = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// Lock acquires the lock called name (any UTF-8 string), waiting while all
// its slots are held. It returns a held Lock when granted, and a Lock whose
// Locked is false (with a nil error) when the wait timeout
// (WithWaitTimeout) passes first.
//
// When ctx ends while waiting, Lock returns ctx's error after it sent an
// unlock with the request's key (within the cleanup timeout), which
// releases a grant that raced with the cancellation or withdraws the
// queued wait: nothing is left behind. When the connection drops or
// reconnects, or another instance of the service announces its start (the
// wait may be parked at one that is gone), Lock withdraws its request the
// same way and asks again for the time that is left.
//
// While no service answers (no responders), or the one that answers is
// stopping (Unavailable), Lock asks again with growing pauses, so that a
// waiter rides out a restart or a takeover of the service, or its start.
// It asks within the caller's budget: until the wait timeout passes or ctx
// ends; with neither a wait timeout nor a deadline on ctx, for the request
// timeout (WithRequestTimeout) of silence. The error then matches
// ErrNoService or ErrUnavailable, and says for how long it asked.
//
// With a lock timeout (WithLockTimeout) the lock is renewed in the
// background unless WithAutoRenew(false); Lock.Done tells of its loss. The
// timeout counts from the grant (the service says how long the request
// waited), so a grant after a long wait is usable for its whole timeout.
// A grant whose timeout passed nonetheless before it arrived is given
// back: the Lock returned then is not Locked, and its Err is a *LostError
// matching ErrExpired, as for a lock that expired while held.
func (c *Client) Lock(ctx context.Context, name string, opts ...LockOption) (*Lock, error) {
	return c.acquire(ctx, subjects.OpLock, name, newLockOptions(opts))
}

// TryLock acquires the lock called name only if a slot is free now; it never
// waits for the lock. When every slot is held it returns a Lock whose Locked
// is false and a nil error.
//
// TryLock still waits for the service's reply, at most the client's request
// timeout, and asks again within that time while no service answers or the
// one that answers is stopping. If ctx ends first, it sends an unlock with
// the request's key, so a grant that was on its way is released. It fails
// at once, with ErrConnectionLost, while the connection is down.
func (c *Client) TryLock(ctx context.Context, name string, opts ...LockOption) (*Lock, error) {
	return c.acquire(ctx, subjects.OpTryLock, name, newLockOptions(opts))
}

// acquire is Lock and TryLock: it asks until it gets an answer that does
// not depend on a connection or an instance that has gone away.
func (c *Client) acquire(ctx context.Context, op, name string, o lockOptions) (*Lock, error) {
	switch {
	case op == subjects.OpTryLock && o.waitTimeout != 0:
		return nil, &Error{Op: op, Name: name, Code: subjects.CodeBadRequest, Message: "TryLock never waits: WithWaitTimeout is for Lock"}
	case o.waitTimeout < 0 || o.lockTimeout < 0:
		return nil, &Error{Op: op, Name: name, Code: subjects.CodeInvalidTimeout,
			Message: fmt.Sprintf("timeouts must not be negative (wait %v, lock %v)", o.waitTimeout, o.lockTimeout)}
	}
	var waitUntil time.Time
	if o.waitTimeout > 0 {
		waitUntil = time.Now().Add(o.waitTimeout)
	}
	var unansweredSince time.Time // since when no service took the request
	var last error                // the last unanswered try's error
	for tries := 0; ; tries++ {
		if tries > 1 || !unansweredSince.IsZero() {
			// Asking again at once is right after one change of connection
			// or instance; a change after every try (two instances serving
			// one prefix for a while) must not become a busy loop, nor must
			// a service that is away.
			pause := min(retryPause<<min(max(tries-2, 0), 10), maxRetryPause)
			switch { // the last try goes at the end of the budget
			case !waitUntil.IsZero():
				pause = min(pause, time.Until(waitUntil))
			case !unansweredSince.IsZero() && silenceBounded(ctx, op, waitUntil):
				pause = min(pause, c.requestTimeout-time.Since(unansweredSince))
			}
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
		}
		if err := ctx.Err(); err != nil {
			if last != nil {
				err = fmt.Errorf("%w: %w", err, c.gaveUp(op, name, unansweredSince, last))
			}
			return nil, wrap(op, name, err) // nothing sent, or nothing left: nothing to clean up
		}
		req := subjects.Request{Size: o.size, Key: newKey()}
		if o.lockTimeout > 0 {
			req.LockTimeoutSeconds = o.lockTimeout.Seconds()
		}
		if !waitUntil.IsZero() {
			left := time.Until(waitUntil)
			if left < time.Millisecond { // the service's smallest wait timeout
				if last != nil {
					return nil, wrap(op, name, c.gaveUp(op, name, unansweredSince, last))
				}
				return c.notObtained(name, &Error{Op: op, Name: name, Code: subjects.CodeLockWaitTimeout,
					Message: fmt.Sprintf("not granted within %v", o.waitTimeout)}), nil
			}
			req.WaitTimeoutSeconds = left.Seconds()
		}
		l, retry, err := c.attempt(ctx, op, name, req, o, waitUntil)
		switch {
		case unanswered(err):
			if unansweredSince.IsZero() {
				unansweredSince = time.Now()
			} else if silenceBounded(ctx, op, waitUntil) && time.Since(unansweredSince) >= c.requestTimeout {
				return nil, wrap(op, name, c.gaveUp(op, name, unansweredSince, err))
			}
			last = err
		case retry:
			unansweredSince, last = time.Time{}, nil
		default:
			return l, err
		}
	}
}

// silenceBounded reports whether the request timeout bounds how long a
// Lock or TryLock asks while no service answers. The caller's budget comes
// first: a Lock's wait timeout or ctx's deadline, which the loop of
// acquire checks by itself. Called only once a request went unanswered.
func silenceBounded(ctx context.Context, op string, waitUntil time.Time) bool {
	if op == subjects.OpTryLock {
		return true
	}
	_, hasDeadline := ctx.Deadline()
	return waitUntil.IsZero() && !hasDeadline
}

// attempt sends one lock or trylock request. retry reports that the
// connection or the instance changed under it, so that Lock should ask
// again; whatever the request may have left behind is cleaned up first.
// An unanswered error (see unanswered) means the request left nothing.
func (c *Client) attempt(ctx context.Context, op, name string, req subjects.Request, o lockOptions, waitUntil time.Time) (l *Lock, retry bool, err error) {
	// The service should answer a trylock at once and a lock soon after
	// its wait timeout; a lock without one waits as long as ctx lets it.
	var deadline time.Time
	switch {
	case op == subjects.OpTryLock:
		deadline = time.Now().Add(c.requestTimeout)
	case !waitUntil.IsZero():
		deadline = waitUntil.Add(c.requestTimeout)
	}
	p, reqCtx, cancel := newPending(ctx, op == subjects.OpLock)
	defer cancel()
	p.key = req.Key
	ep, header, err := c.begin(ctx, p, deadline)
	if err != nil {
		return nil, false, wrap(op, name, err)
	}
	sentAt := time.Now()
	var resp subjects.LockResponse
	data, err := c.request(reqCtx, 0, header, op, name, req)
	if err == nil {
		if derr := subjects.DecodeLockResponse(data, &resp); derr != nil {
			err = unreadable(data, derr)
		}
	}
	if err == nil && resp.Error == nil && resp.Locked {
		return c.granted(ctx, op, newLock(c, ep, name, req.Key, resp, o, sentAt), p)
	}
	reason := c.end(p)

	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, false, err // nobody received the request
	case err != nil:
		switch { // giveUp reports ctx's error if ctx ended
		case errors.Is(reason, errNoReply):
			reason = fmt.Errorf("%w (%w)", errNoReply, nats.ErrTimeout)
		case reason == nil:
			reason = err
		}
		return c.giveUp(ctx, op, name, req.Key, reason)
	case resp.Error != nil && resp.Error.Code == subjects.CodeLockWaitTimeout:
		return c.notObtained(name, serviceError(op, name, resp.Error)), false, nil
	case resp.Error != nil && resp.Error.Code == subjects.CodeOwnerGone:
		// The service saw our connection close while we waited, or
		// released our session. Make sure we see it too before asking
		// again over the new connection; later calls use a new session.
		c.mu.Lock()
		c.refreshLocked()
		c.forgetSessionLocked(header)
		gone := c.cur != ep
		c.mu.Unlock()
		if gone {
			return c.giveUp(ctx, op, name, req.Key, errEpochEnded)
		}
		return nil, false, serviceError(op, name, resp.Error)
	case resp.Error != nil:
		return nil, false, serviceError(op, name, resp.Error)
	case op == subjects.OpTryLock:
		return c.notObtained(name, wrap(op, name, fmt.Errorf("%w: every slot is held", ErrNotObtained))), false, nil
	}
	return c.giveUp(ctx, op, name, req.Key, errors.New("the service replied locked=false without an error"))
}

// granted registers l, the grant that the reply to request p brought, or
// cleans up after it.
func (c *Client) granted(ctx context.Context, op string, l *Lock, p *pending) (*Lock, bool, error) {
	if l.timeout > 0 && !time.Now().Before(l.expiresAt) {
		// Expired on arrival, by our count (docs/protocol.md, "Replies"):
		// the service still holds it, for nobody. Report the expiry.
		c.mu.Lock()
		c.endLocked(p)
		c.finishLocked(l, &LostError{Name: l.name, Cause: ErrExpired})
		c.mu.Unlock()
		_ = c.release(ctx, l.name, l.key)
		return l, false, nil
	}
	refused := c.register(l, p)
	if refused == nil {
		return l, false, nil
	}
	// Unlock it even if granted over a connection that is gone, in case the
	// service has not seen that yet.
	_ = c.release(ctx, l.name, l.key)
	switch {
	case errors.Is(refused, ErrClientClosed):
		return nil, false, wrap(op, l.name, ErrClientClosed)
	case op == subjects.OpLock && ctx.Err() == nil:
		return nil, true, nil
	case ctx.Err() != nil:
		return nil, false, wrap(op, l.name, ctx.Err())
	}
	return nil, false, wrap(op, l.name, fmt.Errorf("%w while the reply came", refused))
}

// giveUp cleans up after a request that may have reached the service, and
// tells whether to ask again: only Lock does, and only when the connection
// or the instance changed while the caller still wants the lock.
func (c *Client) giveUp(ctx context.Context, op, name, key string, reason error) (*Lock, bool, error) {
	cleanupErr := c.release(ctx, name, key)
	changed := errors.Is(reason, errEpochEnded) || errors.Is(reason, errInstanceChanged)
	if changed && op == subjects.OpLock && ctx.Err() == nil {
		return nil, true, nil
	}
	if ctx.Err() != nil {
		reason = ctx.Err()
	}
	if errors.Is(reason, errEpochEnded) {
		reason = fmt.Errorf("%w while waiting for the reply", ErrConnectionLost)
	}
	if cleanupErr != nil {
		reason = fmt.Errorf("%w; and the unlock sent to clean up failed, so a grant may stay until this connection closes: %w", reason, cleanupErr)
	}
	return nil, false, wrap(op, name, reason)
}

// newKey returns a fresh random key of 128 bits, in hex. The client always
// chooses the key itself, so that it can withdraw a request it gave up on.
func newKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand.Read crashes the program instead)
	var h [32]byte
	hex.Encode(h[:], b[:])
	return string(h[:])
}

func newLock(c *Client, ep *epoch, name, key string, resp subjects.LockResponse, o lockOptions, sentAt time.Time) *Lock {
	l := &Lock{
		c:         c,
		name:      name,
		key:       key,
		token:     resp.Token,
		size:      resp.Size,
		autoRenew: o.autoRenew,
		ep:        ep,
		instance:  resp.Instance,
		timeout:   o.lockTimeout,
		sentAt:    sentAt,
	}
	if resp.WaitedMS != 0 {
		// The request waited that long in the service's queue, which
		// started its wait after we sent it: counting from sentAt plus the
		// wait is never later than the grant. Never past the reply's
		// arrival, whatever the service says.
		l.sentAt = sentAt.Add(time.Duration(min(resp.WaitedMS, uint64(math.MaxInt64/time.Millisecond))) * time.Millisecond)
		if now := time.Now(); l.sentAt.After(now) {
			l.sentAt = now
		}
	}
	l.timer.lock = l
	if o.lockTimeout > 0 {
		// Counted from before the grant was made, so that it errs on the
		// early side whatever the clocks of the two machines say.
		l.expiresAt = l.sentAt.Add(o.lockTimeout)
	}
	return l
}

// notObtained is the Lock that Lock and TryLock return when they did not
// get the lock; reason is what its Err reports.
func (c *Client) notObtained(name string, reason error) *Lock {
	return &Lock{c: c, name: name, done: closedDone, err: reason}
}

// Locked reports whether the lock is held, as far as the client knows: it
// was obtained and is not unlocked or lost. A nil Lock is not locked.
func (l *Lock) Locked() bool { return l != nil && l.key != "" && l.Err() == nil }

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
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	return l.expiresAt
}

// Done returns a channel that is closed when the lock is no longer held,
// for any reason: Unlock, a loss (see LostError), or Close of the client.
// It is already closed when the lock was not obtained. Err tells which.
func (l *Lock) Done() <-chan struct{} {
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	if l.done == nil {
		l.done = closedDone
		if l.err == nil {
			l.done = make(chan struct{})
		}
	}
	return l.done
}

// Err returns nil while the lock is held. Once Done is closed it returns
// why: ErrUnlocked after Unlock, a *LostError (matching ErrLockLost) when
// the lock was lost, or an error matching ErrNotObtained when it never was
// obtained.
func (l *Lock) Err() error {
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	return l.err
}

// Unlock releases the lock. Done is closed and Locked turns false as
// Unlock starts.
//
// The unlock is sent even when ctx is already done (then Unlock waits for
// the reply at most the client's cleanup timeout), so that `defer
// l.Unlock(ctx)` releases the lock even after ctx was cancelled. While no
// service answers, Unlock asks again within the request timeout. If no
// reply comes (the error then matches ErrNoService, ErrUnavailable or
// nats.ErrTimeout, or is ctx's), the release is not confirmed: the client
// sends the unlock again in the background, with pauses doubling up to
// 5 s, until a service answers or the client is closed.
//
// Unlock of a lock that was lost returns the loss (a *LostError): the work
// done under it may not have been protected. Unlock of a lock that was not
// obtained, or a second Unlock, returns an error matching ErrNotObtained or
// ErrUnlocked.
func (l *Lock) Unlock(ctx context.Context) error {
	if l.key == "" {
		return wrap(subjects.OpUnlock, l.name, ErrNotObtained)
	}
	c := l.c
	c.mu.Lock()
	prev := l.err
	c.finishLocked(l, ErrUnlocked)
	header := c.headerLocked()
	c.mu.Unlock()
	switch {
	case prev == ErrUnlocked:
		return wrap(subjects.OpUnlock, l.name, ErrUnlocked)
	case prev != nil: // lost, but our expiry estimate runs ahead of the service's
		_ = c.release(ctx, l.name, l.key)
		return prev
	}
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), c.cleanupTimeout)
		defer cancel()
	}
	err := c.unlockKey(ctx, header, l.name, l.key)
	if err != nil {
		c.unconfirmed(l.name, l.key, err)
	}
	return err
}

// Renew sets the lock timeout to timeout from now, and keeps it so for
// later automatic renewals. It waits for the reply at most the client's
// request timeout (asking again within it while no service answers); if
// ctx ends first the renewal may or may not have been made, and the lock
// keeps its earlier expiry as far as the client knows.
//
// When the service answers that this key holds no slot (the lock expired
// or was released), the lock is lost: Done is closed and Renew returns a
// *LostError. Other failures leave the lock as it was.
func (l *Lock) Renew(ctx context.Context, timeout time.Duration) error {
	c := l.c
	if l.key == "" {
		return wrap(subjects.OpRenew, l.name, ErrNotObtained)
	}
	if err := l.Err(); err != nil {
		return err
	}
	req := subjects.Request{Key: l.key}
	if timeout > 0 {
		req.LockTimeoutSeconds = timeout.Seconds()
	} // else the service answers InvalidTimeout: renew needs a timeout
	sentAt, err := c.call(ctx, c.header(), subjects.OpRenew, l.name, req, func(data []byte) error {
		var resp subjects.LockResponse
		if err := subjects.DecodeLockResponse(data, &resp); err != nil {
			return unreadable(data, err)
		}
		if resp.Error != nil {
			return serviceError(subjects.OpRenew, l.name, resp.Error)
		}
		if !resp.Locked {
			return errors.New("the service replied locked=false without an error")
		}
		return nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
		// Renewals may overlap (Renew and an automatic one): the service
		// keeps the expiry of the one sent last, and so do we.
		if l.err == nil && sentAt.After(l.sentAt) {
			l.timeout, l.sentAt, l.expiresAt = timeout, sentAt, sentAt.Add(timeout)
			c.scheduleLocked(l)
		}
		return nil
	case unknownKey(err):
		c.finishLocked(l, &LostError{Name: l.name, Cause: err})
		return l.err // the loss, or ErrUnlocked if Unlock came first
	}
	return wrap(subjects.OpRenew, l.name, err)
}
