package engine

import (
	"cmp"
	crand "crypto/rand"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// Request asks for one slot of a lock.
type Request struct {
	Name string
	// Key is the holder's secret. Empty: the engine generates one. Choose it
	// yourself for a blocking Lock, so that you can cancel with Unlock.
	Key string
	// Size is the number of slots of the lock; 0 means 1.
	Size int
	// Owner is who the grant or wait belongs to, for ReleaseOwner; the zero
	// Owner means nobody.
	Owner subjects.Owner
	// LockTimeout releases the grant unless it is renewed in time; 0 means
	// never.
	LockTimeout time.Duration
	// Reply is opaque to the engine: a waiter keeps it for its record (see
	// Record), so that whoever restores the waiter can answer it.
	Reply string
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

// Option configures an Engine in New.
type Option func(*Engine)

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
		e.gone = recent[subjects.Owner]{window: window, max: cmp.Or(max, 1)}
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
	// callbacks and the state function of ReleaseStaleOwners are always
	// called with mu released. Clock.Now, Clock.AfterFunc and Timer.Stop are
	// called with mu held; the timer functions take mu themselves.
	mu        sync.Mutex
	closed    bool
	locks     map[string]*lock
	owners    map[subjects.Owner]*owner
	lastToken uint64 // fencing token of the latest grant
	lastWait  uint64 // id of the latest waiter
	lastSeq   uint64 // registration number of the latest owned request (entry.seq)
	holders   int    // holders of all locks
	waiters   int    // waiters of all locks
	keys      *rand.ChaCha8
	// gone holds the owners released; see WithGoneOwnerMemory.
	gone recent[subjects.Owner]

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
		owners: make(map[subjects.Owner]*owner),
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
		for en := l.holders.head; en != nil; en = en.link[inLock].next {
			en.stopTimer()
		}
		for en := l.waiters.head; en != nil; en = en.link[inLock].next {
			en.stopTimer()
			n := notification{done: en.wait.done, err: ErrEngineClosed}
			if e.onEvent != nil {
				n.event = Event{Kind: EventWaitClosed, Name: l.name, Owner: en.ownerID()}
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
