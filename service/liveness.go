package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/subjects"
)

// Subjects of the NATS server's system API that liveness uses.
const (
	// disconnectAdvisories carries one event per closed client connection,
	// of any account; only a system account connection receives it.
	disconnectAdvisories = "$SYS.ACCOUNT.*.DISCONNECT"
	// serverConnz asks every server for all its connections (system account).
	serverConnz = "$SYS.REQ.SERVER.PING.CONNZ"
	// accountConnz asks every server for the connections of the requester's
	// own account; any account may send it while a system account exists.
	accountConnz = "$SYS.REQ.ACCOUNT.PING.CONNZ"
)

// checkSystemAccount makes sure sys is in the system account. A
// connection in an application account can subscribe to the advisory
// subjects and send serverConnz without any error, since the server maps
// that request to the account's own connections; but it receives no
// advisories, and the sweep would see only that account's connections and
// release the locks of every live connection of the other accounts.
//
// The check uses serverConnz only, the one request the system user needs
// permission for: asked through sys, the server must list the service's
// own connection nc, in another account than sys. An account-scoped
// listing shows only connections of sys's account.
func checkSystemAccount(nc, sys *nats.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), connzFirstAnswer)
	defer cancel()
	sysAcc, found, err := connzAccount(ctx, sys, sys)
	if err == nil && !found {
		err = errors.New("the server does not list the system connection itself")
	}
	if err != nil {
		return fmt.Errorf("service: checking that the system connection is in the system account (%s): %w", serverConnz, err)
	}
	appAcc, found, err := connzAccount(ctx, sys, nc)
	if err != nil {
		return fmt.Errorf("service: checking that the system connection is in the system account (%s): %w", serverConnz, err)
	}
	if !found || appAcc == sysAcc {
		if sysAcc == "" {
			sysAcc = "$G" // the listing leaves the global account's name out
		}
		return fmt.Errorf("service: the system connection is in account %q, not in the NATS system account: "+
			"it would see only that account's connections and release the locks of live clients of other accounts; "+
			"give it the credentials of a user of the system account (LDLM_SYSTEM_* settings of ldlm)", sysAcc)
	}
	return nil
}

// connzAccount asks, through sys, for the connection conn and returns its
// account ("" for the global account, $G), or found false when the listing
// does not show it.
func connzAccount(ctx context.Context, sys, conn *nats.Conn) (account string, found bool, err error) {
	cid, err := conn.GetClientID()
	if err != nil {
		return "", false, err
	}
	server := conn.ConnectedServerId()
	inbox := sys.NewRespInbox()
	sub, err := sys.SubscribeSync(inbox)
	if err != nil {
		return "", false, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sys.PublishRequest(serverConnz, inbox, fmt.Appendf(nil, `{"cid":%d,"auth":true}`, cid)); err != nil {
		return "", false, err
	}
	// Every server answers, each about its own connection of that id: wait
	// for the one conn is on.
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return "", false, fmt.Errorf("no answer from server %s: %w", server, err)
		}
		var r struct {
			Data struct {
				ID    string `json:"server_id"`
				Conns []struct {
					CID     uint64 `json:"cid"`
					Account string `json:"account"`
				} `json:"connections"`
			} `json:"data"`
		}
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			return "", false, fmt.Errorf("unreadable answer: %w", err)
		}
		if r.Data.ID != server {
			continue
		}
		for _, c := range r.Data.Conns {
			if c.CID == cid {
				return c.Account, true, nil
			}
		}
		return "", false, nil
	}
}

const (
	connzPageSize = 4096
	// connzPageOverlap is how many connections each page repeats of the
	// one before. The servers list connections by client id and page by
	// position, so connections that close between two pages shift later
	// ones onto the page already read; the overlap absorbs that many
	// closes, and a larger shift is detected (see connList.add).
	connzPageOverlap = 256
	// connzQuiet is how long the sweep waits after the last server's answer
	// for another server to answer: there is no way to know how many will.
	connzQuiet        = 250 * time.Millisecond
	connzFirstAnswer  = 3 * time.Second
	sweepTimeout      = 30 * time.Second
	missingSweepLimit = 2 // a server unanswering this many sweeps in a row is gone
)

// liveness releases the locks of connections that closed: at once on the
// server's DISCONNECT advisory, and by a sweep that compares lock owners with
// the servers' connection lists, for advisories that were missed (while the
// service reconnected, or without system account access).
type liveness struct {
	s       *Service
	sub     *nats.Subscription // advisories; nil without a system connection
	kick    chan struct{}      // asks the sweeper goroutine to sweep now
	status  chan nats.Status   // disconnects and reconnects of the service's connection
	sysStat chan nats.Status   // reconnects of the system connection

	mu        sync.Mutex     // guards the fields below and serializes sweeps
	missing   map[string]int // server name → sweeps in a row it did not answer
	lastSweep time.Time
	// servers remembers, by server name, the server id that last answered
	// a sweep and the owner mark of that sweep. A server that answers with
	// another id has restarted: its client ids start again from 1, so an
	// old owner "name:7" could look alive through a new connection 7. All
	// owners of that name up to the mark are from the old server: dead.
	servers map[string]serverSeen
	// connectedTo is the server the service's connection is on; when that
	// connection drops, disconnectMark remembers the owner mark then, a
	// tighter bound than the last sweep's if that very server restarted.
	// They are guarded by connMu, not mu: the status watcher must take the
	// mark the moment the connection drops, even while a sweep holds mu.
	connMu           sync.Mutex
	connectedTo      string
	disconnectedFrom string
	disconnectMark   uint64

	// idsMu guards serverIDs and retiredIDs. It is not mu because a sweep
	// holds mu for seconds, and advisories must not wait for it.
	idsMu sync.Mutex
	// serverIDs is the latest id seen for each server name, in advisories,
	// sweeps and our own connections. The engine remembers the owners it
	// released, to refuse their late requests; when a server's id changes,
	// it restarted and gives out its client ids again, so the owners it
	// released before are forgotten (see noteServerID).
	serverIDs map[string]string
	// retiredIDs holds the ids that servers had before they restarted. An
	// advisory of a former life that arrives late names a client id that a
	// connection of the new life may have now: it must be ignored.
	retiredIDs map[string]bool
	// issued is, by server id, the highest client id known to have been
	// handed out by that server: seen in its connection list or in a
	// disconnect advisory. A server hands client ids out in increasing
	// order, so an owner at or below it named a connection that existed.
	// Only such owners are remembered as gone when a sweep releases them:
	// a forged owner naming an id not handed out yet must not turn away
	// the genuine connection that gets that id later.
	issued map[string]uint64
}

type serverSeen struct {
	id   string
	mark uint64
}

func newLiveness(s *Service) *liveness {
	return &liveness{s: s, kick: make(chan struct{}, 1), missing: map[string]int{}, servers: map[string]serverSeen{},
		serverIDs: map[string]string{}, retiredIDs: map[string]bool{}, issued: map[string]uint64{}}
}

// source says how liveness is followed, for logs and status.
func (l *liveness) source() string {
	if l.sub != nil {
		return "advisories+sweep"
	}
	return "sweep"
}

func (l *liveness) start() error {
	s := l.s
	if s.sys != nil {
		sub, err := s.sys.Subscribe(disconnectAdvisories, l.onDisconnect)
		if err != nil {
			return fmt.Errorf("subscribing to disconnect advisories: %w", err)
		}
		if err := s.sys.Flush(); err != nil {
			return fmt.Errorf("subscribing to disconnect advisories: %w", err)
		}
		l.sub = sub
	} else {
		s.log.Warn("no system account connection: disconnects are seen only by the periodic sweep, " +
			"so a dead client's locks are freed within the sweep interval instead of at once; " +
			"give the service system account credentials to follow advisories")
	}

	// nats.go reports a lost connection as RECONNECTING when it will
	// reconnect, DISCONNECTED otherwise.
	l.status = s.nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED)
	l.connectedTo = s.nc.ConnectedServerName()
	l.noteServerID(s.nc.ConnectedServerName(), s.nc.ConnectedServerId())
	ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
	defer cancel()
	if err := l.sweep(ctx); err != nil {
		s.log.Warn("cannot list connections; locks of clients whose disconnect advisory is missed will not be freed", "err", err)
	}

	if s.sys != nil {
		l.sysStat = s.sys.StatusChanged(nats.CONNECTED)
	}
	s.wg.Add(2)
	go l.watchStatus()
	go l.run()
	return nil
}

// watchStatus follows the service connection's status. It only takes
// notes, never sweeps, so that the owner mark is taken when the connection
// drops, before requests can arrive over a restarted server; a sweep is
// asked of run after a reconnect.
func (l *liveness) watchStatus() {
	defer l.s.wg.Done()
	for {
		select {
		case <-l.s.stop:
			return
		case st := <-l.status:
			if st != nats.CONNECTED {
				l.noteDisconnect()
				continue
			}
			l.connMu.Lock()
			l.connectedTo = l.s.nc.ConnectedServerName()
			l.connMu.Unlock()
			l.noteServerID(l.s.nc.ConnectedServerName(), l.s.nc.ConnectedServerId())
			l.s.log.Info("reconnected to NATS; sweeping for disconnects missed meanwhile")
			select {
			case l.kick <- struct{}{}:
			default: // a sweep is asked for already
			}
		}
	}
}

// run is the sweeper goroutine.
func (l *liveness) run() {
	defer l.s.wg.Done()
	var tick <-chan time.Time
	if l.s.cfg.SweepInterval > 0 {
		t := time.NewTicker(l.s.cfg.SweepInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-l.s.stop:
			return
		case <-tick:
		case <-l.sysStat: // a nil channel (no system connection) never fires
			l.noteServerID(l.s.sys.ConnectedServerName(), l.s.sys.ConnectedServerId())
			l.s.log.Info("system connection reconnected; sweeping for disconnects missed meanwhile")
		case <-l.kick:
		}
		ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
		if err := l.sweep(ctx); err != nil {
			l.s.log.Warn("liveness sweep failed", "err", err)
		}
		if err := l.s.checkRivals(ctx); errors.Is(err, ErrDuplicateInstance) {
			l.s.stepDown(err)
		}
		cancel()
	}
}

func (l *liveness) close() {
	if l.sub != nil {
		_ = l.sub.Unsubscribe()
	}
	if l.status != nil {
		l.s.nc.RemoveStatusListener(l.status)
	}
	if l.sysStat != nil {
		l.s.sys.RemoveStatusListener(l.sysStat)
	}
}

func (l *liveness) noteDisconnect() {
	l.connMu.Lock()
	defer l.connMu.Unlock()
	l.disconnectMark = l.s.engine.OwnerMark()
	l.disconnectedFrom = l.connectedTo
	l.s.log.Warn("disconnected from NATS", "server", l.connectedTo)
}

// disconnectEvent is the part of io.nats.server.advisory.v1.client_disconnect
// that names the connection.
type disconnectEvent struct {
	Server struct {
		Name string `json:"name"`
		ID   string `json:"id"`
	} `json:"server"`
	Client struct {
		ID      uint64 `json:"id"`
		Account string `json:"acc"`
	} `json:"client"`
	Reason string `json:"reason"`
}

func (l *liveness) onDisconnect(msg *nats.Msg) {
	if l.s.cfg.NoClearOnDisconnect {
		return
	}
	var ev disconnectEvent
	if err := json.Unmarshal(msg.Data, &ev); err != nil || ev.Client.ID == 0 {
		l.s.log.Warn("unreadable disconnect advisory", "subject", msg.Subject)
		return
	}
	if l.retired(ev.Server.ID) {
		// Late news of a server's former life: its connections were
		// released when the restart was seen, and this client id may be a
		// live connection of the new life.
		return
	}
	// A server that restarted gives its client ids out again: forget the
	// closed connections of its former life before remembering this one.
	l.noteServerID(ev.Server.Name, ev.Server.ID)
	l.noteIssued(ev.Server.ID, ev.Client.ID)
	owner := subjects.FormatOwner(ev.Server.Name, ev.Client.ID)
	grants, waits := l.s.engine.ReleaseOwner(owner)
	if grants+waits > 0 {
		l.s.log.Info("connection closed; released its locks", "owner", owner, "account", ev.Client.Account,
			"reason", ev.Reason, "grants", grants, "waits", waits)
	}
}

// sweep releases the locks of every owner that registered before the sweep
// began and whose connection no server lists any more.
func (l *liveness) sweep(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()

	// Owners that appear after this mark may be missing from the lists we
	// are about to fetch only because they are new: leave them alone.
	mark := l.s.engine.OwnerMark()
	list, err := l.listConnections(ctx)
	if err != nil {
		return err
	}
	l.lastSweep = time.Now()
	if !l.s.cfg.NoClearOnDisconnect {
		l.releaseRestarted(list.ids)
	}
	for name, id := range list.ids {
		l.servers[name] = serverSeen{id: id, mark: mark}
		l.noteServerID(name, id)
		l.noteIssued(id, list.highest[name])
	}
	l.connMu.Lock()
	if _, answered := list.ids[l.disconnectedFrom]; answered {
		// Its restart, if any, was handled above with the mark of our
		// disconnect; until it answers, that mark is kept.
		l.disconnectedFrom = ""
	}
	l.connMu.Unlock()
	if l.s.cfg.NoClearOnDisconnect {
		return nil
	}
	unanswered := map[string]bool{}
	released := l.s.engine.ReleaseStaleOwners(mark, func(owner string) engine.OwnerState {
		server, cid, err := subjects.ParseOwner(owner)
		if err != nil {
			return engine.OwnerLive // not ours to judge
		}
		if list.gaps[server] {
			return engine.OwnerLive // its list may lack open connections: judge it next time
		}
		conns, answered := list.live[server]
		if !answered {
			// A server may miss one sweep's quiet window; one that misses
			// several in a row is gone, and so are its connections. Its
			// client ids cannot come back (a restarted server has a new
			// id), so there is nothing to remember.
			unanswered[server] = true
			if l.missing[server]+1 < missingSweepLimit {
				return engine.OwnerLive
			}
			return engine.OwnerUnknown
		}
		if _, ok := conns[cid]; ok {
			return engine.OwnerLive
		}
		if l.wasIssued(list.ids[server], cid) {
			return engine.OwnerClosed
		}
		return engine.OwnerUnknown
	})
	for server := range list.live {
		delete(l.missing, server)
	}
	for server := range list.gaps {
		l.s.log.Warn("connections closed faster than the sweep could page through the list; this server's owners are judged at the next sweep",
			"server", server)
	}
	for server := range unanswered {
		l.missing[server]++
	}
	if len(released) > 0 {
		l.s.log.Info("sweep released the locks of closed connections", "owners", len(released))
	}
	return nil
}

// releaseRestarted releases the owners of every server that answered with
// a new id, up to the mark of the last sweep that saw the old one (or of
// our disconnect from it, if later).
func (l *liveness) releaseRestarted(ids map[string]string) {
	for name, id := range ids {
		seen, ok := l.servers[name]
		if !ok || seen.id == id {
			continue
		}
		mark := seen.mark
		l.connMu.Lock()
		if name == l.disconnectedFrom && l.disconnectMark > mark {
			mark = l.disconnectMark
		}
		l.connMu.Unlock()
		released := l.s.engine.ReleaseStaleOwners(mark, func(owner string) engine.OwnerState {
			if server, _, err := subjects.ParseOwner(owner); err == nil && server == name {
				return engine.OwnerUnknown // forgotten just below anyway
			}
			return engine.OwnerLive
		})
		// The owners just released are dead, but their names now belong
		// to the restarted server's new connections.
		l.forgetGoneOwners(name)
		l.s.log.Warn("NATS server restarted; released the locks of its old connections",
			"server", name, "old_id", seen.id, "new_id", id, "owners", len(released))
	}
}

// noteServerID records that server name has id. A new id for a known name
// means the server restarted: the owners of that name the engine remembers
// as gone are forgotten, since their client ids are given out again.
func (l *liveness) noteServerID(name, id string) {
	if name == "" || id == "" {
		return
	}
	l.idsMu.Lock()
	if l.retiredIDs[id] {
		l.idsMu.Unlock()
		return // late news of a former life: keep the current id
	}
	old := l.serverIDs[name]
	l.serverIDs[name] = id
	if old != "" && old != id {
		// Server ids are random per start: a set of a few per restart.
		l.retiredIDs[old] = true
	}
	l.idsMu.Unlock()
	if old != "" && old != id {
		l.forgetGoneOwners(name)
	}
}

// noteIssued records that server id has handed out client id cid.
func (l *liveness) noteIssued(id string, cid uint64) {
	if id == "" {
		return
	}
	l.idsMu.Lock()
	defer l.idsMu.Unlock()
	if cid > l.issued[id] {
		l.issued[id] = cid
	}
}

// wasIssued reports whether server id is known to have handed out client
// id cid.
func (l *liveness) wasIssued(id string, cid uint64) bool {
	l.idsMu.Lock()
	defer l.idsMu.Unlock()
	return id != "" && cid <= l.issued[id]
}

// retired reports whether id belonged to a server that has restarted since.
func (l *liveness) retired(id string) bool {
	l.idsMu.Lock()
	defer l.idsMu.Unlock()
	return l.retiredIDs[id]
}

// forgetGoneOwners drops the engine's memory of the closed connections of
// server name.
func (l *liveness) forgetGoneOwners(name string) {
	n := l.s.engine.ForgetGoneOwners(func(owner string) bool {
		server, _, err := subjects.ParseOwner(owner)
		return err == nil && server == name
	})
	if n > 0 {
		l.s.log.Info("NATS server restarted; its client ids are reused, so its closed connections are forgotten",
			"server", name, "forgotten", n)
	}
}

// LastSweep is when the last successful sweep listed the connections.
func (l *liveness) LastSweep() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastSweep
}

type connzReply struct {
	Server struct {
		Name string `json:"name"`
		ID   string `json:"id"`
	} `json:"server"`
	Data struct {
		Total  int `json:"total"`
		Offset int `json:"offset"`
		Conns  []struct {
			CID uint64 `json:"cid"`
		} `json:"connections"`
	} `json:"data"`
	Error *struct {
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

// connList collects the servers' connection lists, page by page.
type connList struct {
	live map[string]map[uint64]struct{} // server name → open client ids
	// highest is, by server name, the highest client id listed.
	highest map[string]uint64
	ids     map[string]string // server name → server id
	last    map[string]uint64 // server name → highest client id of its latest page
	done    map[string]bool   // the server's list is complete, or given up
	// gaps names the servers whose list may lack open connections: their
	// pages shifted by more than the overlap while they were read. Their
	// owners must not be judged by this sweep.
	gaps map[string]bool
}

func newConnList() *connList {
	return &connList{live: map[string]map[uint64]struct{}{}, highest: map[string]uint64{}, ids: map[string]string{}, last: map[string]uint64{},
		done: map[string]bool{}, gaps: map[string]bool{}}
}

// add records one server's page, asked for at offset, and reports whether
// that server has more pages. A page after the first must begin at or
// below the highest client id of the page before (the pages overlap):
// if it begins above it, connections that closed meanwhile shifted some
// open ones past this page's start, and they are missing from the list.
func (c *connList) add(r connzReply, offset int) (more bool) {
	name := r.Server.Name
	c.ids[name] = r.Server.ID
	set := c.live[name]
	if set == nil {
		set = map[uint64]struct{}{}
		c.live[name] = set
	}
	if c.done[name] {
		return false // a page past the end of a list already complete
	}
	conns := r.Data.Conns
	if offset > 0 && (len(conns) == 0 || conns[0].CID > c.last[name]) {
		c.gaps[name], c.done[name] = true, true
		return false
	}
	for i, conn := range conns {
		if i > 0 && conn.CID <= conns[i-1].CID {
			// Not in client id order: the overlap proves nothing.
			c.gaps[name] = true
		}
		set[conn.CID] = struct{}{}
		c.highest[name] = max(c.highest[name], conn.CID)
	}
	if len(conns) > 0 {
		c.last[name] = conns[len(conns)-1].CID
	}
	if r.Data.Offset+len(conns) >= r.Data.Total || c.gaps[name] {
		c.done[name] = true
		return false
	}
	return true
}

// listConnections asks every NATS server for its open connections, page by
// page.
func (l *liveness) listConnections(ctx context.Context) (*connList, error) {
	conn, subject := l.s.nc, accountConnz
	if l.s.sys != nil {
		conn, subject = l.s.sys, serverConnz
	}
	list := newConnList()
	for offset := 0; ; offset += connzPageSize - connzPageOverlap {
		body := fmt.Appendf(nil, `{"offset":%d,"limit":%d}`, offset, connzPageSize)
		msgs, err := gather(ctx, conn, subject, body, connzFirstAnswer)
		if err != nil {
			return nil, err
		}
		if len(msgs) == 0 {
			return nil, errors.New(subject + ": no NATS server answered (is there a system account?)")
		}
		more := false
		for _, msg := range msgs {
			var r connzReply
			if err := json.Unmarshal(msg.Data, &r); err != nil {
				return nil, fmt.Errorf("%s: unreadable answer: %w", subject, err)
			}
			if r.Error != nil {
				return nil, fmt.Errorf("%s: server %q answered %d %s", subject, r.Server.Name, r.Error.Code, r.Error.Description)
			}
			if list.add(r, offset) {
				more = true
			}
		}
		if !more {
			return list, nil
		}
	}
}

// gather sends one request and collects answers until none came for
// connzQuiet, or none at all within first.
func gather(ctx context.Context, nc *nats.Conn, subject string, body []byte, first time.Duration) ([]*nats.Msg, error) {
	inbox := nc.NewRespInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, body); err != nil {
		return nil, err
	}
	var replies []*nats.Msg
	wait := time.NewTimer(first)
	defer wait.Stop()
	for {
		select {
		case msg := <-ch:
			replies = append(replies, msg)
			wait.Reset(connzQuiet)
		case <-wait.C:
			return replies, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
