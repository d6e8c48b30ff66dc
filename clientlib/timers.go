package clientlib

import (
	"container/heap"
	"context"
	"time"
)

// run owns every timer of the client, in one heap: the renewal and the
// expiry of each held lock that has a lock timeout, and the deadline of
// each request waiting for its reply. It sleeps until the soonest is due.
// A lock is renewed a third of the way into each timeout (unless
// auto-renew is off), and ends with ErrExpired when its timeout passed
// without a renewal; a renewal that fails without the service refusing it
// (no reply, connection down) is tried again every tenth of the timeout
// until the lock expires. A request whose deadline passed is cancelled.

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

// renewal is an automatic renewal that run hands to autoRenew.
type renewal struct {
	l         *Lock
	timeout   time.Duration
	expiresAt time.Time
}

// fireLocked handles the timers due at now: it cancels the requests whose
// deadline passed, ends the locks that expired, and returns the renewals
// to send. It sets wakeAt to when the next timer is due. c.mu must be held.
func (c *Client) fireLocked(now time.Time) []renewal {
	c.wakeAt = time.Time{} // no pokes while run is awake anyway
	var out []renewal
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
		out = append(out, renewal{l: l, timeout: l.timeout, expiresAt: l.expiresAt})
		c.scheduleLocked(l) // due at its expiry while the renewal is out
	}
	c.wakeAt = farFuture
	if len(c.timers) > 0 {
		c.wakeAt = c.timers[0].due
	}
	return out
}

// autoRenew sends an automatic renewal and schedules the lock's next
// timer. There is no point waiting for a reply after the lock expired.
func (c *Client) autoRenew(r renewal) {
	ctx, cancel := context.WithDeadline(context.Background(), r.expiresAt)
	err := r.l.Renew(ctx, r.timeout)
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	r.l.renewing = false
	r.l.retryAt = time.Time{}
	if err != nil {
		r.l.retryAt = time.Now().Add(r.l.timeout / 10)
	}
	c.scheduleLocked(r.l)
}
