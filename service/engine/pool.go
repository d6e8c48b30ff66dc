package engine

import (
	"encoding/binary"
	"encoding/hex"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file makes and recycles the engine's records: locks, entries and
// owners come from bounded free lists, so that a lock and unlock cycle
// allocates nothing; and it makes the keys.

// newLock creates lock name and adds it to the table.
func (e *Engine) newLock(name string, size int) *lock {
	var l *lock
	if n := len(e.freeLocks); n > 0 {
		l = e.freeLocks[n-1]
		e.freeLocks[n-1] = nil
		e.freeLocks = e.freeLocks[:n-1]
	} else {
		l = new(lock)
	}
	l.name, l.size = name, size
	e.locks[name] = l
	return l
}

// forgetIfIdle removes l from the table when it has neither holders nor
// waiters.
func (e *Engine) forgetIfIdle(l *lock) {
	if l.held > 0 || l.waiting > 0 {
		return
	}
	delete(e.locks, l.name)
	*l = lock{}
	if len(e.freeLocks) < maxFree {
		e.freeLocks = append(e.freeLocks, l)
	}
}

// newEntry returns an entry of key on l, registered with its owner but not
// yet linked into l: grant or the queue does that.
func (e *Engine) newEntry(l *lock, key string, id subjects.Owner) *entry {
	var en *entry
	if n := len(e.freeEntries); n > 0 {
		en = e.freeEntries[n-1]
		e.freeEntries[n-1] = nil
		e.freeEntries = e.freeEntries[:n-1]
	} else {
		en = new(entry)
	}
	en.lock, en.key = l, key
	if !id.IsZero() {
		o := e.owners[id]
		if o == nil {
			if n := len(e.freeOwners); n > 0 {
				o = e.freeOwners[n-1]
				e.freeOwners[n-1] = nil
				e.freeOwners = e.freeOwners[:n-1]
			} else {
				o = new(owner)
			}
			o.id = id
			e.owners[id] = o
		}
		e.lastSeq++
		en.seq = e.lastSeq
		o.link(en)
	}
	return en
}

// disown removes en from its owner, forgetting an owner left with nothing
// and clearing its record for reuse.
func (e *Engine) disown(en *entry) {
	o := en.owner
	if o == nil {
		return
	}
	o.unlink(en)
	if o.n == 0 {
		delete(e.owners, o.id)
		*o = owner{}
		if len(e.freeOwners) < maxFree {
			e.freeOwners = append(e.freeOwners, o)
		}
	}
}

// freeEntry clears en, which is in no list any more, for reuse. Clearing
// token and wait is what makes stale timers of en do nothing.
func (e *Engine) freeEntry(en *entry) {
	*en = entry{}
	if len(e.freeEntries) < maxFree {
		e.freeEntries = append(e.freeEntries, en)
	}
}

// newKey returns 128 random bits as 32 lowercase hex characters.
func (e *Engine) newKey() string {
	var raw [16]byte
	binary.LittleEndian.PutUint64(raw[:8], e.keys.Uint64())
	binary.LittleEndian.PutUint64(raw[8:], e.keys.Uint64())
	var buf [32]byte
	hex.Encode(buf[:], raw[:])
	return string(buf[:])
}
