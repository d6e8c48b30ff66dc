package engine

import (
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file holds the engine's internal records and the list operations on
// them. Everything here is guarded by Engine.mu.

// lock is one named semaphore. It exists (is in Engine.locks) only while it
// has a holder or a waiter. Invariant: a lock has waiters only while all its
// slots are taken (held == size).
type lock struct {
	name     string
	size     int
	held     int    // number of holders
	waiting  int    // number of waiters
	holders  *entry // holders, newest first, linked by prev/next
	waitHead *entry // waiters, oldest first, linked by prev/next
	waitTail *entry
	// index maps keys to entries once the lock has more than indexMin
	// holders and waiters, so that key lookups stay cheap for big semaphores
	// and long queues. Small locks, the common case, scan their lists and
	// save the map's memory.
	index map[string]*entry
}

// indexMin is the number of holders and waiters above which a lock indexes
// its keys.
const indexMin = 16

// entry is one request on a lock: a holder (wait == nil, token != 0) or a
// waiter (wait != nil, token == 0). Entries are recycled, so a timer
// identifies its entry by pointer plus token (holders) or wait id (waiters).
type entry struct {
	lock  *lock
	key   string
	owner *owner // nil when the request has no owner
	// prev and next link the entry into its lock's holders or wait queue.
	prev, next *entry
	// ownerPrev and ownerNext link the entry into its owner's entries.
	ownerPrev, ownerNext *entry
	token                uint64     // fencing token while holding
	start                int64      // Unix ns: when granted, or when the wait began
	deadline             int64      // Unix ns: lock expiry, or wait deadline; 0 = none
	timer                Timer      // fires at deadline; nil when there is none
	wait                 *waitState // set while waiting
	// seq is the registration number of an owned request (see
	// Engine.OwnerMark); 0 without an owner.
	seq uint64
}

// waitState is what a waiter needs besides its entry. Only waiters pay for
// it.
type waitState struct {
	id          uint64 // unique for the engine's life
	done        func(Grant, error)
	lockTimeout time.Duration // lock timeout of the grant, once granted
}

// owner is one owner's grants and waits. It exists (is in Engine.owners)
// only while it has at least one.
type owner struct {
	id      subjects.Owner
	entries *entry // linked by ownerPrev/ownerNext, newest first
	oldest  *entry // the last of entries
	n       int    // number of entries
	waits   int    // number of those entries that are waiters
}

// find returns the entry of key on l, holding or waiting, or nil.
func (l *lock) find(key string) *entry {
	if l.index != nil {
		return l.index[key]
	}
	for en := l.holders; en != nil; en = en.next {
		if en.key == key {
			return en
		}
	}
	for en := l.waitHead; en != nil; en = en.next {
		if en.key == key {
			return en
		}
	}
	return nil
}

// indexAdd records a new entry of l (already linked) in the index, building
// the index when l becomes big.
func (l *lock) indexAdd(en *entry) {
	if l.index != nil {
		l.index[en.key] = en
		return
	}
	if l.held+l.waiting <= indexMin {
		return
	}
	l.index = make(map[string]*entry, l.held+l.waiting)
	for e := l.holders; e != nil; e = e.next {
		l.index[e.key] = e
	}
	for e := l.waitHead; e != nil; e = e.next {
		l.index[e.key] = e
	}
}

// indexRemove forgets an entry that leaves l.
func (l *lock) indexRemove(en *entry) {
	if l.index != nil {
		delete(l.index, en.key)
	}
}

func (l *lock) linkHolder(en *entry) {
	en.prev, en.next = nil, l.holders
	if l.holders != nil {
		l.holders.prev = en
	}
	l.holders = en
	l.held++
}

func (l *lock) unlinkHolder(en *entry) {
	if en.prev != nil {
		en.prev.next = en.next
	} else {
		l.holders = en.next
	}
	if en.next != nil {
		en.next.prev = en.prev
	}
	en.prev, en.next = nil, nil
	l.held--
}

func (l *lock) pushWaiter(en *entry) {
	en.prev, en.next = l.waitTail, nil
	if l.waitTail != nil {
		l.waitTail.next = en
	} else {
		l.waitHead = en
	}
	l.waitTail = en
	l.waiting++
	if en.owner != nil {
		en.owner.waits++
	}
}

func (l *lock) unlinkWaiter(en *entry) {
	if en.prev != nil {
		en.prev.next = en.next
	} else {
		l.waitHead = en.next
	}
	if en.next != nil {
		en.next.prev = en.prev
	} else {
		l.waitTail = en.prev
	}
	en.prev, en.next = nil, nil
	l.waiting--
	if en.owner != nil {
		en.owner.waits--
	}
}

// oldestSeq is the registration number of o's oldest request; 0 when it
// has none.
func (o *owner) oldestSeq() uint64 {
	if o.oldest == nil {
		return 0
	}
	return o.oldest.seq
}

func (o *owner) link(en *entry) {
	en.owner = o
	en.ownerPrev, en.ownerNext = nil, o.entries
	if o.entries != nil {
		o.entries.ownerPrev = en
	} else {
		o.oldest = en
	}
	o.entries = en
	o.n++
}

func (o *owner) unlink(en *entry) {
	if en.ownerPrev != nil {
		en.ownerPrev.ownerNext = en.ownerNext
	} else {
		o.entries = en.ownerNext
	}
	if en.ownerNext != nil {
		en.ownerNext.ownerPrev = en.ownerPrev
	} else {
		o.oldest = en.ownerPrev
	}
	en.owner, en.ownerPrev, en.ownerNext = nil, nil, nil
	o.n--
}

// stopTimer cancels en's timer, if any. A timer that could not be stopped
// finds its entry changed when it runs and does nothing.
func (en *entry) stopTimer() {
	if en.timer != nil {
		en.timer.Stop()
		en.timer = nil
	}
}

// unixTime converts a stored Unix ns time back, 0 giving the zero Time.
func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
