package clientlib

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file keeps locks across reconnects with sessions (WithSessions,
// docs/protocol.md "Sessions"): every request carries the client's session
// id, and after a reconnect the client sends PREFIX.attach and keeps what
// the reply lists.

// errReleasedWhileAway is the cause of a lock that the attach after a
// reconnect no longer lists.
var errReleasedWhileAway = fmt.Errorf("%w: the lock service released the lock while the client was reconnecting", ErrConnectionLost)

// headerFor is the header of requests sent over the connection owner: the
// owner and, with sessions, the session. c.mu must be held.
func (c *Client) headerFor(owner string) nats.Header {
	if !c.sessions {
		return nats.Header{subjects.HeaderOwner: {owner}}
	}
	return nats.Header{subjects.HeaderOwner: {owner}, subjects.HeaderSession: {c.session}}
}

// sessionLocked reports whether the requests of ep carry the session: the
// service keeps what they obtained across a reconnect. c.mu must be held.
func (c *Client) sessionLocked(ep *epoch) bool {
	return c.sessions && ep != nil && ep.owner != ""
}

// unsettledLocked reports whether a grant made over ep, which is not the
// current epoch, may still be kept: ep carried the session, and the
// current connection's attach has not settled yet (it will judge the
// grant). c.mu must be held.
func (c *Client) unsettledLocked(ep *epoch) bool {
	return c.sessionLocked(ep) && (c.cur == nil || c.attached != c.cur)
}

// newSessionLocked replaces the session id, for the service forgot the old
// one (and refuses it for a while). c.mu must be held.
func (c *Client) newSessionLocked() {
	c.session = newKey()
	if c.cur != nil && c.cur.owner != "" {
		c.cur.header = c.headerFor(c.cur.owner)
	}
}

// forgetSessionLocked handles an OwnerGone reply to a request sent with
// header: if it carried the current session, the service released that
// session, and the client takes a new one for later requests. c.mu must be
// held.
func (c *Client) forgetSessionLocked(header nats.Header) {
	if sent := header.Get(subjects.HeaderSession); c.sessions && sent != "" && sent == c.session {
		c.newSessionLocked()
	}
}

// reattach sends the attach of the session over ep, a connection that
// replaced another, and settles what earlier connections held and waited
// for with the reply.
func (c *Client) reattach(ep *epoch) {
	resp := c.askAttach(ep)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settleLocked(ep, resp)
}

// attachBudget is how long, at least, the client asks for the attach
// after a reconnect while no service answers: the service keeps a
// session's locks until the reconnect grace after a new active restored
// its state, and a takeover can take seconds. The request timeout, if
// longer, is the budget.
const attachBudget = 60 * time.Second

// askAttach sends PREFIX.attach over ep until it is answered, each try
// bounded by the request timeout, asking again with growing pauses while
// no service answers, the one that answers is stopping, or a try times out
// (a new active may not be up yet), for max(request timeout, attachBudget)
// since the reconnect. Meanwhile what the session held stays held. It
// returns nil when no usable answer came: the budget passed (a service
// older than sessions does not answer attach at all), the reply was an
// error or unreadable, ep is no longer the connection, or the client
// closes.
func (c *Client) askAttach(ep *epoch) *subjects.AttachResponse {
	deadline := time.Now().Add(max(c.requestTimeout, attachBudget))
	for pause := retryPause; ; pause = min(2*pause, maxRetryPause) {
		c.mu.Lock()
		header, current := ep.header, c.cur == ep && !c.closed
		c.mu.Unlock()
		if !current {
			return nil // another connection attaches for itself; settle ignores this one
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(c.ctx, min(c.requestTimeout, left))
		msg := nats.Msg{Subject: c.prefix + "." + subjects.OpAttach, Header: header}
		reply, err := c.nc.RequestMsgWithContext(ctx, &msg)
		cancel()
		if err == nil {
			var resp subjects.AttachResponse
			if derr := subjects.DecodeAttachResponse(reply.Data, &resp); derr != nil {
				return nil
			}
			if resp.Error == nil && resp.Attached {
				return &resp
			}
			if resp.Error == nil || resp.Error.Code != subjects.CodeUnavailable {
				return nil
			}
			err = ErrUnavailable // stopping: another instance may take over
		}
		if c.ctx.Err() != nil {
			return nil // closing
		}
		if !unanswered(err) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			return nil
		}
		left = time.Until(deadline)
		if left <= 0 {
			return nil
		}
		select {
		case <-c.ctx.Done():
			return nil
		case <-time.After(min(pause, left)):
		}
	}
}

// settleLocked decides, for the current epoch ep, about the locks and lock
// requests of earlier epochs, from resp, the attach reply (nil: none; then
// as without sessions). A listed lock stays held, a listed wait keeps
// waiting for its reply, both now of ep; the others are lost, or aborted
// to be asked again. c.mu must be held.
//
// With ep nil, while disconnected for good, it ends everything of earlier
// epochs.
func (c *Client) settleLocked(ep *epoch, resp *subjects.AttachResponse) {
	if c.closed || c.cur != ep {
		return // a later connection settles for itself
	}
	if ep != nil {
		c.attached = ep
	}
	held := map[string]string{} // key → name
	waiting := map[string]bool{}
	if resp != nil {
		for _, h := range resp.Held {
			held[h.Key] = h.Name
			waiting[h.Key] = true // a wait granted meanwhile: its reply is on the way
		}
		for _, w := range resp.Waiting {
			waiting[w.Key] = true
		}
	}
	for l := range c.held {
		switch {
		case l.ep == ep:
		case resp != nil && held[l.key] == l.name:
			l.ep = ep
		case resp != nil:
			c.finishLocked(l, &LostError{Name: l.name, Cause: errReleasedWhileAway})
		case !c.keepOnDisconnect:
			c.finishLocked(l, &LostError{Name: l.name, Cause: ErrConnectionLost})
		}
	}
	for p := range c.pending {
		switch {
		case p.ep == nil || p.ep == ep:
		case resp != nil && waiting[p.key]:
			p.ep = ep
		default:
			p.stopLocked(errEpochEnded)
		}
	}
	if resp != nil {
		c.releaseStrangersLocked(resp)
		if !resp.Resumed {
			c.newSessionLocked()
		}
	}
	c.followOwnersLocked()
}

// releaseStrangersLocked hands to the releaser (releases.go) every grant
// and wait that the attach reply resp lists and the client knows nothing
// of: an unlock of it went unanswered over the old connection, or its
// request was given up while disconnected. Nobody would ever use or
// release them otherwise. A listed grant whose request still waits for
// its reply is not a stranger: the reply is on the way. c.mu must be held.
func (c *Client) releaseStrangersLocked(resp *subjects.AttachResponse) {
	if len(resp.Held) == 0 && len(resp.Waiting) == 0 {
		return
	}
	known := make(map[string]bool, len(c.held)+len(c.pending))
	for l := range c.held {
		known[l.key] = true
	}
	for p := range c.pending {
		if p.key != "" {
			known[p.key] = true
		}
	}
	for _, h := range resp.Held {
		if !known[h.Key] {
			c.addReleaseLocked(h.Name, h.Key)
		}
	}
	for _, w := range resp.Waiting {
		if !known[w.Key] {
			c.addReleaseLocked(w.Name, w.Key)
		}
	}
}
