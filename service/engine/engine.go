package engine

import (
	"cmp"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Request asks for one slot of a lock.
type Request struct {
	Name string
	// Key is the holder's secret. Empty: the engine generates one. Choose it
	// yourself for a blocking Lock, so that you can cancel with Unlock.
	Key string
	// Size is the number of slots of the lock; 0 means 1.
	Size int
	// Owner is who the grant or wait belongs to, for ReleaseOwner; "" means
	// nobody.
	Owner string
	// LockTimeout releases the grant unless it is renewed in time; 0 means
	// never.
	LockTimeout time.Duration
}

// Grant is a slot of a lock, held until Unlock, expiry or ReleaseOwner.
type Grant struct {
	Name  string
	Key   string
	Token uint64 // fencing token, larger than every earlier grant's
	Size  int
	// ExpiresAt is when the grant is released unless renewed; zero when it
	// has no lock timeout.
	ExpiresAt time.Time
}

// UnlockResult says what an Unlock did, since an Unlock with a waiter's key
// is a cancellation.
type UnlockResult uint8

const (
	// Released: the key held a slot, which is now free.
	Released UnlockResult = iota + 1
	// Cancelled: the key was waiting; its wait was cancelled and its done
	// callback called with ErrWaitCancelled.
	Cancelled
)

// String returns "released", "cancelled", or "none" for the zero value
// that comes with an error.
func (r UnlockResult) String() string {
	switch r {
	case Released:
		return "released"
	case Cancelled:
		return "cancelled"
	}
	return "none"
}

// Option configures an Engine in New.
type Option func(*Engine)

// WithClock makes the engine read time and run timeouts on c instead of the
// time package; tests pass a FakeClock.
func WithClock(c Clock) Option {
	return func(e *Engine) { e.clock = c }
}

// WithEvents makes the engine call f for every grant, release and end of a
// wait (see Event). f runs outside the engine's mutex, on the goroutine
// that caused the event, in the order the events happened for any one lock;
// like a done callback it must be quick. Without it, the engine builds no
// events at all.
func WithEvents(f func(Event)) Option {
	return func(e *Engine) { e.onEvent = f }
}

// Limits bound what clients can make the engine hold, so that a runaway or
// hostile client meets a clear error (ErrLimitExceeded) instead of growing
// the server's memory without end. Zero fields mean no limit.
type Limits struct {
	MaxLocks          int // locks that exist at once
	MaxWaitersPerLock int // parked requests on one lock
	MaxWaitsPerOwner  int // parked requests of one owner, over all locks
}

// WithLimits sets the engine's limits.
func WithLimits(l Limits) Option {
	return func(e *Engine) { e.limits = l }
}

// WithGoneOwnerMemory makes the engine remember, for window, the owners
// that ReleaseOwner released and those that ReleaseStaleOwners judged
// OwnerClosed, at most max of them (the oldest go first), and refuse their
// Lock and TryLock with ErrOwnerGone meanwhile. The service learns that a
// connection closed on another NATS connection than the one its requests
// come on, so a request sent just before the close can be read after it:
// without this memory it would make a grant that nobody would ever
// release. Without it (or with window 0) the engine remembers nothing.
func WithGoneOwnerMemory(window time.Duration, max int) Option {
	return func(e *Engine) {
		e.gone = recent[string]{window: window, max: cmp.Or(max, 1)}
	}
}

// WithFirstToken makes the first grant's fencing token t instead of 1. A
// server that starts it from the clock (in microseconds) keeps tokens
// growing across its restarts, as long as the clock does not go back and it
// made fewer than a million grants a second on average.
func WithFirstToken(t uint64) Option {
	return func(e *Engine) {
		if t > 0 {
			e.lastToken = t - 1
		}
	}
}

// Engine is the lock table. It is safe for concurrent use.
type Engine struct {
	clock   Clock
	onEvent func(Event) // nil: no events
	limits  Limits

	// mu guards all the fields below and every lock, entry and owner record
	// reachable from them; nothing else in the engine is mutable. Done
	// callbacks and the alive function of ReleaseStaleOwners are always
	// called with mu released. Clock.Now, Clock.AfterFunc and Timer.Stop are
	// called with mu held; the timer functions take mu themselves.
	mu        sync.Mutex
	closed    bool
	locks     map[string]*lock
	owners    map[string]*owner
	lastToken uint64 // fencing token of the latest grant
	lastWait  uint64 // id of the latest waiter
	lastSeq   uint64 // registration number of the latest owned request (entry.seq)
	holders   int    // holders of all locks
	waiters   int    // waiters of all locks
	keys      *rand.ChaCha8
	// gone holds the owners released; see WithGoneOwnerMemory.
	gone recent[string]

	// Free lists of records, so that a lock and unlock cycle allocates
	// nothing. Bounded so that a burst does not pin memory.
	freeLocks   []*lock
	freeEntries []*entry
	freeOwners  []*owner
}

// maxFree bounds each free list.
const maxFree = 256

// New returns an empty engine on the real clock unless an option says
// otherwise.
func New(opts ...Option) *Engine {
	var seed [32]byte
	crand.Read(seed[:]) // never fails (it crashes the program instead)
	e := &Engine{
		clock:  realClock{},
		locks:  make(map[string]*lock),
		owners: make(map[string]*owner),
		keys:   rand.NewChaCha8(seed),
	}
	for _, opt := range opts {
		opt(e)
	}
	return e
}

// notification is a done call and/or an event to deliver once the mutex
// is released.
type notification struct {
	done  func(Grant, error) // nil: only an event
	grant Grant
	err   error
	event Event // Kind 0: no event
}

func (e *Engine) notify(ns []notification) {
	for _, n := range ns {
		if n.event.Kind != 0 && e.onEvent != nil {
			e.onEvent(n.event)
		}
		if n.done != nil {
			n.done(n.grant, n.err)
		}
	}
}

// event appends ev to notes when someone listens for events; the check
// keeps the lock path free of the work when nobody does.
func (e *Engine) event(notes []notification, ev Event) []notification {
	if e.onEvent == nil {
		return notes
	}
	return append(notes, notification{event: ev})
}

// grantEvent reports a grant made at once, outside the mutex.
func (e *Engine) grantEvent(r Request, g Grant) {
	if e.onEvent != nil {
		e.onEvent(Event{Kind: EventGranted, Name: g.Name, Token: g.Token, Owner: r.Owner})
	}
}

// TryLock takes a slot of the lock if one is free. ok is false, without
// error, when all slots are taken.
func (e *Engine) TryLock(r Request) (g Grant, ok bool, err error) {
	size, err := r.check()
	if err != nil {
		return Grant{}, false, err
	}
	e.mu.Lock()
	g, ok, err = e.acquire(r, size, false, 0, nil)
	e.mu.Unlock()
	if ok {
		e.grantEvent(r, g)
	}
	return g, ok, err
}

// Lock takes a slot of the lock, or joins the end of its queue of waiters
// when all slots are taken. It never blocks:
//
//   - granted now: it returns (g, true, nil) and never calls done;
//   - parked: it returns (Grant{}, false, nil) and calls done exactly once
//     later, with the grant, or with ErrWaitTimeout after waitTimeout (0:
//     wait forever), ErrWaitCancelled, ErrOwnerGone or ErrEngineClosed;
//   - invalid request: it returns the error and never calls done.
//
// done may run before Lock returns, on another goroutine. It runs outside
// the engine's mutex and may call the engine, but it delays whoever freed
// the slot (an Unlock, a timer), so it should be quick and must not panic.
func (e *Engine) Lock(r Request, waitTimeout time.Duration, done func(Grant, error)) (g Grant, ok bool, err error) {
	if done == nil {
		panic("engine: Lock needs a done callback")
	}
	size, err := r.check()
	if err != nil {
		return Grant{}, false, err
	}
	if waitTimeout < 0 {
		return Grant{}, false, fmt.Errorf("%w: wait timeout %v", ErrInvalidTimeout, waitTimeout)
	}
	e.mu.Lock()
	g, ok, err = e.acquire(r, size, true, waitTimeout, done)
	e.mu.Unlock()
	if ok {
		e.grantEvent(r, g)
	}
	return g, ok, err
}

// check validates r and returns its effective size.
func (r *Request) check() (int, error) {
	if r.Name == "" {
		return 0, ErrInvalidLockName
	}
	size := r.Size
	if size == 0 {
		size = 1
	}
	if size < 1 {
		return 0, fmt.Errorf("%w: size %d", ErrInvalidLockSize, r.Size)
	}
	if r.LockTimeout < 0 {
		return 0, fmt.Errorf("%w: lock timeout %v", ErrInvalidTimeout, r.LockTimeout)
	}
	return size, nil
}

// acquire is TryLock (park false) and Lock (park true) under mu.
func (e *Engine) acquire(r Request, size int, park bool, waitTimeout time.Duration, done func(Grant, error)) (Grant, bool, error) {
	if e.closed {
		return Grant{}, false, ErrEngineClosed
	}
	now := e.clock.Now()
	if r.Owner != "" && e.gone.has(r.Owner, now) {
		return Grant{}, false, fmt.Errorf("%w (it closed before this request arrived)", ErrOwnerGone)
	}
	l := e.locks[r.Name]
	if l != nil {
		if l.size != size {
			return Grant{}, false, fmt.Errorf("%w: it has size %d, the request %d", ErrLockSizeMismatch, l.size, size)
		}
		if r.Key != "" && l.find(r.Key) != nil {
			return Grant{}, false, ErrKeyInUse
		}
		if l.held >= l.size {
			if !park {
				return Grant{}, false, nil
			}
			if err := e.checkWaitLimits(l, r.Owner); err != nil {
				return Grant{}, false, err
			}
		}
	} else {
		if e.limits.MaxLocks > 0 && len(e.locks) >= e.limits.MaxLocks {
			return Grant{}, false, fmt.Errorf("%w: the server holds %d locks, its limit", ErrLimitExceeded, len(e.locks))
		}
		l = e.newLock(r.Name, size)
	}
	key := r.Key
	if key == "" {
		// 128 random bits: a collision with another key of this lock is
		// not a practical possibility, so it is not checked.
		key = e.newKey()
	}
	en := e.newEntry(l, key, r.Owner)
	if l.held < l.size {
		g := e.grant(en, now, r.LockTimeout)
		// Every new entry goes into the index, holders included: a big
		// semaphore keeps its index while it has many entries, and a
		// holder missing from it could not unlock or renew.
		l.indexAdd(en)
		return g, true, nil
	}
	e.lastWait++
	id := e.lastWait
	en.wait = &waitState{id: id, done: done, lockTimeout: r.LockTimeout}
	en.start = now.UnixNano()
	l.pushWaiter(en)
	l.indexAdd(en)
	e.waiters++
	if waitTimeout > 0 {
		en.deadline = now.Add(waitTimeout).UnixNano()
		en.timer = e.clock.AfterFunc(waitTimeout, func() { e.waitExpired(en, id) })
	}
	return Grant{}, false, nil
}

// checkWaitLimits reports whether one more request of owner may wait for l.
func (e *Engine) checkWaitLimits(l *lock, ownerName string) error {
	if max := e.limits.MaxWaitersPerLock; max > 0 && l.waiting >= max {
		return fmt.Errorf("%w: the lock has %d waiters, the limit", ErrLimitExceeded, l.waiting)
	}
	if max := e.limits.MaxWaitsPerOwner; max > 0 && ownerName != "" {
		if o := e.owners[ownerName]; o != nil && o.waits >= max {
			return fmt.Errorf("%w: this connection waits for %d locks, the limit", ErrLimitExceeded, o.waits)
		}
	}
	return nil
}

// grant makes en, new or a waiter just taken off the queue, a holder of
// its lock, with a new fencing token.
func (e *Engine) grant(en *entry, now time.Time, lockTimeout time.Duration) Grant {
	l := en.lock
	e.lastToken++
	en.token = e.lastToken
	en.start = now.UnixNano()
	en.deadline = 0
	en.wait = nil
	l.linkHolder(en)
	e.holders++
	g := Grant{Name: l.name, Key: en.key, Token: en.token, Size: l.size}
	if lockTimeout > 0 {
		g.ExpiresAt = e.armExpiry(en, now, lockTimeout)
	}
	return g
}

// armExpiry starts the lock timeout of holder en and returns the expiry.
func (e *Engine) armExpiry(en *entry, now time.Time, d time.Duration) time.Time {
	expiry := now.Add(d)
	en.deadline = expiry.UnixNano()
	token, deadline := en.token, en.deadline
	en.timer = e.clock.AfterFunc(d, func() { e.expire(en, token, deadline) })
	return expiry
}

// expire is the lock timeout of a grant. The grant is identified by its
// token, unique for the engine's life, and by the deadline, which a Renew
// changes: if either differs, the entry was released, recycled or renewed
// since this timer was started, and there is nothing to do.
func (e *Engine) expire(en *entry, token uint64, deadline int64) {
	e.mu.Lock()
	var notes []notification
	if !e.closed && en.token == token && en.deadline == deadline {
		en.timer = nil // it is this timer that fired
		notes = e.release(en, EventExpired, nil)
	}
	e.mu.Unlock()
	e.notify(notes)
}

// waitExpired is the wait timeout of a waiter, identified by its wait id.
func (e *Engine) waitExpired(en *entry, id uint64) {
	e.mu.Lock()
	var notes []notification
	if !e.closed && en.wait != nil && en.wait.id == id {
		en.timer = nil
		notes = e.dropWaiter(en, ErrWaitTimeout, nil)
	}
	e.mu.Unlock()
	e.notify(notes)
}

// Unlock releases the slot that key holds, or, if key is waiting for the
// lock, cancels that wait. Both succeed, so a client that gave up waiting
// can clean up with one call whether or not the grant raced in.
func (e *Engine) Unlock(name, key string) (UnlockResult, error) {
	if name == "" {
		return 0, ErrInvalidLockName
	}
	e.mu.Lock()
	res, notes, err := e.unlock(name, key)
	e.mu.Unlock()
	e.notify(notes)
	return res, err
}

func (e *Engine) unlock(name, key string) (UnlockResult, []notification, error) {
	if e.closed {
		return 0, nil, ErrEngineClosed
	}
	l := e.locks[name]
	var en *entry
	if l != nil {
		en = l.find(key)
	}
	switch {
	case l == nil:
		return 0, nil, ErrLockDoesNotExist
	case en != nil && en.wait == nil:
		return Released, e.release(en, EventReleased, nil), nil
	case en != nil:
		return Cancelled, e.dropWaiter(en, ErrWaitCancelled, nil), nil
	case l.held == 0:
		return 0, nil, ErrNotLocked
	default:
		return 0, nil, ErrInvalidLockKey
	}
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
	if e.closed {
		return Grant{}, ErrEngineClosed
	}
	l := e.locks[name]
	if l == nil {
		return Grant{}, ErrLockDoesNotExist
	}
	en := l.find(key)
	switch {
	case en != nil && en.wait != nil:
		return Grant{}, fmt.Errorf("%w: the key is still waiting", ErrNotLocked)
	case en == nil && l.held == 0:
		return Grant{}, ErrNotLocked
	case en == nil:
		return Grant{}, ErrInvalidLockKey
	}
	en.stopTimer()
	expiry := e.armExpiry(en, e.clock.Now(), lockTimeout)
	return Grant{Name: l.name, Key: en.key, Token: en.token, Size: l.size, ExpiresAt: expiry}, nil
}

// release frees the slot of holder en, hands free slots to waiters, and
// forgets the lock if it is left empty. It appends the resulting done calls
// and events, the release being of kind why, to notes.
func (e *Engine) release(en *entry, why EventKind, notes []notification) []notification {
	l := en.lock
	if e.onEvent != nil {
		notes = e.event(notes, Event{Kind: why, Name: l.name, Token: en.token, Owner: en.ownerName(),
			Duration: e.clock.Now().Sub(unixTime(en.start))})
	}
	en.stopTimer()
	l.unlinkHolder(en)
	l.indexRemove(en)
	e.holders--
	e.disown(en)
	e.freeEntry(en)
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
		n.event = Event{Kind: waitEndKind(err), Name: l.name, Owner: en.ownerName(),
			Duration: e.clock.Now().Sub(unixTime(en.start))}
	}
	notes = append(notes, n)
	en.stopTimer()
	l.unlinkWaiter(en)
	l.indexRemove(en)
	e.waiters--
	e.disown(en)
	e.freeEntry(en)
	e.forgetIfIdle(l)
	return notes
}

// promote grants free slots of l to its oldest waiters.
func (e *Engine) promote(l *lock, notes []notification) []notification {
	if l.waitHead == nil || l.held >= l.size {
		return notes
	}
	now := e.clock.Now()
	for l.waitHead != nil && l.held < l.size {
		en := l.waitHead
		ws := en.wait
		waited := now.Sub(unixTime(en.start))
		en.stopTimer()
		l.unlinkWaiter(en)
		e.waiters--
		g := e.grant(en, now, ws.lockTimeout)
		n := notification{done: ws.done, grant: g}
		if e.onEvent != nil {
			n.event = Event{Kind: EventGranted, Name: l.name, Token: g.Token, Owner: en.ownerName(), Duration: waited}
		}
		notes = append(notes, n)
	}
	return notes
}

// ReleaseOwner releases every grant and drops every wait of owner (whose
// done callbacks get ErrOwnerGone), and forgets the owner. It returns how
// many of each it ended. With WithGoneOwnerMemory, the owner's requests
// that arrive soon after are refused, even if it had nothing here: they
// were sent before it went away.
func (e *Engine) ReleaseOwner(owner string) (grants, waits int) {
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
			grants, waits, notes = e.releaseOwner(o, notes)
		}
	}
	e.mu.Unlock()
	e.notify(notes)
	return grants, waits
}

func (e *Engine) releaseOwner(o *owner, notes []notification) (grants, waits int, _ []notification) {
	// Drop the waits first, so that the slots released below go to other
	// owners' waiters and never to this owner's.
	for en := o.entries; en != nil; {
		next := en.ownerNext
		if en.wait != nil {
			notes = e.dropWaiter(en, ErrOwnerGone, notes)
			waits++
		}
		en = next
	}
	// When its last entry goes, o is cleared for reuse, which ends the loop.
	for o.entries != nil {
		notes = e.release(o.entries, EventOwnerGone, notes)
		grants++
	}
	return grants, waits, notes
}

// ForceUnlock releases grants of lock name for an operator: the one with
// key, else the one with token, else (both empty) every holder. Waiters
// are granted the freed slots as usual. It returns the released grants'
// tokens, which fail with ErrInvalidLockKey when neither key nor token
// matches a holder.
func (e *Engine) ForceUnlock(name, key string, token uint64) ([]uint64, error) {
	e.mu.Lock()
	var (
		notes    []notification
		released []uint64
	)
	err := func() error {
		if e.closed {
			return ErrEngineClosed
		}
		l := e.locks[name]
		if l == nil {
			return ErrLockDoesNotExist
		}
		var victims []*entry
		for en := l.holders; en != nil; en = en.next {
			if (key == "" && token == 0) || (key != "" && en.key == key) || (key == "" && en.token == token) {
				victims = append(victims, en)
			}
		}
		if len(victims) == 0 {
			return fmt.Errorf("%w: no holder has that key or token", ErrInvalidLockKey)
		}
		for _, en := range victims {
			released = append(released, en.token)
			notes = e.release(en, EventForced, notes)
		}
		return nil
	}()
	e.mu.Unlock()
	e.notify(notes)
	return released, err
}

// OwnerMark returns the registration number of the latest request made
// by an owner. Requests made later get larger numbers; pass the mark to
// ReleaseStaleOwners.
func (e *Engine) OwnerMark() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastSeq
}

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

// ReleaseStaleOwners releases the grants and waits that owners made at or
// before mark, of every such owner for which state returns OwnerClosed or
// OwnerUnknown, and returns those owners' names, sorted. An owner judged
// OwnerClosed is remembered as gone, as ReleaseOwner does.
//
// The intended sweep: take mark := OwnerMark(), then list the live
// connections, then call ReleaseStaleOwners(mark, judgeByThatList). A
// request made after the mark may come from a connection missing from the
// list only because the list was taken before it connected, so it is
// spared, and judged by the next sweep.
//
// Marks are per request, not per owner, because owner names are reused:
// after a NATS server restart, its new connection 7 is not its old
// connection 7. Releasing the old connection's grants must not release
// what the new one was granted meanwhile under the same name.
//
// state is called without the engine's mutex held, once per owner with a
// request at or before mark, on the calling goroutine. It may call the
// engine but has no need to.
func (e *Engine) ReleaseStaleOwners(mark uint64, state func(owner string) OwnerState) []string {
	e.mu.Lock()
	var candidates []string
	for name, o := range e.owners {
		if o.oldestSeq() <= mark {
			candidates = append(candidates, name)
		}
	}
	e.mu.Unlock()

	dead := map[string]OwnerState{}
	for _, name := range candidates {
		if st := state(name); st != OwnerLive {
			dead[name] = st
		}
	}
	if len(dead) == 0 {
		return nil
	}

	e.mu.Lock()
	var released []string
	var notes []notification
	now := e.clock.Now()
	for name, st := range dead {
		o := e.owners[name]
		if o == nil || e.closed || o.oldestSeq() > mark {
			continue // gone meanwhile, or only new requests since the mark
		}
		notes = e.releaseOwnerUpTo(o, mark, notes)
		if e.owners[name] == nil && st == OwnerClosed {
			e.gone.add(name, now)
		}
		released = append(released, name)
	}
	e.mu.Unlock()
	e.notify(notes)
	slices.Sort(released)
	return released
}

// releaseOwnerUpTo drops the waits and releases the grants of o made at or
// before mark. o's entries are newest first, so those are a tail of its
// list.
func (e *Engine) releaseOwnerUpTo(o *owner, mark uint64, notes []notification) []notification {
	var old []*entry
	for en := o.entries; en != nil; en = en.ownerNext {
		if en.seq <= mark {
			old = append(old, en)
		}
	}
	// Drop the waits first, so that the slots released below go to other
	// waiters and never to these.
	for _, en := range old {
		if en.wait != nil {
			notes = e.dropWaiter(en, ErrOwnerGone, notes)
		}
	}
	for _, en := range old {
		if en.lock != nil && en.wait == nil && en.token != 0 {
			notes = e.release(en, EventOwnerGone, notes)
		}
	}
	return notes
}

// ForgetGoneOwners drops the memory of released owners (see
// WithGoneOwnerMemory) for which match returns true, and returns how many
// it dropped. Call it when owner names are reused: the client ids of a NATS
// server start again from 1 when it restarts, so the owners it released
// before are not the ones that use those names now. match is called with
// the engine's mutex held, so it must not call the engine.
func (e *Engine) ForgetGoneOwners(match func(owner string) bool) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.gone.forget(match)
}

// Close stops all timers, calls the done callback of every waiter with
// ErrEngineClosed, and drops all state. Afterwards every call fails with
// ErrEngineClosed or returns nothing. Close is idempotent.
func (e *Engine) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	var notes []notification
	for _, l := range e.locks {
		for en := l.holders; en != nil; en = en.next {
			en.stopTimer()
		}
		for en := l.waitHead; en != nil; en = en.next {
			en.stopTimer()
			n := notification{done: en.wait.done, err: ErrEngineClosed}
			if e.onEvent != nil {
				n.event = Event{Kind: EventWaitClosed, Name: l.name, Owner: en.ownerName()}
			}
			notes = append(notes, n)
		}
	}
	clear(e.locks)
	clear(e.owners)
	e.holders, e.waiters = 0, 0
	e.freeLocks, e.freeEntries, e.freeOwners = nil, nil, nil
	e.mu.Unlock()
	e.notify(notes)
}

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
func (e *Engine) newEntry(l *lock, key, ownerName string) *entry {
	var en *entry
	if n := len(e.freeEntries); n > 0 {
		en = e.freeEntries[n-1]
		e.freeEntries[n-1] = nil
		e.freeEntries = e.freeEntries[:n-1]
	} else {
		en = new(entry)
	}
	en.lock, en.key = l, key
	if ownerName != "" {
		o := e.owners[ownerName]
		if o == nil {
			if n := len(e.freeOwners); n > 0 {
				o = e.freeOwners[n-1]
				e.freeOwners[n-1] = nil
				e.freeOwners = e.freeOwners[:n-1]
			} else {
				o = new(owner)
			}
			o.name = ownerName
			e.owners[ownerName] = o
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
		delete(e.owners, o.name)
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
