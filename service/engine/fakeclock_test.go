package engine

import (
	"container/heap"
	"sync"
	"testing"
	"time"
)

// FakeClock is a Clock whose time moves only when Advance is called, so that
// tests of timeouts are exact and never sleep. It is safe for concurrent
// use.
type FakeClock struct {
	mu      sync.Mutex
	now     time.Time
	seq     uint64     // creation order, breaks ties between equal due times
	pending timerQueue // earliest due first
}

type fakeTimer struct {
	c     *FakeClock
	when  time.Time
	seq   uint64
	f     func()
	index int // position in c.pending, -1 once fired or stopped
}

// WithClock makes the engine read time and run timeouts on c instead of the
// time package; tests pass a FakeClock.
func WithClock(c Clock) Option {
	return func(e *Engine) { e.clock = c }
}

// NewFakeClock returns a FakeClock reading start. A zero start means
// 2025-01-01 00:00:00 UTC (the engine needs times after 1970).
func NewFakeClock(start time.Time) *FakeClock {
	if start.IsZero() {
		start = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	return &FakeClock{now: start}
}

// Now returns the fake current time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc schedules f for Now()+d. f runs inside a later Advance that
// reaches that time (d <= 0: the next Advance, even Advance(0)).
func (c *FakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &fakeTimer{c: c, when: c.now.Add(d), seq: c.seq, f: f}
	heap.Push(&c.pending, t)
	return t
}

// Stop cancels the timer; it reports false if the timer already fired or
// was stopped.
func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.index < 0 {
		return false
	}
	heap.Remove(&t.c.pending, t.index)
	return true
}

// Advance moves the time forward by d and runs every timer that comes due,
// in order of due time (then of creation), on the calling goroutine. While a
// timer runs, Now reads its due time. Timers created by a running timer also
// run if they come due within d. Advance must not be called from inside a
// timer function or while holding a lock that a timer function takes.
func (c *FakeClock) Advance(d time.Duration) {
	if d < 0 {
		panic("engine: FakeClock.Advance with a negative duration")
	}
	c.mu.Lock()
	target := c.now.Add(d)
	for len(c.pending) > 0 && !c.pending[0].when.After(target) {
		t := heap.Pop(&c.pending).(*fakeTimer)
		if t.when.After(c.now) {
			c.now = t.when
		}
		c.mu.Unlock()
		t.f()
		c.mu.Lock()
	}
	c.now = target
	c.mu.Unlock()
}

// Pending returns the number of timers not yet fired or stopped.
func (c *FakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// timerQueue is a container/heap of timers by due time, then creation.
type timerQueue []*fakeTimer

func (q timerQueue) Len() int { return len(q) }

func (q timerQueue) Less(i, j int) bool {
	if !q[i].when.Equal(q[j].when) {
		return q[i].when.Before(q[j].when)
	}
	return q[i].seq < q[j].seq
}

func (q timerQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}

func (q *timerQueue) Push(x any) {
	t := x.(*fakeTimer)
	t.index = len(*q)
	*q = append(*q, t)
}

func (q *timerQueue) Pop() any {
	old := *q
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	t.index = -1
	return t
}

func TestFakeClock(t *testing.T) {
	start := time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)
	c := NewFakeClock(start)
	var fired []string
	at := func(name string) func() {
		return func() { fired = append(fired, name+"@"+c.Now().Sub(start).String()) }
	}
	c.AfterFunc(3*time.Second, at("c"))
	c.AfterFunc(time.Second, at("a1"))
	stopped := c.AfterFunc(2*time.Second, at("stopped"))
	c.AfterFunc(time.Second, at("a2")) // same due time: creation order
	c.AfterFunc(time.Second, func() {
		// A timer started by a timer runs in the same Advance if due.
		c.AfterFunc(time.Second, at("chained"))
		c.AfterFunc(time.Hour, at("late"))
	})
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop must report true once, then false")
	}
	if c.Pending() != 4 {
		t.Fatalf("Pending = %d, want 4", c.Pending())
	}
	c.Advance(3 * time.Second)
	want := []string{"a1@1s", "a2@1s", "chained@2s", "c@3s"}
	if len(fired) != len(want) {
		t.Fatalf("fired %v, want %v", fired, want)
	}
	for i := range want {
		if fired[i] != want[i] {
			t.Fatalf("fired %v, want %v", fired, want)
		}
	}
	if got := c.Now(); !got.Equal(start.Add(3 * time.Second)) {
		t.Fatalf("Now = %v", got)
	}
	if c.Pending() != 1 {
		t.Fatalf("Pending = %d, want only the late timer", c.Pending())
	}
	tm := c.AfterFunc(0, at("now"))
	c.Advance(0)
	if fired[len(fired)-1] != "now@3s" || tm.Stop() {
		t.Fatalf("a zero-delay timer must fire on Advance(0): %v", fired)
	}
	if NewFakeClock(time.Time{}).Now().Year() != 2025 {
		t.Fatal("the default start is not 2025")
	}
}
