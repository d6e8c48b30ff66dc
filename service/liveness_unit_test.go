package service

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/subjects"
)

// page is one server's answer to a connection-list request.
func page(server string, offset, total int, cids ...uint64) connzReply {
	var r connzReply
	r.Server.Name, r.Server.ID = server, server+"-id"
	r.Data.Offset, r.Data.Total = offset, total
	for _, cid := range cids {
		r.Data.Conns = append(r.Data.Conns, connzConn{CID: cid})
	}
	return r
}

// The servers page their lists by position, sorted by client id. Pages
// overlap, so that connections closing between two pages cannot push an
// open one past the page already read unnoticed: a list with such a gap
// must not be used to judge that server's owners.
func TestConnListPages(t *testing.T) {
	type step struct {
		offset int
		r      connzReply
		more   bool
	}
	tests := []struct {
		name  string
		steps []step
		live  []uint64
		gaps  bool
	}{
		{"one page", []step{{0, page("n", 0, 3, 1, 2, 5), false}}, []uint64{1, 2, 5}, false},
		{"empty server", []step{{0, page("n", 0, 0), false}}, nil, false},
		{"two pages, nothing closed", []step{
			{0, page("n", 0, 6, 1, 2, 3, 4), true},
			{2, page("n", 2, 6, 3, 4, 5, 6), false},
		}, []uint64{1, 2, 3, 4, 5, 6}, false},
		{"one close between pages, within the overlap", []step{
			{0, page("n", 0, 6, 1, 2, 3, 4), true},
			// 2 closed: 5 moved to position 3, the page starts at 4.
			{2, page("n", 2, 5, 4, 5, 6), false},
		}, []uint64{1, 2, 3, 4, 5, 6}, false},
		{"more closes than the overlap", []step{
			{0, page("n", 0, 7, 1, 2, 3, 4), true},
			// 1, 2 and 3 closed: 5 moved to position 1, the page skips it.
			{2, page("n", 2, 4, 6, 7), false},
		}, []uint64{1, 2, 3, 4}, true},
		{"so many closes that the next page is empty", []step{
			{0, page("n", 0, 7, 1, 2, 3, 4), true},
			{2, page("n", 2, 2), false},
		}, []uint64{1, 2, 3, 4}, true},
		{"a page out of client id order", []step{{0, page("n", 0, 6, 1, 3, 2, 4), false}}, []uint64{1, 2, 3, 4}, true},
		{"a page after the end of a complete list", []step{
			{0, page("n", 0, 2, 1, 2), false},
			{2, page("n", 2, 2), false},
		}, []uint64{1, 2}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list := newConnList()
			for i, st := range tt.steps {
				if more := list.add(st.r, st.offset); more != st.more {
					t.Fatalf("page %d: more = %v, want %v", i, more, st.more)
				}
			}
			got := slices.Sorted(maps.Keys(list.live["n-id"]))
			if !slices.Equal(got, tt.live) {
				t.Errorf("live client ids %v, want %v", got, tt.live)
			}
			if list.gaps["n-id"] != tt.gaps {
				t.Errorf("gaps = %v, want %v", list.gaps["n-id"], tt.gaps)
			}
			if list.names["n-id"] != "n" {
				t.Errorf("server name %q", list.names["n-id"])
			}
		})
	}
}

// A disconnect advisory of a server's former life that arrives after the
// restart was seen names a client id that a connection of the new life may
// hold: it must not release that connection's locks, nor make the old id
// current again. Owners carry the server id, so this holds by construction.
func TestLateAdvisoryOfFormerServerLifeIgnored(t *testing.T) {
	e := engine.New()
	t.Cleanup(e.Close)
	l := newLiveness(e, nil, nil, slog.New(slog.DiscardHandler), 0, DefaultReconnectGrace, false)
	advisory := func(serverID string, cid uint64) *nats.Msg {
		return &nats.Msg{Data: fmt.Appendf(nil, `{"server":{"name":"n","id":%q},"client":{"id":%d,"acc":"APP"},"reason":"Client Closed"}`, serverID, cid)}
	}

	l.noteServer("n", "OLD")
	old := subjects.Owner{ServerID: "OLD", ClientID: 3}
	if _, ok, err := e.TryLock(engine.Request{Name: "old", Owner: old}); !ok || err != nil {
		t.Fatalf("trylock of the old connection 3: %v, %v", ok, err)
	}
	l.noteServer("n", "NEW") // restarted: the old life's locks go at once
	if st := e.Stats(); st.Holders != 0 {
		t.Fatalf("the old server life's lock survived its restart: %+v", st)
	}
	owner := subjects.Owner{ServerID: l.resolve("n"), ClientID: 7}
	if owner.ServerID != "NEW" {
		t.Fatalf("the name n resolves to %q, want NEW", owner.ServerID)
	}
	if _, ok, err := e.TryLock(engine.Request{Name: "job", Owner: owner}); !ok || err != nil {
		t.Fatalf("trylock of the new connection 7: %v, %v", ok, err)
	}

	l.onDisconnect(advisory("OLD", 7))
	if st := e.Stats(); st.Holders != 1 {
		t.Fatalf("an advisory of the old server's connection 7 released the new connection 7's lock: %+v", st)
	}
	if got := l.resolve("n"); got != "NEW" {
		t.Fatalf("the late advisory turned the server's id back to %q", got)
	}

	l.onDisconnect(advisory("NEW", 7))
	if st := e.Stats(); st.Holders != 0 {
		t.Fatalf("the advisory of the new connection 7 did not release its lock: %+v", st)
	}
}

// A request that came before the service knew its server's id names the
// server by name. The server's word that the connection is gone (its
// disconnect advisory, or its shutdown announcement) carries the id and the
// name: it must reach that connection's locks and sessions too.
func TestServerKnownOnlyByName(t *testing.T) {
	const session = "session-known-by-name"
	byName := subjects.Owner{ServerID: "m1", ClientID: 4} // no sweep has listed m1 yet
	tests := []struct {
		name       string
		msg        *nats.Msg
		wantHeld   int // locks still held after: the session's, if in grace
		wantGraced int
	}{
		{"disconnect advisory, client closed",
			&nats.Msg{Subject: "$SYS.ACCOUNT.APP.DISCONNECT",
				Data: []byte(`{"server":{"name":"m1","id":"M1ID"},"client":{"id":4,"acc":"APP"},"reason":"Client Closed"}`)},
			0, 0},
		{"disconnect advisory, connection cut",
			&nats.Msg{Subject: "$SYS.ACCOUNT.APP.DISCONNECT",
				Data: []byte(`{"server":{"name":"m1","id":"M1ID"},"client":{"id":4,"acc":"APP"},"reason":"Stale Connection"}`)},
			1, 1},
		{"shutdown announcement",
			&nats.Msg{Subject: "$SYS.SERVER.M1ID.SHUTDOWN", Data: []byte(`{"name":"m1","host":"0.0.0.0","id":"M1ID","ver":"2.15.2"}`)},
			1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := engine.New()
			t.Cleanup(e.Close)
			l := newLiveness(e, nil, nil, slog.New(slog.DiscardHandler), 0, DefaultReconnectGrace, false)
			t.Cleanup(l.sessions.close)
			if got := l.resolve("m1"); got != "m1" {
				t.Fatalf("m1 resolves to %q before any word of it", got)
			}
			if _, ok, err := e.TryLock(engine.Request{Name: "conn", Owner: byName}); !ok || err != nil {
				t.Fatalf("trylock of the connection: %v, %v", ok, err)
			}
			l.sessions.bind(session, byName)
			if _, ok, err := e.TryLock(engine.Request{Name: "sess", Owner: subjects.Owner{Session: session}}); !ok || err != nil {
				t.Fatalf("trylock of the session: %v, %v", ok, err)
			}

			if strings.HasSuffix(tt.msg.Subject, ".DISCONNECT") {
				l.onDisconnect(tt.msg)
			} else {
				l.onServerLeaving(tt.msg)
			}
			if got := l.resolve("m1"); got != "M1ID" {
				t.Errorf("m1 resolves to %q after the server's word, want M1ID", got)
			}
			if st := e.Stats(); st.Holders != tt.wantHeld {
				t.Errorf("%d locks held after, want %d (the connection's lock is freed; the session's kept in grace)", st.Holders, tt.wantHeld)
			}
			if got := l.sessions.inGrace(); got != tt.wantGraced {
				t.Errorf("%d sessions in grace, want %d", got, tt.wantGraced)
			}
		})
	}
}
