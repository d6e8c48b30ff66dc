package engine

import (
	"errors"
	"fmt"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file turns one lock's whole state into a plain record and back, so
// that the service can keep it outside the process (docs/ha.md) and a new
// engine can carry on from it.

// LockRecord is one lock's whole state: what Restore needs to rebuild it.
// Times are wall-clock instants, so that a restored engine re-arms its
// timers for the moments the old one would have fired them.
type LockRecord struct {
	Name    string         `json:"name"`
	Size    int            `json:"size"` // every holder's and waiter's size
	Holders []HolderRecord `json:"holders,omitempty"`
	Waiters []WaiterRecord `json:"waiters,omitempty"`
}

// HolderRecord is one grant, in grant order.
type HolderRecord struct {
	Key         string         `json:"key"`
	Token       uint64         `json:"token"`
	Owner       subjects.Owner `json:"owner,omitzero"`
	Acquired    time.Time      `json:"acquired"`
	Expires     time.Time      `json:"expires,omitzero"` // zero: no lock timeout
	LockTimeout time.Duration  `json:"lock_timeout,omitempty"`
}

// WaiterRecord is one parked Lock, in queue order.
type WaiterRecord struct {
	Key         string         `json:"key"`
	Owner       subjects.Owner `json:"owner,omitzero"`
	Since       time.Time      `json:"since"`
	Deadline    time.Time      `json:"deadline,omitzero"` // zero: waits forever
	LockTimeout time.Duration  `json:"lock_timeout,omitempty"`
	Reply       string         `json:"reply,omitempty"` // Request.Reply
}

// ErrBadRecord is the error of Restore for a record that no engine could
// have made, or of a lock that exists already.
var ErrBadRecord = errors.New("lock record not restorable")

// Record returns the whole state of lock name; ok is false when the lock
// does not exist (nobody holds or waits for it).
func (e *Engine) Record(name string) (r LockRecord, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.locks[name]
	if l == nil || e.closed {
		return LockRecord{}, false
	}
	r = LockRecord{Name: l.name, Size: l.size, Holders: make([]HolderRecord, 0, l.held)}
	for en := l.holders.head; en != nil; en = en.link[inLock].next {
		r.Holders = append(r.Holders, HolderRecord{Key: en.key, Token: en.token, Owner: en.ownerID(),
			Acquired: unixTime(en.start), Expires: unixTime(en.deadline), LockTimeout: en.lockTimeout})
	}
	if l.waiting > 0 {
		r.Waiters = make([]WaiterRecord, 0, l.waiting)
	}
	for en := l.waiters.head; en != nil; en = en.link[inLock].next {
		r.Waiters = append(r.Waiters, WaiterRecord{Key: en.key, Owner: en.ownerID(), Since: unixTime(en.start),
			Deadline: unixTime(en.deadline), LockTimeout: en.wait.lockTimeout, Reply: en.wait.reply})
	}
	return r, true
}

// Restore rebuilds a lock from its record, as it was: holders with their
// keys, tokens and owners, waiters in their order. Timers are re-armed for
// the record's deadlines; one that has passed fires at once. Each restored
// waiter is completed by the callback doneFor returns for it. Later grants
// get tokens above every restored one. Limits are not checked: the state
// was admitted once. Restore calls no done callback and makes no event.
func (e *Engine) Restore(r LockRecord, doneFor func(WaiterRecord) func(Grant, error)) error {
	switch {
	case r.Name == "" || r.Size < 1 || len(r.Holders) == 0 || len(r.Holders) > r.Size:
		return fmt.Errorf("%w: lock %q has size %d and %d holders", ErrBadRecord, r.Name, r.Size, len(r.Holders))
	case len(r.Waiters) > 0 && len(r.Holders) < r.Size:
		return fmt.Errorf("%w: lock %q has waiters and a free slot", ErrBadRecord, r.Name)
	}
	seen := make(map[string]bool, len(r.Holders)+len(r.Waiters))
	for i := range len(r.Holders) + len(r.Waiters) {
		key, token := "", uint64(1)
		if i < len(r.Holders) {
			key, token = r.Holders[i].Key, r.Holders[i].Token
		} else {
			key = r.Waiters[i-len(r.Holders)].Key
		}
		if key == "" || token == 0 || seen[key] {
			return fmt.Errorf("%w: lock %q has an empty or repeated key, or a holder without a token", ErrBadRecord, r.Name)
		}
		seen[key] = true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrEngineClosed
	}
	if e.locks[r.Name] != nil {
		return fmt.Errorf("%w: lock %q exists already", ErrBadRecord, r.Name)
	}
	now := e.clock.Now()
	l := e.newLock(r.Name, r.Size)
	for _, h := range r.Holders {
		en := e.newEntry(l, h.Key, h.Owner)
		en.token, en.start, en.lockTimeout = h.Token, h.Acquired.UnixNano(), h.LockTimeout
		e.lastToken = max(e.lastToken, h.Token)
		l.holders.pushBack(en, inLock)
		l.held++
		e.holders++
		l.indexAdd(en)
		if !h.Expires.IsZero() {
			token, deadline := en.token, h.Expires.UnixNano()
			en.deadline = deadline
			en.timer = e.clock.AfterFunc(h.Expires.Sub(now), func() { e.expire(en, token, deadline) })
		}
	}
	for _, w := range r.Waiters {
		en := e.newEntry(l, w.Key, w.Owner)
		e.lastWait++
		id := e.lastWait
		en.wait = &waitState{id: id, done: doneFor(w), lockTimeout: w.LockTimeout, reply: w.Reply}
		en.start = w.Since.UnixNano()
		l.pushWaiter(en)
		l.indexAdd(en)
		e.waiters++
		if !w.Deadline.IsZero() {
			en.deadline = w.Deadline.UnixNano()
			en.timer = e.clock.AfterFunc(w.Deadline.Sub(now), func() { e.waitExpired(en, id) })
		}
	}
	return nil
}

// LastToken is the fencing token of the latest grant (or the one before
// the first token, before any grant). A grant whose reply waits for a
// record written after this call has a token at most this.
func (e *Engine) LastToken() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastToken
}

// SkipTokens makes later grants' tokens larger than after: a new active
// starts above its predecessor's token ceiling.
func (e *Engine) SkipTokens(after uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastToken = max(e.lastToken, after)
}
