package engine

import (
	"cmp"
	"slices"
	"time"
)

// LockInfo describes one lock for operators.
type LockInfo struct {
	Name    string
	Size    int
	Holders []HolderInfo // in grant order
	Waiters []WaiterInfo // in queue order, next to be granted first
}

// HolderInfo describes one grant. Key is the holder's secret: show it only
// to those allowed to unlock.
type HolderInfo struct {
	Key        string
	Token      uint64
	Owner      string
	AcquiredAt time.Time
	ExpiresAt  time.Time // zero when the grant has no lock timeout
}

// WaiterInfo describes one parked Lock request.
type WaiterInfo struct {
	Key      string
	Owner    string
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

// Snapshot returns every lock, sorted by name. It copies the whole table
// under the mutex, so it is for operators, not for every request.
func (e *Engine) Snapshot() []LockInfo {
	e.mu.Lock()
	infos := make([]LockInfo, 0, len(e.locks))
	for _, l := range e.locks {
		info := LockInfo{Name: l.name, Size: l.size, Holders: make([]HolderInfo, 0, l.held)}
		for en := l.holders; en != nil; en = en.next {
			info.Holders = append(info.Holders, HolderInfo{
				Key:        en.key,
				Token:      en.token,
				Owner:      en.ownerName(),
				AcquiredAt: unixTime(en.start),
				ExpiresAt:  unixTime(en.deadline),
			})
		}
		if l.waiting > 0 {
			info.Waiters = make([]WaiterInfo, 0, l.waiting)
		}
		for en := l.waitHead; en != nil; en = en.next {
			info.Waiters = append(info.Waiters, WaiterInfo{
				Key:      en.key,
				Owner:    en.ownerName(),
				Since:    unixTime(en.start),
				Deadline: unixTime(en.deadline),
			})
		}
		infos = append(infos, info)
	}
	e.mu.Unlock()

	slices.SortFunc(infos, func(a, b LockInfo) int { return cmp.Compare(a.Name, b.Name) })
	for _, info := range infos {
		slices.SortFunc(info.Holders, func(a, b HolderInfo) int { return cmp.Compare(a.Token, b.Token) })
	}
	return infos
}

// Stats returns the current counts.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Stats{Locks: len(e.locks), Holders: e.holders, Waiters: e.waiters, Owners: len(e.owners)}
}

func (en *entry) ownerName() string {
	if en.owner == nil {
		return ""
	}
	return en.owner.name
}
