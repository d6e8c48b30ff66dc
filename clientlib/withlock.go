package clientlib

import (
	"context"
	"errors"
	"fmt"
	"sync"
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

// NewLocker returns a sync.Locker for the lock called name. Its Lock waits
// with no context (but with WithWaitTimeout if given).
//
// Like etcd's concurrency.NewLocker, it panics where sync.Mutex cannot
// return an error: Lock panics if the lock cannot be acquired (the service
// is not running, the wait timeout passed, ...), and Unlock panics if
// nothing is held or the unlock request fails. A lock lost while held is
// not a panic: Unlock just forgets it. Use Client.Lock to handle these
// cases as errors.
func (c *Client) NewLocker(name string, opts ...LockOption) sync.Locker {
	return &locker{c: c, name: name, opts: opts}
}

type locker struct {
	c    *Client
	name string
	opts []LockOption

	mu   sync.Mutex // guards held
	held []*Lock    // grants taken by Lock and not yet released (several when the size is above 1)
}

func (k *locker) Lock() {
	l, err := k.c.Lock(context.Background(), k.name, k.opts...)
	if err != nil {
		panic(err)
	}
	if !l.Locked() {
		panic(l.Err())
	}
	k.mu.Lock()
	k.held = append(k.held, l)
	k.mu.Unlock()
}

func (k *locker) Unlock() {
	k.mu.Lock()
	if len(k.held) == 0 {
		k.mu.Unlock()
		panic(fmt.Sprintf("ldlm: unlock of unlocked Locker %q", k.name))
	}
	l := k.held[0] // any grant will do: the slots of a lock are alike
	k.held = k.held[1:]
	k.mu.Unlock()

	err := l.Unlock(context.Background())
	if err != nil && !errors.Is(err, ErrLockLost) {
		panic(err)
	}
}
