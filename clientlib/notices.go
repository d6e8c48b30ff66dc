package clientlib

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file follows the service's notices (see the package doc): the lost
// notices of the client's owners and the instance announcements, and ends
// the held locks they concern.

// remembered bounds the lists of recent unmatched lost notices and of
// instances known to be gone. They only need to cover the replies that are
// in flight when the news comes, so a few entries are plenty.
const remembered = 64

// followOwnersLocked keeps one lost-notice subscription for each owner
// that matters: the current connection's and, with WithKeepOnDisconnect,
// those of locks taken before a reconnect. refreshLocked calls it in the
// critical section that starts an epoch, so the subscription is in place
// before any request names the new owner. c.mu must be held.
func (c *Client) followOwnersLocked() {
	needed := make(map[string]bool)
	if c.cur != nil {
		needed[c.cur.owner] = true
	}
	for l := range c.held {
		needed[l.ep.owner] = true
	}
	for owner, sub := range c.lostSubs {
		if !needed[owner] {
			_ = sub.Unsubscribe() // fails only on a closed connection, which has no subscriptions left
			delete(c.lostSubs, owner)
		}
	}
	for owner := range needed {
		if owner == "" || c.lostSubs[owner] != nil {
			continue
		}
		// Only a closed connection fails here. A denied subscription is
		// reported later, to the connection's error handler.
		if sub, err := c.nc.Subscribe(subjects.LostSubject(c.prefix, owner), c.onLost); err == nil {
			c.lostSubs[owner] = sub
		}
	}
}

// onLost ends the held lock that a lost notice names, by name and fencing
// token. A notice can be handled before the grant's reply (they come on
// different subscriptions): one that matches no held lock is remembered.
func (c *Client) onLost(msg *nats.Msg) {
	var n subjects.LostNotice
	if err := json.Unmarshal(msg.Data, &n); err != nil || n.Name == "" || n.Token == 0 {
		return // not a notice of this protocol: nothing to end
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for l := range c.held {
		if l.name == n.Name && l.token == n.Token {
			c.finishLocked(l, &LostError{Name: l.name, Cause: lostCause(n.Reason)})
			return
		}
	}
	c.unmatched = appendBounded(c.unmatched, n)
}

// noticedLocked returns the loss of l if a lost notice for it came before
// its reply was handled, else nil. c.mu must be held.
func (c *Client) noticedLocked(l *Lock) error {
	for _, n := range c.unmatched {
		if n.Name == l.name && n.Token == l.token {
			return &LostError{Name: l.name, Cause: lostCause(n.Reason)}
		}
	}
	return nil
}

// lostCause turns the reason of a lost notice into the cause of the loss.
func lostCause(reason string) error {
	switch reason {
	case subjects.ReasonForced:
		return ErrForceReleased
	case subjects.ReasonExpired:
		return ErrExpired
	case subjects.ReasonDisconnect:
		return fmt.Errorf("%w: the lock service saw the connection close and released the lock", ErrConnectionLost)
	}
	return fmt.Errorf("ldlm: the lock service released the lock (reason %q)", reason)
}

// onInstance handles an announcement of the service: the locks granted by
// an instance that stopped, or by any instance other than one that
// started, are lost.
func (c *Client) onInstance(msg *nats.Msg) {
	var n subjects.InstanceNotice
	if err := json.Unmarshal(msg.Data, &n); err != nil || n.Instance == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch n.Event {
	case subjects.InstanceStarted:
		c.instanceServesLocked(n.Instance, true)
	case subjects.InstanceStopped:
		c.instanceStoppedLocked(n.Instance)
	}
}

// instanceServesLocked records that instance id serves the prefix now: it
// announced its start (announced), or a lock reply came from it. Only one
// instance serves a prefix at a time, so the grants of any other one are
// lost, and the waits parked there are told to ask again
// (wakeWaitsLocked). c.mu must be held.
func (c *Client) instanceServesLocked(id string, announced bool) {
	if slices.Contains(c.goneInstances, id) {
		return // late news of an instance known to be gone
	}
	if id == c.instance {
		if announced && c.unsure {
			// The client heard of this instance first from a reply, when
			// it knew of none, and did not wake its waits then. Its start
			// announcement says it replaced another: a wait sent before
			// may be parked at that one.
			c.unsure = false
			c.wakeWaitsLocked()
		}
		return
	}
	// The first reply the client sees teaches it nothing about its waits;
	// an announcement, or a change, means that one may be parked at an
	// instance that is gone.
	if c.instance != "" || announced {
		c.wakeWaitsLocked()
	}
	if c.instance != "" {
		c.goneInstances = appendBounded(c.goneInstances, c.instance)
	}
	c.unsure = c.instance == "" && !announced
	c.instance = id
	cause := fmt.Errorf("%w: another instance (%s) grants locks now", ErrServiceRestarted, id)
	if announced {
		cause = fmt.Errorf("%w: another instance (%s) started", ErrServiceRestarted, id)
	}
	c.loseLocked(cause, func(l *Lock) bool { return l.instance != "" && l.instance != id })
}

// instanceStoppedLocked records that instance id stopped: the locks it
// granted are lost. c.mu must be held.
func (c *Client) instanceStoppedLocked(id string) {
	if !slices.Contains(c.goneInstances, id) {
		c.goneInstances = appendBounded(c.goneInstances, id)
	}
	if c.instance == id {
		c.instance = ""
	}
	c.loseLocked(fmt.Errorf("%w: it (%s) stopped", ErrServiceRestarted, id), func(l *Lock) bool { return l.instance == id })
}

// loseLocked ends as lost, for cause, each held lock that granted picks.
// c.mu must be held.
func (c *Client) loseLocked(cause error, granted func(*Lock) bool) {
	for l := range c.held {
		if granted(l) {
			c.finishLocked(l, &LostError{Name: l.name, Cause: cause})
		}
	}
}

// wakeWaitsLocked cancels every lock request in flight, whose wait may be
// parked at an instance of the service that is gone: Lock withdraws it and
// asks again. c.mu must be held.
func (c *Client) wakeWaitsLocked() {
	for p := range c.pending {
		if p.waits {
			p.stopLocked(errInstanceChanged)
		}
	}
}

// appendBounded appends v to list, dropping the oldest entry when list
// holds `remembered` entries already.
func appendBounded[T any](list []T, v T) []T {
	if len(list) >= remembered {
		list = slices.Delete(list, 0, 1)
	}
	return append(list, v)
}
