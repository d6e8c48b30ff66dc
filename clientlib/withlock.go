package clientlib

import (
	"context"
	"errors"
)

// WithLock acquires the lock called name as Lock does, runs fn while holding
// it, and unlocks it when fn returns (or panics).
//
// fn's context is cancelled when the lock is lost while fn runs;
// context.Cause of it is then the *LostError. WithLock returns fn's error
// joined with the error of Unlock, which reports such a loss even when fn
// ignored it. When the wait timeout (WithWaitTimeout) passes, fn is not run
// and WithLock returns an error matching ErrNotObtained and
// ErrLockWaitTimeout. If ctx is cancelled while waiting, WithLock returns
// ctx's error and leaves nothing behind, as Lock does.
func (c *Client) WithLock(ctx context.Context, name string, fn func(ctx context.Context) error, opts ...LockOption) error {
	l, err := c.Lock(ctx, name, opts...)
	if err != nil {
		return err
	}
	return l.run(ctx, fn)
}

// WithTryLock is WithLock with TryLock: when a slot is not free now, fn is
// not run and WithTryLock returns an error matching ErrNotObtained.
func (c *Client) WithTryLock(ctx context.Context, name string, fn func(ctx context.Context) error, opts ...LockOption) error {
	l, err := c.TryLock(ctx, name, opts...)
	if err != nil {
		return err
	}
	return l.run(ctx, fn)
}

// run calls fn with a context that ends when the lock is lost, then unlocks.
func (l *Lock) run(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	if !l.Locked() {
		return l.Err()
	}
	fnCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-l.Done():
			cancel(l.Err())
		case <-fnCtx.Done():
		}
	}()
	defer func() {
		err = errors.Join(err, l.Unlock(ctx))
	}()
	return fn(fnCtx)
}
