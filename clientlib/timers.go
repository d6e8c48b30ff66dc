package clientlib

import (
	"container/heap"
	"context"
	"time"
)

// run owns every timer of the client, in one heap: the renewal and expiry
// of each held lock that has a lock timeout, and the deadline of each
// request. A lock is renewed a third of the way into each timeout (unless
// auto-renew is off), and ends with ErrExpired when its timeout passed
// without a renewal; a failed renewal that the service did not refuse is
// tried again every tenth of the timeout until the lock expires.

// timer is an entry of c.timers: a lock's or a request's. Guarded by c.mu.
type timer struct {
	due  time.Time
	pos  int      // position in c.timers plus one; 0: not there
	lock *Lock    // the lock whose renewal or expiry is due, or
	req  *pending // the request whose deadline it is
}

// timerHeap orders timers by due; it implements heap.Interface.
type timerHeap []*timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos, h[j].pos = i+1, j+1
}
func (h *timerHeap) Push(x any) {
	t := x.(*timer)
	*h = append(*h, t)
	t.pos = len(*h)
}
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.pos = 0
	return t
}

// setTimerLocked makes t due at due, and wakes run when that is sooner than
// run's own timer. c.mu must be held.
func (c *Client) setTimerLocked(t *timer, due time.Time) {
	t.due = due
	if t.pos > 0 {
		heap.Fix(&c.timers, t.pos-1)
	} else {
		heap.Push(&c.timers, t)
	}
	if due.Before(c.wakeAt) {
		c.wakeAt = due
		select {
		case c.poke <- struct{}{}:
		default:
		}
	}
}

// stopTimerLocked takes t off the timers. run may wake for it anyway: it
// then finds nothing due. c.mu must be held.
func (c *Client) stopTimerLocked(t *timer) {
	if t.pos > 0 {
		heap.Remove(&c.timers, t.pos-1)
	}
}

// scheduleLocked puts l's timer where its state says: off the timers when
// it ended or has no timeout, else due at its next renewal or its expiry.
// c.mu must be held.
func (c *Client) scheduleLocked(l *Lock) {
	if l.err != nil || l.expiresAt.IsZero() {
		c.stopTimerLocked(&l.timer)
		return
	}
	due := l.expiresAt
	if l.autoRenew && !l.renewing {
		renewAt := l.expiresAt.Add(-l.timeout * 2 / 3)
		if renewAt.Before(l.retryAt) {
			renewAt = l.retryAt
		}
		if renewAt.Before(due) {
			due = renewAt
		}
	}
	c.setTimerLocked(&l.timer, due)
}

// fireLocked handles the timers due at now: it cancels the requests whose
// deadline passed, ends the locks that expired, and starts the renewals
// that are due, each in a goroutine of its own. It sets wakeAt to when the
// next timer is due. c.mu must be held.
func (c *Client) fireLocked(now time.Time) {
	c.wakeAt = time.Time{} // no pokes while run is awake anyway
	for len(c.timers) > 0 && !c.timers[0].due.After(now) {
		t := c.timers[0]
		if p := t.req; p != nil {
			heap.Pop(&c.timers)
			p.stopLocked(errNoReply)
			continue
		}
		l := t.lock
		if !now.Before(l.expiresAt) {
			c.finishLocked(l, &LostError{Name: l.name, Cause: ErrExpired})
			continue
		}
		l.renewing = true
		go c.autoRenew(l, l.timeout, l.expiresAt)
		c.scheduleLocked(l) // due at its expiry while the renewal is out
	}
	c.wakeAt = farFuture
	if len(c.timers) > 0 {
		c.wakeAt = c.timers[0].due
	}
}

// autoRenew renews l for timeout and schedules its next timer. There is no
// point waiting for a reply after the lock expired.
func (c *Client) autoRenew(l *Lock, timeout time.Duration, expiresAt time.Time) {
	ctx, cancel := context.WithDeadline(context.Background(), expiresAt)
	err := l.Renew(ctx, timeout)
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	l.renewing = false
	l.retryAt = time.Time{}
	if err != nil {
		l.retryAt = time.Now().Add(l.timeout / 10)
	}
	c.scheduleLocked(l)
}
