package clientlib

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// NewLocker returns a sync.Locker for the lock called name, for code that
// takes a sync.Locker. Its Lock waits with no context (but with
// WithWaitTimeout if given) and Unlock waits at most the client's request
// timeout.
//
// Like etcd's concurrency.NewLocker, it panics where sync.Mutex cannot
// return an error: Lock panics if the lock cannot be acquired (the service
// is not running, the wait timeout passed, ...), and Unlock panics if
// nothing is held or the unlock request fails. A lock lost while held (see
// Lock.Done) is not a panic: Unlock just forgets it. Use Client.Lock to
// handle these cases as errors.
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
