package engine

import (
	"cmp"
	"fmt"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file takes slots: TryLock and Lock, the grant itself, and the
// timers that end a grant (lock timeout) or a wait (wait timeout).

// TryLock takes a slot of the lock if one is free. ok is false, without
// error, when all slots are taken.
func (e *Engine) TryLock(r Request) (g Grant, ok bool, err error) {
	return e.take(r, false, 0, nil)
}

// Lock takes a slot of the lock, or joins the end of its queue of waiters
// when all slots are taken. It never blocks:
//
//   - granted now: it returns (g, true, nil) and never calls done;
//   - parked: it returns (Grant{}, false, nil) and calls done exactly once
//     later, with the grant, or with ErrWaitTimeout after waitTimeout (0:
//     wait forever), ErrWaitCancelled, ErrOwnerGone or ErrEngineClosed;
//   - invalid request: it returns the error and never calls done.
//
// done may run before Lock returns, on another goroutine. It runs outside
// the engine's mutex and may call the engine, but it delays whoever freed
// the slot (an Unlock, a timer), so it should be quick and must not panic.
func (e *Engine) Lock(r Request, waitTimeout time.Duration, done func(Grant, error)) (g Grant, ok bool, err error) {
	if done == nil {
		panic("engine: Lock needs a done callback")
	}
	return e.take(r, true, waitTimeout, done)
}

// take is TryLock (park false) and Lock (park true). It reports a grant
// made at once outside the mutex.
func (e *Engine) take(r Request, park bool, waitTimeout time.Duration, done func(Grant, error)) (g Grant, ok bool, err error) {
	size := cmp.Or(r.Size, 1)
	switch {
	case r.Name == "":
		return Grant{}, false, ErrInvalidLockName
	case size < 1:
		return Grant{}, false, fmt.Errorf("%w: size %d", ErrInvalidLockSize, r.Size)
	case r.LockTimeout < 0:
		return Grant{}, false, fmt.Errorf("%w: lock timeout %v", ErrInvalidTimeout, r.LockTimeout)
	case waitTimeout < 0:
		return Grant{}, false, fmt.Errorf("%w: wait timeout %v", ErrInvalidTimeout, waitTimeout)
	}
	e.mu.Lock()
	g, ok, err = e.acquire(r, size, park, waitTimeout, done)
	e.mu.Unlock()
	if ok && e.onEvent != nil {
		e.onEvent(Event{Kind: EventGranted, Name: g.Name, Token: g.Token, Owner: r.Owner})
	}
	return g, ok, err
}

// acquire is take under mu.
func (e *Engine) acquire(r Request, size int, park bool, waitTimeout time.Duration, done func(Grant, error)) (Grant, bool, error) {
	if e.closed {
		return Grant{}, false, ErrEngineClosed
	}
	now := e.clock.Now()
	if !r.Owner.IsZero() && e.gone.has(r.Owner, now) {
		return Grant{}, false, fmt.Errorf("%w (it closed before this request arrived)", ErrOwnerGone)
	}
	l := e.locks[r.Name]
	if l != nil {
		if l.size != size {
			return Grant{}, false, fmt.Errorf("%w: it has size %d, the request %d", ErrLockSizeMismatch, l.size, size)
		}
		if r.Key != "" && l.find(r.Key) != nil {
			return Grant{}, false, ErrKeyInUse
		}
		if l.held >= l.size {
			if !park {
				return Grant{}, false, nil
			}
			if err := e.checkWaitLimits(l, r.Owner); err != nil {
				return Grant{}, false, err
			}
		}
	} else {
		if e.limits.MaxLocks > 0 && len(e.locks) >= e.limits.MaxLocks {
			return Grant{}, false, fmt.Errorf("%w: the server holds %d locks, its limit", ErrLimitExceeded, len(e.locks))
		}
		l = e.newLock(r.Name, size)
	}
	key := r.Key
	if key == "" {
		// 128 random bits: a collision with another key of this lock is
		// not a practical possibility, so it is not checked.
		key = e.newKey()
	}
	en := e.newEntry(l, key, r.Owner)
	if l.held < l.size {
		g := e.grant(en, now, r.LockTimeout)
		// Every new entry goes into the index, holders included: a big
		// semaphore keeps its index while it has many entries, and a
		// holder missing from it could not unlock or renew.
		l.indexAdd(en)
		return g, true, nil
	}
	e.lastWait++
	id := e.lastWait
	en.wait = &waitState{id: id, done: done, lockTimeout: r.LockTimeout, reply: r.Reply}
	en.start = now.UnixNano()
	l.pushWaiter(en)
	l.indexAdd(en)
	e.waiters++
	if waitTimeout > 0 {
		en.deadline = now.Add(waitTimeout).UnixNano()
		en.timer = e.clock.AfterFunc(waitTimeout, func() { e.waitExpired(en, id) })
	}
	return Grant{}, false, nil
}

// checkWaitLimits reports whether one more request of owner may wait for l.
func (e *Engine) checkWaitLimits(l *lock, id subjects.Owner) error {
	if max := e.limits.MaxWaitersPerLock; max > 0 && l.waiting >= max {
		return fmt.Errorf("%w: the lock has %d waiters, the limit", ErrLimitExceeded, l.waiting)
	}
	if max := e.limits.MaxWaitsPerOwner; max > 0 && !id.IsZero() {
		if o := e.owners[id]; o != nil && o.waits >= max {
			return fmt.Errorf("%w: this connection waits for %d locks, the limit", ErrLimitExceeded, o.waits)
		}
	}
	return nil
}

// grant makes en, new or a waiter just taken off the queue, a holder of
// its lock, with a new fencing token.
func (e *Engine) grant(en *entry, now time.Time, lockTimeout time.Duration) Grant {
	l := en.lock
	e.lastToken++
	en.token = e.lastToken
	en.start = now.UnixNano()
	en.deadline = 0
	en.wait = nil
	l.holders.pushBack(en, inLock)
	l.held++
	e.holders++
	g := Grant{Name: l.name, Key: en.key, Token: en.token, Size: l.size}
	if lockTimeout > 0 {
		g.ExpiresAt = e.armExpiry(en, now, lockTimeout)
	}
	return g
}

// armExpiry starts the lock timeout of holder en and returns the expiry.
func (e *Engine) armExpiry(en *entry, now time.Time, d time.Duration) time.Time {
	expiry := now.Add(d)
	en.deadline, en.lockTimeout = expiry.UnixNano(), d
	token, deadline := en.token, en.deadline
	en.timer = e.clock.AfterFunc(d, func() { e.expire(en, token, deadline) })
	return expiry
}

// expire is the lock timeout of a grant. The grant is identified by its
// token, unique for the engine's life, and by the deadline, which a Renew
// changes: if either differs, the entry was released, recycled or renewed
// since this timer was started, and there is nothing to do.
func (e *Engine) expire(en *entry, token uint64, deadline int64) {
	e.mu.Lock()
	var notes []notification
	if !e.closed && en.token == token && en.deadline == deadline {
		en.timer = nil // it is this timer that fired
		notes = e.release(en, EventExpired, nil)
	}
	e.mu.Unlock()
	e.notify(notes)
}

// waitExpired is the wait timeout of a waiter, identified by its wait id.
func (e *Engine) waitExpired(en *entry, id uint64) {
	e.mu.Lock()
	var notes []notification
	if !e.closed && en.wait != nil && en.wait.id == id {
		en.timer = nil
		notes = e.dropWaiter(en, ErrWaitTimeout, nil)
	}
	e.mu.Unlock()
	e.notify(notes)
}
