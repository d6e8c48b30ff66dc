package engine

import "time"

// recent is a set of keys that each stay in it for a fixed time after they
// were added, bounded in count: when it is full, adding a key first drops
// the oldest one. The engine keeps the owners it released in one, to refuse
// their requests that arrive after the release (see WithGoneOwnerMemory).
// It is guarded by Engine.mu.
type recent[K comparable] struct {
	window time.Duration // 0: the set is off and stays empty
	max    int
	until  map[K]int64 // Unix ns after which the key no longer counts
	// order holds the keys in the order they were added, oldest at head;
	// a key added again is in it twice, and only the entry whose expiry
	// matches until[k] removes it from the map.
	order []recentItem[K]
	head  int
}

type recentItem[K comparable] struct {
	key   K
	until int64
}

// add remembers k until now + window.
func (r *recent[K]) add(k K, now time.Time) {
	if r.window <= 0 {
		return
	}
	r.prune(now)
	// Every key held has an item in order, so bounding the items bounds
	// the keys too.
	for len(r.order)-r.head >= r.max && r.head < len(r.order) {
		r.dropOldest()
	}
	if r.until == nil {
		r.until = make(map[K]int64)
	}
	until := now.Add(r.window).UnixNano()
	r.until[k] = until
	r.order = append(r.order, recentItem[K]{key: k, until: until})
}

// has reports whether k is remembered at now.
func (r *recent[K]) has(k K, now time.Time) bool {
	if len(r.until) == 0 {
		return false
	}
	until, ok := r.until[k]
	return ok && now.UnixNano() < until
}

// prune drops the keys whose time has passed.
func (r *recent[K]) prune(now time.Time) {
	ns := now.UnixNano()
	for r.head < len(r.order) && r.order[r.head].until <= ns {
		r.dropOldest()
	}
}

// dropOldest removes the head of order, and its key unless it was added
// again later.
func (r *recent[K]) dropOldest() {
	it := r.order[r.head]
	r.order[r.head] = recentItem[K]{}
	r.head++
	if r.until[it.key] == it.until {
		delete(r.until, it.key)
	}
	// Reuse the slice's front once half of it is spent, so that it does
	// not grow without end.
	if r.head > len(r.order)/2 {
		n := copy(r.order, r.order[r.head:])
		clear(r.order[n:])
		r.order, r.head = r.order[:n], 0
	}
}
