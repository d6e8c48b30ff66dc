package service

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// This file notices a NATS server of the cluster that dies without a word:
// killed (kill -9), crashed, or cut off from every other member. It sends
// no shutdown announcement and no disconnect advisories for its clients,
// so without this only the sweep would notice it, when it misses a sweep
// (sessions) or two (connection owners): up to two sweep intervals later.
//
// The service's own server knows at once when a member's routes close: a
// killed process's sockets are reset by its operating system. So the
// service asks its own server for its routes once a second (one small
// local request) and compares the remote servers with the ones before.
// A server that has lost its routes is only a suspect: the route may be
// reconnecting, or only this link may be cut. It is judged gone when every
// other member the own server still has a route to says that it has no
// route to it either (one request to all, made only while there is a
// suspect). Then it is the shutdown case: its sessions enter the reconnect
// grace, and its connection owners are released (see serverGone).
//
// A suspect that no other member can vouch for (a two-member cluster, or
// the own server cut off from everyone) is left to the sweep: from one
// server alone, the death of the others and its own isolation look the
// same. So is a server whose routes stay open after its death (a machine
// that lost power resets no connection): the routes close only when their
// pings go unanswered, within a minute or two.

// Subjects of the NATS server's route lists (system account).
const (
	routezOf     = "$SYS.REQ.SERVER.%s.ROUTEZ" // one server's, by id
	serverRoutez = "$SYS.REQ.SERVER.PING.ROUTEZ"
)

const (
	// routeCheckInterval is how often the own server's routes are read.
	routeCheckInterval = time.Second
	// routeCheckMinGap bounds how often a session that moves to another
	// server brings a check forward (see sessionTable.moved).
	routeCheckMinGap = 100 * time.Millisecond
	// routeCheckTimeout bounds a check: the own server's answer, then the
	// other members' answers about a suspect. A member that does not answer
	// within it leaves the suspect unjudged until the next check.
	routeCheckTimeout = time.Second
	// suspectFor is how long a suspect is checked before it is left to the
	// sweep: its link to the own server is cut but another member still
	// sees it.
	suspectFor = 10 * time.Second
)

// routezReply is the part of a server's route list that names the servers
// at the other end. A remote appears once per route: several with route
// pooling.
type routezReply struct {
	Server struct {
		Name string `json:"name"`
		ID   string `json:"id"`
	} `json:"server"`
	Data struct {
		Routes []struct {
			RemoteID   string `json:"remote_id"`
			RemoteName string `json:"remote_name"`
		} `json:"routes"`
	} `json:"data"`
	Error *struct {
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

// remotes returns the ids of the servers r has a route to.
func (r *routezReply) remotes() map[string]bool {
	out := map[string]bool{}
	for _, rt := range r.Data.Routes {
		if rt.RemoteID != "" {
			out[rt.RemoteID] = true
		}
	}
	return out
}

// routeWatch is what the route watcher remembers between checks. It is
// owned by the watcher goroutine (liveness.watchRoutes).
type routeWatch struct {
	// known is the servers seen at the last check: the own server and
	// those it had routes to.
	known map[string]bool
	// suspects are the servers that were known and are no longer, with
	// when they were first missed.
	suspects map[string]time.Time
	// seen is known, for readers on other goroutines (Service.WatchedServers).
	seen atomic.Pointer[map[string]bool]
}

func newRouteWatch() *routeWatch {
	return &routeWatch{known: map[string]bool{}, suspects: map[string]time.Time{}}
}

// observe records a check's view, the own server's id and the servers it
// has routes to, and returns the suspects to judge now. A server seen
// again is no longer suspect; one suspect for longer than suspectFor is
// dropped. A change of own server (the service's connection moved) is
// the same: the former own server is suspect unless the new one has a
// route to it.
func (w *routeWatch) observe(now time.Time, own string, remotes map[string]bool) []string {
	seen := map[string]bool{own: true}
	for id := range remotes {
		seen[id] = true
	}
	for id := range w.known {
		if !seen[id] {
			w.suspects[id] = now
		}
	}
	w.known = seen
	w.seen.Store(&seen)
	var judge []string
	for id, since := range w.suspects {
		switch {
		case seen[id]:
			delete(w.suspects, id)
		case now.Sub(since) > suspectFor:
			delete(w.suspects, id)
		default:
			judge = append(judge, id)
		}
	}
	return judge
}

// gone removes a suspect judged gone.
func (w *routeWatch) gone(id string) { delete(w.suspects, id) }

// judgeGone reports whether suspect is gone, from the answers of the
// members (server id → the ids it has routes to) to the question sent to
// all: only if there is at least one witness (a member the own server has
// a route to), every witness answered, none has a route to suspect, and
// suspect itself did not answer.
func judgeGone(suspect string, witnesses map[string]bool, answers map[string]map[string]bool) bool {
	if len(witnesses) == 0 {
		return false
	}
	if _, answered := answers[suspect]; answered {
		return false
	}
	for w := range witnesses {
		routes, answered := answers[w]
		if !answered || routes[suspect] {
			return false
		}
	}
	for _, routes := range answers {
		if routes[suspect] {
			return false
		}
	}
	return true
}

// watched returns the ids of the servers that the last route check saw,
// sorted; nil before the first check or without a route watcher.
func (w *routeWatch) watched() []string {
	seen := w.seen.Load()
	if seen == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(*seen))
}

// watchRoutes is the route watcher goroutine: a check every
// routeCheckInterval, and sooner when a session moves (see moved).
func (l *liveness) watchRoutes() {
	defer l.wg.Done()
	t := time.NewTicker(routeCheckInterval)
	defer t.Stop()
	w := l.routes
	var last time.Time
	var soon <-chan time.Time // a move came too soon after a check: check when the gap has passed
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		case <-soon:
		case <-l.moved:
			if wait := routeCheckMinGap - time.Since(last); wait > 0 {
				if soon == nil {
					soon = time.After(wait)
				}
				continue
			}
		}
		soon = nil
		last = time.Now()
		l.checkRoutes(w)
	}
}

// sessionMoved is called by the session table when a session that was
// bound to a live connection on one server makes a request over a
// connection on another: its client may have left a server that died.
// It brings the next route check forward; it must not block (the table's
// mutex is held).
func (l *liveness) sessionMoved() {
	select {
	case l.moved <- struct{}{}:
	default:
	}
}

// checkRoutes reads the own server's routes, and judges the suspects if
// there are any. A request that fails changes nothing: the next check
// tries again.
func (l *liveness) checkRoutes(w *routeWatch) {
	own := l.sys.ConnectedServerId()
	if own == "" {
		return // reconnecting
	}
	ctx, cancel := context.WithTimeout(context.Background(), routeCheckTimeout)
	defer cancel()
	msg, err := l.sys.RequestWithContext(ctx, fmt.Sprintf(routezOf, own), nil)
	if err != nil {
		l.log.Debug("cannot read the NATS server's routes", "err", err)
		return
	}
	var r routezReply
	if err := json.Unmarshal(msg.Data, &r); err != nil || r.Error != nil || r.Server.ID == "" {
		l.log.Debug("unreadable route list of the NATS server", "server", own)
		return
	}
	l.noteServer(r.Server.Name, r.Server.ID)
	for _, rt := range r.Data.Routes {
		l.noteServer(rt.RemoteName, rt.RemoteID)
	}
	witnesses := r.remotes()
	suspects := w.observe(time.Now(), r.Server.ID, witnesses)
	if len(suspects) == 0 {
		return
	}
	if len(witnesses) == 0 {
		return // nobody to vouch for it: the sweep decides
	}
	answers, err := allRoutes(ctx, l.sys, witnesses)
	if err != nil {
		l.log.Debug("cannot ask the NATS servers for their routes", "err", err)
		return
	}
	for _, id := range suspects {
		gone := judgeGone(id, witnesses, answers)
		l.log.Debug("a NATS server lost its routes to the service's server", "server", l.nameOf(id), "id", id,
			"witnesses", len(witnesses), "answers", len(answers), "gone", gone)
		if gone {
			w.gone(id)
			l.serverGone(id, "NATS server gone: its routes closed and no member has one to it; released the locks of its connections, and its sessions keep theirs for the reconnect grace")
			l.tellServerGone(id, "is gone")
		}
	}
}

// allRoutes asks every server for its routes and returns, by server id,
// the ids each has a route to. It returns once every server of want has
// answered, or when ctx ends.
func allRoutes(ctx context.Context, sys *nats.Conn, want map[string]bool) (map[string]map[string]bool, error) {
	inbox := sys.NewRespInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := sys.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sys.PublishRequest(serverRoutez, inbox, nil); err != nil {
		return nil, err
	}
	answers := map[string]map[string]bool{}
	missing := len(want)
	for missing > 0 {
		select {
		case msg := <-ch:
			var r routezReply
			if json.Unmarshal(msg.Data, &r) != nil || r.Error != nil || r.Server.ID == "" {
				continue
			}
			if _, dup := answers[r.Server.ID]; !dup && want[r.Server.ID] {
				missing--
			}
			answers[r.Server.ID] = r.remotes()
		case <-ctx.Done():
			return answers, nil // the judge sees who is missing
		}
	}
	return answers, nil
}
