package clientlib

import (
	"container/heap"
	"context"
	"time"
)

// The timers of the held locks that have a lock timeout: run sleeps until
// the soonest is due, then renews that lock (a third of the way into each
// timeout, unless auto-renew is off) or ends it with ErrExpired when its
// timeout passed without a renewal. A renewal that fails without the
// service refusing it (no reply, connection down) is tried again every
// tenth of the timeout until the lock expires.

// timerHeap orders locks by due; it implements heap.Interface.
type timerHeap []*Lock

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *timerHeap) Push(x any) {
	l := x.(*Lock)
	l.index = len(*h)
	*h = append(*h, l)
}
func (h *timerHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	l.index = -1
	return l
}

// scheduleLocked puts l's timer where its state says: off the timers when
// it ended or has no timeout, else due at its next renewal or its expiry.
// It wakes run when that is sooner than run's own timer. c.mu must be held.
func (c *Client) scheduleLocked(l *Lock) {
	if l.err != nil || l.expiresAt.IsZero() {
		if l.index >= 0 {
			heap.Remove(&c.timers, l.index)
		}
		return
	}
	l.due = l.expiresAt
	if l.autoRenew && !l.renewing {
		renewAt := l.expiresAt.Add(-l.timeout * 2 / 3)
		if renewAt.Before(l.retryAt) {
			renewAt = l.retryAt
		}
		if renewAt.Before(l.due) {
			l.due = renewAt
		}
	}
	if l.index >= 0 {
		heap.Fix(&c.timers, l.index)
	} else {
		heap.Push(&c.timers, l)
	}
	if l.due.Before(c.wakeAt) {
		c.wakeAt = l.due
		select {
		case c.poke <- struct{}{}:
		default:
		}
	}
}

// renewal is an automatic renewal that run hands to autoRenew.
type renewal struct {
	l         *Lock
	timeout   time.Duration
	expiresAt time.Time
}

// fireLocked handles the timers due at now: it ends the locks that expired
// and returns the renewals to send. It sets wakeAt to when the next timer
// is due. c.mu must be held.
func (c *Client) fireLocked(now time.Time) []renewal {
	c.wakeAt = time.Time{} // no pokes while run is awake anyway
	var out []renewal
	for len(c.timers) > 0 && !c.timers[0].due.After(now) {
		l := c.timers[0]
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
	err := r.l.renew(ctx, r.timeout)
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
