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
	name    string
	size    int
	held    int  // number of holders
	waiting int  // number of waiters
	holders list // in grant order, so in token order
	waiters list // the queue, oldest first
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
	// link[inLock] places the entry in its lock's holders or waiters,
	// link[inOwner] in its owner's entries.
	link     [2]links
	token    uint64 // fencing token while holding
	start    int64  // Unix ns: when granted, or when the wait began
	deadline int64  // Unix ns: lock expiry, or wait deadline; 0 = none
	// lockTimeout is the holder's lock timeout (the last renew's), kept
	// for its record (see Record).
	lockTimeout time.Duration
	timer       Timer      // fires at deadline; nil when there is none
	wait        *waitState // set while waiting
	// seq is the registration number of an owned request (see
	// Engine.OwnerMark); 0 without an owner.
	seq uint64
}

// The lists an entry can be in at once, as indexes of entry.link.
const (
	inLock = iota
	inOwner
)

// waitState is what a waiter needs besides its entry. Only waiters pay for
// it.
type waitState struct {
	id          uint64 // unique for the engine's life
	done        func(Grant, error)
	lockTimeout time.Duration // lock timeout of the grant, once granted
	reply       string        // Request.Reply, kept for its record
}

// owner is one owner's grants and waits. It exists (is in Engine.owners)
// only while it has at least one.
type owner struct {
	id      subjects.Owner
	entries list // oldest first
	n       int  // number of entries
	waits   int  // number of those entries that are waiters
}

// links is an entry's place in one list.
type links struct{ prev, next *entry }

// list is a doubly linked list of entries through their link[k], where k is
// inLock or inOwner.
type list struct{ head, tail *entry }

func (ls *list) pushBack(en *entry, k int) {
	en.link[k] = links{prev: ls.tail}
	if ls.tail != nil {
		ls.tail.link[k].next = en
	} else {
		ls.head = en
	}
	ls.tail = en
}

func (ls *list) remove(en *entry, k int) {
	ln := en.link[k]
	if ln.prev != nil {
		ln.prev.link[k].next = ln.next
	} else {
		ls.head = ln.next
	}
	if ln.next != nil {
		ln.next.link[k].prev = ln.prev
	} else {
		ls.tail = ln.prev
	}
	en.link[k] = links{}
}

// find returns the entry of key on l, holding or waiting, or nil.
func (l *lock) find(key string) *entry {
	if l.index != nil {
		return l.index[key]
	}
	for en := l.holders.head; en != nil; en = en.link[inLock].next {
		if en.key == key {
			return en
		}
	}
	for en := l.waiters.head; en != nil; en = en.link[inLock].next {
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
	for e := l.holders.head; e != nil; e = e.link[inLock].next {
		l.index[e.key] = e
	}
	for e := l.waiters.head; e != nil; e = e.link[inLock].next {
		l.index[e.key] = e
	}
}

// indexRemove forgets an entry that leaves l.
func (l *lock) indexRemove(en *entry) {
	if l.index != nil {
		delete(l.index, en.key)
	}
}

func (l *lock) pushWaiter(en *entry) {
	l.waiters.pushBack(en, inLock)
	l.waiting++
	if en.owner != nil {
		en.owner.waits++
	}
}

func (l *lock) unlinkWaiter(en *entry) {
	l.waiters.remove(en, inLock)
	l.waiting--
	if en.owner != nil {
		en.owner.waits--
	}
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
