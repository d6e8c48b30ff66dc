package engine

import (
	"cmp"
	"math"
	"slices"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file ends what an owner (a client connection) holds when it goes
// away: ReleaseOwner on the server's word, ReleaseStaleOwners for a sweep.

// OwnerState is a sweep's verdict on an owner (see ReleaseStaleOwners).
type OwnerState uint8

const (
	// OwnerLive: the owner's connection is open; keep its requests.
	OwnerLive OwnerState = iota
	// OwnerClosed: the connection existed and has closed. Its requests are
	// released, and the owner is remembered as gone (see
	// WithGoneOwnerMemory): a request of it that arrives later fails with
	// ErrOwnerGone.
	OwnerClosed
	// OwnerUnknown: no such connection is known to exist, for instance an
	// owner claimed for a client id its server has not handed out yet.
	// Its requests are released but the owner is not remembered, so that
	// the connection that gets that id later is served.
	OwnerUnknown
)

// OwnerMark returns the registration number of the latest request made
// by an owner. Requests made later get larger numbers; pass the mark to
// ReleaseStaleOwners.
func (e *Engine) OwnerMark() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastSeq
}

// ReleaseOwner releases every grant and drops every wait of owner (whose
// done callbacks get ErrOwnerGone), and forgets the owner. It returns how
// many of each it ended. With WithGoneOwnerMemory, the owner's requests
// that arrive soon after are refused, even if it had nothing here: they
// were sent before it went away.
func (e *Engine) ReleaseOwner(owner subjects.Owner) (grants, waits int) {
	e.mu.Lock()
	var notes []notification
	if !e.closed {
		e.gone.add(owner, e.clock.Now())
		if o := e.owners[owner]; o != nil {
			// At least one note per entry when events are on: sized once
			// rather than grown append by append (an owner may hold 100k).
			if e.onEvent != nil {
				notes = make([]notification, 0, o.n)
			}
			grants, waits, notes = e.releaseOwner(o, math.MaxUint64, notes)
		}
	}
	e.mu.Unlock()
	e.notify(notes)
	return grants, waits
}

// ReleaseStaleOwners releases the grants and waits that owners made at or
// before mark, of every such owner for which state returns OwnerClosed or
// OwnerUnknown, and returns those owners' names, sorted. An owner judged
// OwnerClosed is remembered as gone, as ReleaseOwner does.
//
// The intended sweep: take mark := OwnerMark(), then list the live
// connections, then call ReleaseStaleOwners(mark, judgeByThatList). A
// request made after the mark may come from a connection missing from the
// list only because the list was taken before it connected, so it is
// spared, and judged by the next sweep. Marks are per request, not per
// owner: an owner's requests after the mark are spared too.
//
// state is called without the engine's mutex held, once per owner with a
// request at or before mark, on the calling goroutine.
func (e *Engine) ReleaseStaleOwners(mark uint64, state func(subjects.Owner) OwnerState) []subjects.Owner {
	e.mu.Lock()
	var candidates []subjects.Owner
	for name, o := range e.owners {
		if o.entries.head.seq <= mark { // its oldest request (an owner has one at least)
			candidates = append(candidates, name)
		}
	}
	e.mu.Unlock()

	dead := map[subjects.Owner]OwnerState{}
	for _, name := range candidates {
		if st := state(name); st != OwnerLive {
			dead[name] = st
		}
	}
	if len(dead) == 0 {
		return nil
	}

	e.mu.Lock()
	var released []subjects.Owner
	var notes []notification
	now := e.clock.Now()
	for name, st := range dead {
		o := e.owners[name]
		if o == nil || e.closed || o.entries.head.seq > mark {
			continue // gone meanwhile, or only new requests since the mark
		}
		_, _, notes = e.releaseOwner(o, mark, notes)
		if e.owners[name] == nil && st == OwnerClosed {
			e.gone.add(name, now)
		}
		released = append(released, name)
	}
	e.mu.Unlock()
	e.notify(notes)
	slices.SortFunc(released, compareOwners)
	return released
}

// releaseOwner drops the waits and releases the grants of o made at or
// before mark, and says how many of each it ended.
func (e *Engine) releaseOwner(o *owner, mark uint64, notes []notification) (grants, waits int, _ []notification) {
	var old []*entry
	for en := o.entries.tail; en != nil; en = en.link[inOwner].prev { // newest first
		if en.seq <= mark {
			old = append(old, en)
		}
	}
	// Drop the waits first, so that the slots released below go to other
	// owners' waiters and never to these. A dropped entry is cleared for
	// reuse (lock nil), which the second loop skips.
	for _, en := range old {
		if en.wait != nil {
			notes = e.dropWaiter(en, ErrOwnerGone, notes)
			waits++
		}
	}
	for _, en := range old {
		if en.lock != nil {
			notes = e.release(en, EventOwnerGone, notes)
			grants++
		}
	}
	return grants, waits, notes
}

// compareOwners orders owners by server id, then client id, then session.
func compareOwners(a, b subjects.Owner) int {
	return cmp.Or(cmp.Compare(a.ServerID, b.ServerID), cmp.Compare(a.ClientID, b.ClientID), cmp.Compare(a.Session, b.Session))
}
