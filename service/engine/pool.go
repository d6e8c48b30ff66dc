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
	l := reuse(&e.freeLocks)
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
	recycle(&e.freeLocks, l)
}

// newEntry returns an entry of key on l, registered with its owner but not
// yet linked into l: grant or the queue does that.
func (e *Engine) newEntry(l *lock, key string, id subjects.Owner) *entry {
	en := reuse(&e.freeEntries)
	en.lock, en.key = l, key
	if !id.IsZero() {
		o := e.owners[id]
		if o == nil {
			o = reuse(&e.freeOwners)
			o.id = id
			e.owners[id] = o
		}
		e.lastSeq++
		en.seq = e.lastSeq
		en.owner = o
		o.entries.pushBack(en, inOwner)
		o.n++
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
	o.entries.remove(en, inOwner)
	o.n--
	if o.n == 0 {
		delete(e.owners, o.id)
		recycle(&e.freeOwners, o)
	}
}

// reuse takes a record from a free list, or makes one.
func reuse[T any](free *[]*T) *T {
	n := len(*free)
	if n == 0 {
		return new(T)
	}
	r := (*free)[n-1]
	(*free)[n-1] = nil
	*free = (*free)[:n-1]
	return r
}

// recycle clears r and keeps it on a free list, unless the list is full.
func recycle[T any](free *[]*T, r *T) {
	var zero T
	*r = zero
	if len(*free) < maxFree {
		*free = append(*free, r)
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
