package engine

import (
	"math"
	"slices"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// LockInfo describes one lock for operators.
type LockInfo struct {
	Name    string
	Size    int
	Holders []HolderInfo // in grant order
	Waiters []WaiterInfo // in queue order, next to be granted first
	// HeldTotal and WaitingTotal count all holders and waiters; Page may
	// list fewer of them.
	HeldTotal, WaitingTotal int
}

// HolderInfo describes one grant. Key is the holder's secret: show it only
// to those allowed to unlock.
type HolderInfo struct {
	Key        string
	Token      uint64
	Owner      subjects.Owner
	AcquiredAt time.Time
	ExpiresAt  time.Time // zero when the grant has no lock timeout
}

// WaiterInfo describes one parked Lock request.
type WaiterInfo struct {
	Key      string
	Owner    subjects.Owner
	Since    time.Time
	Deadline time.Time // end of the wait timeout; zero when it waits forever
}

// Stats counts what the engine holds, for metrics and limits.
type Stats struct {
	Locks   int // locks that exist (have a holder or a waiter)
	Holders int // grants, over all locks
	Waiters int // parked Lock requests, over all locks
	Owners  int // owners with at least one grant or wait
}

// Snapshot returns every lock, sorted by name, with all its holders and
// waiters: Page without bounds, for tests and small tables.
func (e *Engine) Snapshot() []LockInfo {
	infos, _ := e.Page("", math.MaxInt, nil, math.MaxInt)
	return infos
}

// Stats returns the current counts.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Stats{Locks: len(e.locks), Holders: e.holders, Waiters: e.waiters, Owners: len(e.owners)}
}

func (en *entry) ownerID() subjects.Owner {
	if en.owner == nil {
		return subjects.Owner{}
	}
	return en.owner.id
}

// Page returns, sorted by name, up to limit locks whose names sort after
// after and for which match returns true (nil matches all), each with at
// most maxEntries holders and maxEntries waiters (Stats-like totals are in
// HeldTotal and WaitingTotal); more reports that further locks match. It is
// how operators list a big table a page at a time: copying only the names
// is done under the mutex, picking the page outside it, and then only the
// page's locks are copied. match is called with the mutex held, so it must
// be quick and must not call the engine.
func (e *Engine) Page(after string, limit int, match func(name string) bool, maxEntries int) (infos []LockInfo, more bool) {
	if limit < 1 {
		return nil, false
	}
	e.mu.Lock()
	names := make([]string, 0, min(len(e.locks), 4096))
	for name := range e.locks {
		if name > after && (match == nil || match(name)) {
			names = append(names, name)
		}
	}
	e.mu.Unlock()

	page := smallest(names, limit)
	more = len(names) > len(page)

	e.mu.Lock()
	infos = make([]LockInfo, 0, len(page))
	for _, name := range page {
		l := e.locks[name]
		if l == nil {
			continue // released meanwhile
		}
		info := LockInfo{Name: l.name, Size: l.size, HeldTotal: l.held, WaitingTotal: l.waiting}
		// The newest holders, if not all: walk back, and reverse below.
		for en := l.holders.tail; en != nil && len(info.Holders) < maxEntries; en = en.link[inLock].prev {
			info.Holders = append(info.Holders, HolderInfo{Key: en.key, Token: en.token, Owner: en.ownerID(),
				AcquiredAt: unixTime(en.start), ExpiresAt: unixTime(en.deadline)})
		}
		for en := l.waiters.head; en != nil && len(info.Waiters) < maxEntries; en = en.link[inLock].next {
			info.Waiters = append(info.Waiters, WaiterInfo{Key: en.key, Owner: en.ownerID(),
				Since: unixTime(en.start), Deadline: unixTime(en.deadline)})
		}
		infos = append(infos, info)
	}
	e.mu.Unlock()
	for _, info := range infos {
		slices.Reverse(info.Holders)
	}
	return infos, more
}

// smallest returns the n smallest of names, sorted. It keeps a sorted
// slice of the best so far: with names in map order, few of them enter it
// once it is full, so this costs about len(names) comparisons rather than a
// sort of all names.
func smallest(names []string, n int) []string {
	if n >= len(names) {
		slices.Sort(names)
		return names
	}
	best := make([]string, 0, min(n, len(names)))
	for _, name := range names {
		if len(best) == n && name >= best[n-1] {
			continue
		}
		i, _ := slices.BinarySearch(best, name)
		if len(best) == n {
			best = best[:n-1]
		}
		best = slices.Insert(best, i, name)
	}
	return best
}
