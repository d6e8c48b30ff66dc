package clientlib

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file retries, in the background, the unlocks that got no answer
// (docs/protocol.md, "A release that got no answer"). A grant whose unlock
// went unanswered stays with the session while the service keeps it (a
// takeover in progress may keep it): nobody could take the lock until the
// client's connection closes. So the client remembers the key in
// c.releases and one goroutine, releaser, sends the unlock again until a
// service answers.
//
// c.releases is guarded by c.mu; only releaser sends its unlocks and
// takes keys off it, others only add (addReleaseLocked).

// maxReleases bounds c.releases: beyond it, the oldest key is dropped.
const maxReleases = 10_000

// maxReleasePause is the longest pause between two rounds of releaser
// while no service answers; pauses double from retryPause up to it.
const maxReleasePause = 5 * time.Second

// unconfirmedRelease is a key whose unlock got no answer, and its lock's
// name (the unlock's subject).
type unconfirmedRelease struct{ name, key string }

// releaseUnconfirmed reports whether err, the result of an unlock, means
// that no service answered it: nobody listened, the one that did was
// stopping, no reply came within the budget (the client's or the
// caller's), or the request could not even be buffered while nats.go
// reconnects. Any other reply, an error or not, settles the key.
func releaseUnconfirmed(err error) bool {
	return err != nil && (unanswered(err) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, errNoReply) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, nats.ErrReconnectBufExceeded))
}

// addReleaseLocked remembers key, of the lock called name, for releaser to
// unlock. A closed client forgets it: Close ends the releaser, and what the
// session keeps goes when the application closes the connection. c.mu must
// be held.
func (c *Client) addReleaseLocked(name, key string) {
	if c.closed || slices.ContainsFunc(c.releases, func(r unconfirmedRelease) bool { return r.key == key }) {
		return
	}
	if len(c.releases) >= maxReleases {
		dropped := c.releases[0]
		c.releases = slices.Delete(c.releases, 0, 1)
		slog.Warn("ldlm: too many unlocks got no answer; no longer retrying the oldest, which the service may keep until this connection closes",
			"lock", dropped.name, "pending", maxReleases)
	}
	c.releases = append(c.releases, unconfirmedRelease{name: name, key: key})
	select {
	case c.releaseWake <- struct{}{}:
	default:
	}
}

// releaser is the client's goroutine that sends the unlocks of c.releases,
// oldest first, until Close. A round stops at the first unlock that gets no
// answer (the others would not get one either), and the next round comes
// after a pause that doubles from retryPause up to maxReleasePause; a round
// in which every unlock was answered resets the pause.
func (c *Client) releaser() {
	defer close(c.releaserDone)
	pause := retryPause
	for {
		c.mu.Lock()
		todo := slices.Clone(c.releases)
		connected, changed := c.cur != nil, c.changed
		if !connected && c.nc.IsClosed() {
			// The service released whatever a closed connection held.
			c.releases, todo = nil, nil
		}
		c.mu.Unlock()
		switch {
		case len(todo) == 0:
			pause = retryPause
			select {
			case <-c.ctx.Done():
				return
			case <-c.releaseWake:
			}
			continue
		case !connected:
			select {
			case <-c.ctx.Done():
				return
			case <-changed:
			}
			continue
		}
		answered := map[string]bool{}
		for _, r := range todo {
			if !c.releaseOnce(r) {
				break
			}
			answered[r.key] = true
		}
		c.mu.Lock()
		c.releases = slices.DeleteFunc(c.releases, func(r unconfirmedRelease) bool { return answered[r.key] })
		c.mu.Unlock()
		if len(answered) == len(todo) {
			continue // all answered: take what came meanwhile, or wait
		}
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, maxReleasePause)
	}
}

// releaseOnce sends one unlock of r over the current connection, bounded by
// the request timeout, and reports whether a service answered it with
// anything but Unavailable.
func (c *Client) releaseOnce(r unconfirmedRelease) bool {
	c.mu.Lock()
	connected, header := c.cur != nil, c.headerLocked()
	c.mu.Unlock()
	if !connected {
		return false
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.requestTimeout)
	defer cancel()
	data, err := c.request(ctx, 0, header, subjects.OpUnlock, r.name, subjects.Request{Key: r.key})
	if err != nil {
		return false
	}
	var resp subjects.UnlockResponse
	if subjects.DecodeUnlockResponse(data, &resp) == nil && resp.Error != nil && resp.Error.Code == subjects.CodeUnavailable {
		return false
	}
	return true
}
