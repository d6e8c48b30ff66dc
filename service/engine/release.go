package engine

import (
	"fmt"
	"time"
)

// This file gives slots back: Unlock and Renew by key, ForceUnlock for
// operators, and the release and hand-over to the next waiters that they
// share.

// Unlock releases the slot that key holds, or, if key is waiting for the
// lock, cancels that wait (cancelled is then true, and the waiter's done
// callback gets ErrWaitCancelled). Both succeed, so a client that gave up
// waiting can clean up with one call whether or not the grant raced in.
func (e *Engine) Unlock(name, key string) (cancelled bool, err error) {
	e.mu.Lock()
	var notes []notification
	en, err := e.lookup(name, key)
	if err == nil {
		if cancelled = en.wait != nil; cancelled {
			notes = e.dropWaiter(en, ErrWaitCancelled, nil)
		} else {
			notes = e.release(en, EventReleased, nil)
		}
	}
	e.mu.Unlock()
	e.notify(notes)
	return cancelled, err
}

// Renew sets the expiry of the grant that key holds to now + lockTimeout,
// giving a grant without a lock timeout one.
func (e *Engine) Renew(name, key string, lockTimeout time.Duration) (Grant, error) {
	if name == "" {
		return Grant{}, ErrInvalidLockName
	}
	if lockTimeout <= 0 {
		return Grant{}, fmt.Errorf("%w: renew needs a positive lock timeout, not %v", ErrInvalidTimeout, lockTimeout)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	en, err := e.lookup(name, key)
	if err != nil {
		return Grant{}, err
	}
	if en.wait != nil {
		return Grant{}, fmt.Errorf("%w: the key is still waiting", ErrNotLocked)
	}
	en.stopTimer()
	expiry := e.armExpiry(en, e.clock.Now(), lockTimeout)
	return Grant{Name: en.lock.name, Key: en.key, Token: en.token, Size: en.lock.size, ExpiresAt: expiry}, nil
}

// lookup returns the entry of key on lock name, holding or waiting, or the
// error that says why there is none.
func (e *Engine) lookup(name, key string) (*entry, error) {
	switch {
	case name == "":
		return nil, ErrInvalidLockName
	case e.closed:
		return nil, ErrEngineClosed
	}
	l := e.locks[name]
	if l == nil {
		return nil, ErrLockDoesNotExist
	}
	// A lock that exists has a holder: it has waiters only while all its
	// slots are taken, and it is forgotten when it has neither.
	if en := l.find(key); en != nil {
		return en, nil
	}
	return nil, ErrInvalidLockKey
}

// release frees the slot of holder en, hands free slots to waiters, and
// forgets the lock if it is left empty. It appends the resulting done calls
// and events, the release being of kind why, to notes.
func (e *Engine) release(en *entry, why EventKind, notes []notification) []notification {
	l := en.lock
	if e.onEvent != nil {
		notes = append(notes, notification{event: Event{Kind: why, Name: l.name, Token: en.token, Owner: en.ownerID(),
			Duration: e.clock.Now().Sub(unixTime(en.start))}})
	}
	en.stopTimer()
	l.holders.remove(en, inLock)
	l.held--
	l.indexRemove(en)
	e.holders--
	e.disown(en)
	// Clearing the entry's token and wait makes its stale timers do nothing.
	recycle(&e.freeEntries, en)
	notes = e.promote(l, notes)
	e.forgetIfIdle(l)
	return notes
}

// dropWaiter removes waiter en from its lock and appends its done call with
// err to notes.
func (e *Engine) dropWaiter(en *entry, err error, notes []notification) []notification {
	l := en.lock
	n := notification{done: en.wait.done, err: err}
	if e.onEvent != nil {
		n.event = Event{Kind: waitEndKind(err), Name: l.name, Owner: en.ownerID(),
			Duration: e.clock.Now().Sub(unixTime(en.start))}
	}
	notes = append(notes, n)
	en.stopTimer()
	l.unlinkWaiter(en)
	l.indexRemove(en)
	e.waiters--
	e.disown(en)
	recycle(&e.freeEntries, en)
	e.forgetIfIdle(l)
	return notes
}

// promote grants free slots of l to its oldest waiters.
func (e *Engine) promote(l *lock, notes []notification) []notification {
	if l.waiters.head == nil || l.held >= l.size {
		return notes
	}
	now := e.clock.Now()
	for l.waiters.head != nil && l.held < l.size {
		en := l.waiters.head
		ws := en.wait
		waited := now.Sub(unixTime(en.start))
		en.stopTimer()
		l.unlinkWaiter(en)
		e.waiters--
		g := e.grant(en, now, ws.lockTimeout)
		n := notification{done: ws.done, grant: g}
		if e.onEvent != nil {
			n.event = Event{Kind: EventGranted, Name: l.name, Token: g.Token, Owner: en.ownerID(), Duration: waited}
		}
		notes = append(notes, n)
	}
	return notes
}

// ForceUnlock releases grants of lock name for an operator: the one with
// key, else the one with token, else (both empty) every holder. Waiters
// are granted the freed slots as usual. It returns the released grants'
// tokens, which fail with ErrInvalidLockKey when neither key nor token
// matches a holder.
func (e *Engine) ForceUnlock(name, key string, token uint64) (released []uint64, err error) {
	e.mu.Lock()
	var notes []notification
	switch l := e.locks[name]; {
	case e.closed:
		err = ErrEngineClosed
	case l == nil:
		err = ErrLockDoesNotExist
	default:
		var victims []*entry
		for en := l.holders.tail; en != nil; en = en.link[inLock].prev { // newest first
			if (key == "" && token == 0) || (key != "" && en.key == key) || (key == "" && en.token == token) {
				victims = append(victims, en)
			}
		}
		if len(victims) == 0 {
			err = fmt.Errorf("%w: no holder has that key or token", ErrInvalidLockKey)
		}
		for _, en := range victims {
			released = append(released, en.token)
			notes = e.release(en, EventForced, notes)
		}
	}
	e.mu.Unlock()
	e.notify(notes)
	return released, err
}
