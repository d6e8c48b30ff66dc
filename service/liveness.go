package service

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/subjects"
)

// disconnectAdvisories carries one event per closed client connection, of
// any account; only a system account connection receives it.
const disconnectAdvisories = "$SYS.ACCOUNT.*.DISCONNECT"

// A server announces its shutdown, and its entering lame duck mode, on
// these (the token is its id). A shut-down server sends no disconnect
// advisories for its clients: this is how their sessions learn of it.
const (
	serverShutdowns = "$SYS.SERVER.*.SHUTDOWN"
	serverLameDucks = "$SYS.SERVER.*.LAMEDUCK"
)

// ownerTable is what liveness needs of the lock engine: a mark of the
// owners registered so far, and releasing the owners whose connections are
// gone. *engine.Engine is one.
type ownerTable interface {
	OwnerMark() uint64
	ReleaseOwner(subjects.Owner) (grants, waits int)
	ReleaseStaleOwners(mark uint64, state func(subjects.Owner) engine.OwnerState) []subjects.Owner
	HasOwner(subjects.Owner) bool
}

// liveness releases the locks of connections that closed: at once on the
// server's DISCONNECT advisory, and by a sweep that compares lock owners with
// the servers' connection lists, for advisories that were missed (while the
// service reconnected, or without system account access). A server that
// dies without a word is noticed from the routes (routewatch.go). It knows
// nothing of the service but the owner table.
//
// Owners are server id and client id (subjects.Owner). A restarted server
// has a new id, so an owner never names two connections; what liveness must
// track about servers is only which name has which id (for clients that
// send the name) and which client ids each has handed out (see issued).
type liveness struct {
	owners           ownerTable
	nc               *nats.Conn // the service's connection: its own server, and the list without sys
	sys              *nats.Conn // system account: advisories and all connections; may be nil
	log              *slog.Logger
	sweepInterval    time.Duration // not positive: sweep only at start and after reconnects
	keepOnDisconnect bool          // follow connections but release nothing
	// sessions binds sessions to connections and holds their grace
	// (sessions.go); liveness tells it of connections that end.
	sessions *sessionTable

	sub     *nats.Subscription   // advisories; nil without a system connection
	srvSubs []*nats.Subscription // server shutdown and lame duck announcements
	status  chan nats.Status     // disconnects and reconnects of the service's connection
	sysStat chan nats.Status     // reconnects of the system connection
	stop    chan struct{}        // closed by close
	moved   chan struct{}        // a session moved to another server: check the routes now (routewatch.go)
	wg      sync.WaitGroup       // the sweeper and route watcher goroutines
	routes  *routeWatch          // owned by the route watcher goroutine (routewatch.go)
	// onServerGone, when set, is told of every server that announced its
	// shutdown or that the route watcher judged dead, with why: a standby
	// takes over when it is its active's (see tellServerGone).
	onServerGone atomic.Pointer[func(id, why string)]

	mu        sync.Mutex     // guards the fields below and serializes sweeps
	missing   map[string]int // server id → sweeps in a row it did not answer
	lastSweep time.Time

	// idsMu guards the maps below. It is not mu because a sweep holds mu
	// for seconds, and advisories and requests must not wait for it.
	idsMu sync.Mutex
	// ids is the latest id of each server name, and names the reverse.
	ids   map[string]string
	names map[string]string
	// replaced holds the ids that servers had before they restarted: a
	// late advisory or listing of a former life must not make it current
	// again, and its connections are all gone.
	replaced map[string]bool
	// issued is, by server id, the highest client id seen in its list or
	// an advisory. Client ids are handed out in increasing order, so an
	// owner at or below it named a connection that existed: only such
	// owners are remembered as gone, so that a forged owner naming an id
	// not handed out yet does not turn away the connection that gets it.
	issued map[string]uint64
}

func newLiveness(owners ownerTable, nc, sys *nats.Conn, log *slog.Logger, sweepInterval, reconnectGrace time.Duration, keepOnDisconnect bool) *liveness {
	l := &liveness{owners: owners, nc: nc, sys: sys, log: log, sweepInterval: sweepInterval, keepOnDisconnect: keepOnDisconnect,
		stop: make(chan struct{}), moved: make(chan struct{}, 1), routes: newRouteWatch(), missing: map[string]int{},
		ids: map[string]string{}, names: map[string]string{}, replaced: map[string]bool{}, issued: map[string]uint64{}}
	l.sessions = newSessionTable(reconnectGrace, l.releaseSession)
	l.sessions.moved = l.sessionMoved // without the route watcher, moved is never read: a no-op
	return l
}

// releaseSession ends what session holds and waits for.
func (l *liveness) releaseSession(session, why string) {
	grants, waits := l.owners.ReleaseOwner(subjects.Owner{Session: session})
	if grants+waits > 0 {
		l.log.Info("session ended; released its locks", "owner", subjects.Owner{Session: session}.String(),
			"why", why, "grants", grants, "waits", waits)
	}
}

// expectSessions puts the sessions among owners that are not known yet
// into grace, as if their connections had just been cut by their server:
// their clients have the reconnect grace to come back (attach, or any
// request) before their locks are released. A state restored at start
// calls it with the owners it restored; connection owners are ignored.
func (l *liveness) expectSessions(owners []subjects.Owner) int {
	if l.keepOnDisconnect {
		return 0
	}
	var sessions []string
	for _, o := range owners {
		if o.Session != "" {
			sessions = append(sessions, o.Session)
		}
	}
	return l.sessions.expect(sessions)
}

// source says how liveness is followed, for logs and status.
func (l *liveness) source() string {
	if l.sub != nil {
		return "advisories+sweep"
	}
	return "sweep"
}

// start subscribes to the advisories, sweeps once, and starts the sweeper.
// oneServer says that the NATS server is known to be the only one, so that
// the first sweep need not wait for other servers' answers.
func (l *liveness) start(oneServer bool) error {
	if l.sys != nil {
		sub, err := l.sys.Subscribe(disconnectAdvisories, l.onDisconnect)
		if err != nil {
			return fmt.Errorf("subscribing to disconnect advisories: %w", err)
		}
		if err := l.sys.Flush(); err != nil {
			return fmt.Errorf("subscribing to disconnect advisories: %w", err)
		}
		l.sub = sub
		for _, subject := range []string{serverShutdowns, serverLameDucks} {
			sub, err := l.sys.Subscribe(subject, l.onServerLeaving)
			if err != nil {
				return fmt.Errorf("subscribing to %s: %w", subject, err)
			}
			l.srvSubs = append(l.srvSubs, sub)
		}
		if err := l.sys.Flush(); err != nil {
			return fmt.Errorf("subscribing to server announcements: %w", err)
		}
	} else {
		l.log.Warn("no system account connection: disconnects are seen only by the periodic sweep, " +
			"so a dead client's locks are freed within the sweep interval instead of at once; " +
			"give the service system account credentials to follow advisories")
	}

	// nats.go reports a lost connection as RECONNECTING when it will
	// reconnect, DISCONNECTED otherwise.
	l.status = l.nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED)
	l.noteServer(l.nc.ConnectedServerName(), l.nc.ConnectedServerId())
	ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
	defer cancel()
	quiet := connzQuiet
	if oneServer {
		quiet = 0
	}
	if err := l.sweepWithin(ctx, quiet); err != nil {
		l.log.Warn("cannot list connections; locks of clients whose disconnect advisory is missed will not be freed", "err", err)
	}

	if l.sys != nil {
		l.sysStat = l.sys.StatusChanged(nats.CONNECTED)
	}
	l.wg.Add(1)
	go l.run()
	// A single server's death is the service's own connection's loss, and
	// without the system account there are no route lists.
	if l.sys != nil && !oneServer && !l.keepOnDisconnect {
		l.wg.Add(1)
		go l.watchRoutes()
	}
	return nil
}

// run is the sweeper goroutine. Besides every sweepInterval, it sweeps
// after a reconnect: advisories may have been missed meanwhile.
func (l *liveness) run() {
	defer l.wg.Done()
	var tick <-chan time.Time
	if l.sweepInterval > 0 {
		t := time.NewTicker(l.sweepInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-l.stop:
			return
		case <-tick:
		case st := <-l.status:
			if st != nats.CONNECTED {
				l.log.Warn("disconnected from NATS")
				continue
			}
			l.noteServer(l.nc.ConnectedServerName(), l.nc.ConnectedServerId())
			l.log.Info("reconnected to NATS; sweeping for disconnects missed meanwhile")
		case <-l.sysStat: // a nil channel (no system connection) never fires
			l.noteServer(l.sys.ConnectedServerName(), l.sys.ConnectedServerId())
			l.log.Info("system connection reconnected; sweeping for disconnects missed meanwhile")
		}
		ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
		if err := l.sweep(ctx); err != nil {
			l.log.Warn("liveness sweep failed", "err", err)
		}
		cancel()
	}
}

// close stops following liveness and waits for its goroutines.
func (l *liveness) close() {
	close(l.stop)
	l.wg.Wait()
	if l.sub != nil {
		_ = l.sub.Unsubscribe()
	}
	for _, sub := range l.srvSubs {
		_ = sub.Unsubscribe()
	}
	l.sessions.close()
	l.nc.RemoveStatusListener(l.status)
	if l.sysStat != nil {
		l.sys.RemoveStatusListener(l.sysStat)
	}
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
	if l.keepOnDisconnect {
		return
	}
	var ev disconnectEvent
	if err := json.Unmarshal(msg.Data, &ev); err != nil || ev.Client.ID == 0 || ev.Server.ID == "" {
		l.log.Warn("unreadable disconnect advisory", "subject", msg.Subject)
		return
	}
	l.noteServer(ev.Server.Name, ev.Server.ID)
	l.noteIssued(ev.Server.ID, ev.Client.ID)
	// A request that came before the service knew its server's id names
	// the server by name (see ownerOf): that connection is this one too.
	// Such an owner can only be of this server's current life or of one
	// the service never saw, whose connections are all gone.
	owners := []subjects.Owner{{ServerID: ev.Server.ID, ClientID: ev.Client.ID}}
	if name := ev.Server.Name; name != "" && name != ev.Server.ID && l.resolve(name) == ev.Server.ID {
		owners = append(owners, subjects.Owner{ServerID: name, ClientID: ev.Client.ID})
	}
	for _, owner := range owners {
		grants, waits := l.owners.ReleaseOwner(owner)
		if grants+waits > 0 {
			l.log.Info("connection closed; released its locks", "owner", owner.String(), "account", ev.Client.Account,
				"reason", ev.Reason, "grants", grants, "waits", waits)
		}
		if n := l.sessions.connClosed(owner, ev.Reason); n > 0 && !deliberateEnds[ev.Reason] {
			l.log.Info("connection cut; its sessions keep their locks for the reconnect grace", "owner", owner.String(),
				"reason", ev.Reason, "sessions", n, "grace", l.sessions.grace)
		}
	}
}

// onServerLeaving handles a server's announcement that it shuts down (it
// sends no disconnect advisories for its clients then) or enters lame duck
// mode. On shutdown, the sessions bound to its connections enter grace.
// Lame duck mode only announces that the server will close its clients one
// by one over its lame duck duration (minutes by default) while they stay
// connected until then; each close sends a disconnect advisory ("Server
// Shutdown"), and the final shutdown its announcement, which start the
// grace of the sessions concerned. Starting it now would release the locks
// of quiet holders that are still connected.
func (l *liveness) onServerLeaving(msg *nats.Msg) {
	// $SYS.SERVER.<id>.SHUTDOWN or .LAMEDUCK
	rest, ok := strings.CutPrefix(msg.Subject, "$SYS.SERVER.")
	if !ok {
		return
	}
	id, kind, ok := strings.Cut(rest, ".")
	if !ok || id == "" {
		return
	}
	if kind != "SHUTDOWN" {
		l.log.Info("NATS server entered lame duck mode; its clients will be moved", "server", l.nameOf(id), "id", id)
		return
	}
	// The announcement's body names the server: requests of its clients
	// may have named it by name only (see ownerOf), before the service
	// learnt its id.
	var info struct {
		Name string `json:"name"`
		ID   string `json:"id"`
	}
	if json.Unmarshal(msg.Data, &info) == nil && info.ID == id {
		l.noteServer(info.Name, id)
	}
	l.tellServerGone(id, "shut down")
	if l.keepOnDisconnect {
		return
	}
	l.serverGone(id, "NATS server shut down; released the locks of its connections, and its sessions keep theirs for the reconnect grace")
}

// tellServerGone tells onServerGone, if set, that server id is gone, and
// why ("shut down", "is gone").
func (l *liveness) tellServerGone(id, why string) {
	if f := l.onServerGone.Load(); f != nil {
		(*f)(id, why)
	}
}

// serverGone handles the end of server id, which took its connections
// with it and sent no disconnect advisories for them: it shut down, or
// died (routewatch.go). Its sessions enter grace; its connections'
// owners are released at once. msg is the log line.
func (l *liveness) serverGone(id, msg string) {
	gone := func(c subjects.Owner) bool { return l.resolve(c.ServerID) == id }
	// Connections are their owners when no session names them: they are
	// gone for good (a client that reconnects gets a new connection).
	released := l.owners.ReleaseStaleOwners(l.owners.OwnerMark(), func(o subjects.Owner) engine.OwnerState {
		if o.Session == "" && gone(o) {
			return engine.OwnerUnknown
		}
		return engine.OwnerLive
	})
	n := l.sessions.connsGone(math.MaxUint64, gone)
	l.log.Info(msg, "server", l.nameOf(id), "id", id, "owners", len(released), "sessions", n, "grace", l.sessions.grace)
}

// sweep releases the locks of every owner that registered before the sweep
// began and whose connection no server lists any more.
func (l *liveness) sweep(ctx context.Context) error { return l.sweepWithin(ctx, connzQuiet) }

// sweepWithin is sweep, waiting quiet after each server's answer for
// another server's (see gather).
func (l *liveness) sweepWithin(ctx context.Context, quiet time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()

	// Owners that appear after this mark may be missing from the lists we
	// are about to fetch only because they are new: leave them alone.
	mark := l.owners.OwnerMark()
	sessionMark := l.sessions.mark()
	conn, subject := l.nc, accountConnz
	if l.sys != nil {
		conn, subject = l.sys, serverConnz
	}
	list, err := listConnections(ctx, conn, subject, quiet)
	if err != nil {
		return err
	}
	l.lastSweep = time.Now()
	for id, name := range list.names {
		l.noteServer(name, id)
		l.noteIssued(id, list.highest[id])
	}
	if l.keepOnDisconnect {
		return nil
	}
	unanswered := map[string]bool{}
	var unknownSessions []string
	released := l.owners.ReleaseStaleOwners(mark, func(o subjects.Owner) engine.OwnerState {
		if o.Session != "" {
			// Judged below by the connection it is bound to; one bound to
			// none (a restored state no client came back for) gets grace.
			if !l.sessions.known(o.Session) {
				unknownSessions = append(unknownSessions, o.Session)
			}
			return engine.OwnerLive
		}
		l.idsMu.Lock()
		defer l.idsMu.Unlock()
		id := l.resolveLocked(o.ServerID) // an owner that a request named by server name
		if list.gaps[id] {
			return engine.OwnerLive // its list may lack open connections: judge it next time
		}
		conns, answered := list.live[id]
		switch {
		case !answered && l.replaced[id]:
			return engine.OwnerUnknown // the server restarted: all its connections are gone
		case !answered:
			// A server may miss one sweep's quiet window; one that misses
			// several in a row is gone, and so are its connections. Its
			// client ids cannot come back (a restarted server has a new
			// id), so there is nothing to remember.
			unanswered[id] = true
			if l.missing[id]+1 < missingSweepLimit {
				return engine.OwnerLive
			}
			return engine.OwnerUnknown
		}
		if _, ok := conns[o.ClientID]; ok {
			return engine.OwnerLive
		}
		if o.ClientID <= l.issued[id] { // see issued
			return engine.OwnerClosed
		}
		return engine.OwnerUnknown
	})
	// A session whose connection is missing from its server's list, or
	// whose server did not answer at all, enters grace: its client may be
	// reconnecting elsewhere right now.
	graced := l.sessions.connsGone(sessionMark, func(c subjects.Owner) bool {
		l.idsMu.Lock()
		defer l.idsMu.Unlock()
		id := l.resolveLocked(c.ServerID)
		if list.gaps[id] {
			return false
		}
		conns, answered := list.live[id]
		if !answered {
			return true
		}
		_, open := conns[c.ClientID]
		return !open && c.ClientID <= l.issued[id]
	})
	graced += l.sessions.expect(unknownSessions)
	l.sessions.forgetIdle(func(s string) bool { return l.owners.HasOwner(subjects.Owner{Session: s}) })
	if graced > 0 {
		l.log.Info("sweep found sessions without a connection; they keep their locks for the reconnect grace",
			"sessions", graced, "grace", l.sessions.grace)
	}
	for id := range list.live {
		delete(l.missing, id)
	}
	for id := range list.gaps {
		l.log.Warn("connections closed faster than the sweep could page through the list; this server's owners are judged at the next sweep",
			"server", list.names[id])
	}
	for id := range unanswered {
		l.missing[id]++
	}
	if len(released) > 0 {
		l.log.Info("sweep released the locks of closed connections", "owners", len(released))
	}
	return nil
}

// noteServer records that the server called name has id. A new id for a
// known name means the server restarted: every connection of its former
// life is gone, and their locks are released now rather than when the old
// id has missed enough sweeps.
func (l *liveness) noteServer(name, id string) {
	if name == "" || id == "" {
		return
	}
	l.idsMu.Lock()
	if l.replaced[id] {
		l.idsMu.Unlock()
		return // late news of a former life: keep the current id
	}
	old := l.ids[name]
	l.ids[name], l.names[id] = id, name
	if old != "" && old != id {
		l.replaced[old] = true
	}
	l.idsMu.Unlock()
	if old == "" || old == id || l.keepOnDisconnect {
		return
	}
	released := l.owners.ReleaseStaleOwners(l.owners.OwnerMark(), func(o subjects.Owner) engine.OwnerState {
		if o.ServerID == old {
			return engine.OwnerUnknown
		}
		return engine.OwnerLive
	})
	l.log.Warn("NATS server restarted; released the locks of its old connections",
		"server", name, "old_id", old, "new_id", id, "owners", len(released))
	// Its sessions' clients reconnect, to it or to another server.
	if n := l.sessions.connsGone(math.MaxUint64, func(c subjects.Owner) bool { return c.ServerID == old }); n > 0 {
		l.log.Info("the sessions of the restarted server's old connections keep their locks for the reconnect grace",
			"server", name, "sessions", n, "grace", l.sessions.grace)
	}
}

// resolve returns the id of the server that server names: server itself
// when it is an id (or a server not known yet), or the id of the server of
// that name. Clients before server ids were used name their server by
// name; so does Nats-Request-Info.
func (l *liveness) resolve(server string) string {
	l.idsMu.Lock()
	defer l.idsMu.Unlock()
	return l.resolveLocked(server)
}

func (l *liveness) resolveLocked(server string) string {
	if _, isID := l.names[server]; isID {
		return server
	}
	if id, ok := l.ids[server]; ok {
		return id
	}
	return server
}

// nameOf returns the name of server id, "" if unknown.
func (l *liveness) nameOf(id string) string {
	l.idsMu.Lock()
	defer l.idsMu.Unlock()
	return l.names[id]
}

// noteIssued records that server id has handed out client id cid.
func (l *liveness) noteIssued(id string, cid uint64) {
	l.idsMu.Lock()
	defer l.idsMu.Unlock()
	l.issued[id] = max(l.issued[id], cid)
}

// LastSweep is when the last successful sweep listed the connections.
func (l *liveness) LastSweep() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastSweep
}
