package service

import (
	"sync"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file follows sessions (subjects.HeaderSession): which connection
// each one is bound to, and the reconnect grace of those whose connection
// was cut. Liveness feeds it the connections' ends; the handler binds a
// session on each of its requests.

// deliberateEnds are the disconnect advisory reasons (nats-server's
// ClosedState strings) of a connection that ended because its client
// closed it, its process died, or an operator or the auth system ended it:
// its sessions lose their locks at once. Any other reason (Server Shutdown,
// Stale Connection, Read Error, Write Error, slow consumer, …) is not the
// client's doing, and its sessions get the reconnect grace.
var deliberateEnds = map[string]bool{
	"Client Closed":          true, // the client closed it, or its process died (the OS closed the socket)
	"Kicked":                 true, // an operator's $SYS.REQ.SERVER.<id>.KICK
	"Authentication Expired": true,
	"Credentials Revoked":    true,
}

// closedConnWindow is how long a closed connection of a session is
// remembered, so that its requests that arrive late (on the service's
// connection, while the advisory came on the system one) do not bind the
// session to it again. Only connections that had a session are kept.
const (
	closedConnWindow = 10 * time.Second
	closedConnMemory = 10_000
)

// sessionTable is owned by its mutex. It knows nothing of NATS or of the
// engine: it is told of requests and of connection ends, and calls release
// for a session whose locks must end.
type sessionTable struct {
	grace   time.Duration
	now     func() time.Time
	after   func(time.Duration, func()) (stop func() bool) // time.AfterFunc; a fake in tests
	release func(session, why string)                      // ends the session's grants and waits; called without mu
	// moved, if set, is called (with mu held: it must not block) when a
	// session bound to a live connection makes a request over a
	// connection on another server: its client may have left a server
	// that died without a word, which liveness then checks at once.
	moved func()

	mu sync.Mutex
	// conn is the connection each known session is bound to: the one of
	// its latest request, or of its latest connection before a cut. A
	// session restored from durable state has none until it comes back.
	conn map[string]subjects.Owner
	// byConn is the reverse of conn, for live connections only: a cut
	// connection's sessions move to graced.
	byConn map[subjects.Owner]*connSessions
	binds  uint64 // number of the latest binding
	// bindSeq is the number of each bound session's latest binding, and
	// idle the number it had when a sweep found it owning nothing (see
	// forgetIdle).
	bindSeq map[string]uint64
	idle    map[string]uint64
	// graced holds the sessions in grace, each with the number of its
	// grace: a grace that ends finds its sessions still there only if no
	// request came meanwhile.
	graced map[string]uint64
	stops  map[uint64]func() bool // the timers of graces not ended yet
	next   uint64                 // number of the latest grace
	closed map[subjects.Owner]time.Time
	ended  bool // close was called: no more timers
}

// connSessions is the sessions bound to one connection.
type connSessions struct {
	since    uint64 // binds when the first of them was bound (see mark)
	sessions map[string]struct{}
}

func newSessionTable(grace time.Duration, release func(session, why string)) *sessionTable {
	return &sessionTable{
		grace: grace, now: time.Now, release: release,
		after: func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop },
		conn:  map[string]subjects.Owner{}, byConn: map[subjects.Owner]*connSessions{},
		graced: map[string]uint64{}, stops: map[uint64]func() bool{}, closed: map[subjects.Owner]time.Time{},
		bindSeq: map[string]uint64{}, idle: map[string]uint64{},
	}
}

// bind records that a request of session came over connection c, and
// reports whether the session was known (bound or in grace) before. A
// session in grace leaves it, with everything it holds. A request from a
// connection that closed recently changes nothing: it was sent before the
// close.
func (t *sessionTable) bind(session string, c subjects.Owner) (known bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cur, bound := t.conn[session]
	if bound && cur == c {
		// The usual case: one lookup. A session in grace is bound to its
		// cut connection, whose late requests must not end the grace.
		return true
	}
	_, inGrace := t.graced[session]
	known = bound || inGrace
	if _, late := t.closed[c]; late {
		return known
	}
	if bound && !inGrace && cur.ServerID != c.ServerID && t.moved != nil {
		t.moved()
	}
	delete(t.graced, session)
	t.binds++
	t.bindSeq[session] = t.binds
	if bound {
		t.unindexLocked(session, cur)
	}
	delete(t.idle, session)
	t.conn[session] = c
	cs := t.byConn[c]
	if cs == nil {
		cs = &connSessions{since: t.binds, sessions: map[string]struct{}{}}
		t.byConn[c] = cs
	}
	cs.sessions[session] = struct{}{}
	return known
}

// unindexLocked removes session from byConn of c.
func (t *sessionTable) unindexLocked(session string, c subjects.Owner) {
	if cs := t.byConn[c]; cs != nil {
		delete(cs.sessions, session)
		if len(cs.sessions) == 0 {
			delete(t.byConn, c)
		}
	}
}

// connClosed handles the end of connection c, for the advisory's reason:
// its sessions lose their locks now if the end was deliberate, else they
// enter grace. It returns how many sessions it concerned.
func (t *sessionTable) connClosed(c subjects.Owner, reason string) int {
	t.mu.Lock()
	set := t.takeConnLocked(c)
	if len(set) == 0 {
		t.mu.Unlock()
		return 0
	}
	if !deliberateEnds[reason] {
		t.startGraceLocked(set)
		t.mu.Unlock()
		return len(set)
	}
	for _, s := range set {
		t.forgetLocked(s)
	}
	t.mu.Unlock()
	for _, s := range set {
		t.release(s, "connection closed: "+reason)
	}
	return len(set)
}

// takeConnLocked removes connection c from byConn, remembers it as closed,
// and returns its sessions.
func (t *sessionTable) takeConnLocked(c subjects.Owner) []string {
	cs := t.byConn[c]
	if cs == nil {
		return nil
	}
	delete(t.byConn, c)
	t.rememberClosedLocked(c)
	out := make([]string, 0, len(cs.sessions))
	for s := range cs.sessions {
		out = append(out, s)
	}
	return out
}

// rememberClosedLocked adds c to closed, dropping the entries older than
// the window, or any when full.
func (t *sessionTable) rememberClosedLocked(c subjects.Owner) {
	now := t.now()
	if len(t.closed) >= closedConnMemory {
		for o, at := range t.closed {
			if now.Sub(at) > closedConnWindow || len(t.closed) >= closedConnMemory {
				delete(t.closed, o)
			}
		}
	}
	t.closed[c] = now
}

// mark returns the number of the latest binding to a new connection; pass
// it to connsGone.
func (t *sessionTable) mark() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.binds
}

// connsGone puts into grace the sessions of every connection bound at or
// before mark for which gone returns true: those of a server that
// announced its shutdown, or that a sweep found missing. A sweep passes
// the mark taken before it listed the connections, so that a connection
// too new to be in the lists is not judged by them. gone is called with mu
// held. It returns how many sessions entered grace.
func (t *sessionTable) connsGone(mark uint64, gone func(subjects.Owner) bool) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var all []string
	for c, cs := range t.byConn {
		if cs.since <= mark && gone(c) {
			all = append(all, t.takeConnLocked(c)...)
		}
	}
	if len(all) > 0 {
		t.startGraceLocked(all)
	}
	return len(all)
}

// expect puts into grace the sessions that the service does not know yet:
// those of a state restored at start, whose clients are expected to come
// back. Known sessions are left as they are.
func (t *sessionTable) expect(sessions []string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var fresh []string
	for _, s := range sessions {
		_, bound := t.conn[s]
		_, inGrace := t.graced[s]
		if !bound && !inGrace {
			fresh = append(fresh, s)
		}
	}
	if len(fresh) > 0 {
		t.startGraceLocked(fresh)
	}
	return len(fresh)
}

// startGraceLocked starts one grace for sessions: if none of them is
// bound again when it ends, its locks are released.
func (t *sessionTable) startGraceLocked(sessions []string) {
	if t.ended {
		return
	}
	t.next++
	n := t.next
	for _, s := range sessions {
		t.graced[s] = n
	}
	t.stops[n] = t.after(t.grace, func() { t.endGrace(n, sessions) })
}

// endGrace releases those of sessions that are still in grace number n.
func (t *sessionTable) endGrace(n uint64, sessions []string) {
	t.mu.Lock()
	delete(t.stops, n)
	var lost []string
	for _, s := range sessions {
		if t.graced[s] == n {
			delete(t.graced, s)
			t.forgetLocked(s)
			lost = append(lost, s)
		}
	}
	t.mu.Unlock()
	for _, s := range lost {
		t.release(s, "no reconnect within the grace")
	}
}

// forgetLocked drops what the table knows of session's binding.
func (t *sessionTable) forgetLocked(s string) {
	delete(t.conn, s)
	delete(t.bindSeq, s)
	delete(t.idle, s)
}

// forgetIdle drops the bindings of sessions that own nothing (owns returns
// false) at two sweeps in a row without a new binding between: a client
// that made a session, used it and closed without closing its connection
// must not leave it behind for the connection's life. Two sweeps, not one,
// because a request binds its session just before the engine registers
// what it asked for. A forgotten session that comes back is bound again;
// its attach says it was not known (resumed false). owns is called with mu
// held. It returns how many bindings it dropped.
func (t *sessionTable) forgetIdle(owns func(session string) bool) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for s, c := range t.conn {
		if _, inGrace := t.graced[s]; inGrace {
			continue
		}
		if owns(s) {
			delete(t.idle, s)
			continue
		}
		seq := t.bindSeq[s]
		if prev, seen := t.idle[s]; seen && prev == seq {
			t.unindexLocked(s, c)
			t.forgetLocked(s)
			n++
			continue
		}
		t.idle[s] = seq
	}
	return n
}

// known reports whether session is bound or in grace.
func (t *sessionTable) known(session string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, bound := t.conn[session]
	_, inGrace := t.graced[session]
	return bound || inGrace
}

// connOf returns the connection session is bound to (the zero Owner if
// none): where its lost notices go.
func (t *sessionTable) connOf(session string) subjects.Owner {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.conn[session]
}

// inGrace returns how many sessions are in grace.
func (t *sessionTable) inGrace() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.graced)
}

// close stops the grace timers; nothing is released after.
func (t *sessionTable) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ended = true
	for n, stop := range t.stops {
		stop()
		delete(t.stops, n)
	}
}
