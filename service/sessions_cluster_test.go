package service_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

const (
	sessionA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	sessionB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// sessionMsg is a request of op on name with the headers our clients send:
// the connection's owner and, when not empty, the session.
func sessionMsg(t *testing.T, nc *nats.Conn, op, name, body, session string) *nats.Msg {
	t.Helper()
	subject := subjects.DefaultPrefix + "." + op
	if name != "" {
		subject = subjects.Subject(subjects.DefaultPrefix, op, name)
	}
	msg := nats.NewMsg(subject)
	msg.Data = []byte(body)
	msg.Header.Set(subjects.HeaderOwner, ownerOf(t, nc))
	if session != "" {
		msg.Header.Set(subjects.HeaderSession, session)
	}
	return msg
}

// sendSession is send with the session header.
func sendSession(t *testing.T, nc *nats.Conn, op, name, body, session string) reply {
	t.Helper()
	res, err := nc.RequestMsg(sessionMsg(t, nc, op, name, body, session), testTimeout)
	if err != nil {
		t.Fatalf("%s %q: %v", op, name, err)
	}
	var r reply
	if err := json.Unmarshal(res.Data, &r); err != nil {
		t.Fatalf("%s %q: reply %q: %v", op, name, res.Data, err)
	}
	return r
}

// attach sends PREFIX.attach for session over nc.
func attach(t *testing.T, nc *nats.Conn, session string) subjects.AttachResponse {
	t.Helper()
	res, err := nc.RequestMsg(sessionMsg(t, nc, subjects.OpAttach, "", "", session), testTimeout)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	var r subjects.AttachResponse
	if err := subjects.DecodeAttachResponse(res.Data, &r); err != nil {
		t.Fatalf("attach reply %q: %v", res.Data, err)
	}
	return r
}

// parkedLock sends a lock request that will wait, and returns the channel
// of its reply. The reply inbox of nc survives nc's reconnects.
func parkedLock(t *testing.T, nc *nats.Conn, name, key, session string) <-chan reply {
	t.Helper()
	msg := sessionMsg(t, nc, subjects.OpLock, name, `{"key":"`+key+`"}`, session)
	out := make(chan reply, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*testTimeout)
		defer cancel()
		var r reply
		res, err := nc.RequestMsgWithContext(ctx, msg)
		if err == nil {
			err = json.Unmarshal(res.Data, &r)
		}
		if err != nil {
			r.Error = &subjects.Error{Code: "transport", Message: err.Error()}
		}
		out <- r
	}()
	return out
}

// holders returns the keys holding name and those waiting, in order.
func holders(svc *service.Service, name string) (held, waiting []string) {
	for _, l := range svc.Engine().Snapshot() {
		if l.Name == name {
			for _, h := range l.Holders {
				held = append(held, h.Key)
			}
			for _, w := range l.Waiters {
				waiting = append(waiting, w.Key)
			}
		}
	}
	return held, waiting
}

// clusterClient connects to the members after the first (the service's),
// reconnecting at once to any member when its server goes.
func clusterClient(t *testing.T, c *ldlmtest.Cluster) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.URLs(1), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.DontRandomize())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// reconnected waits until nc is connected to a server other than the one
// of id before.
func reconnected(t *testing.T, nc *nats.Conn, before string) {
	t.Helper()
	eventually(t, "the client reconnected to another server", func() bool {
		return nc.IsConnected() && nc.ConnectedServerId() != before
	})
}

// A holder whose NATS server shuts down reconnects to another member and
// attaches its session: it keeps its lock (same key and token, renewable)
// and its place in a queue, however long the grace; the locks of a
// holder whose server went away and who never came back are released when
// the grace ends.
func TestSessionSurvivesServerShutdown(t *testing.T) {
	t.Parallel()
	c := ldlmtest.StartCluster(t, 3, ldlmtest.WithConfig(service.Config{ReconnectGrace: time.Second}))
	holder := clusterClient(t, c)
	quitter, err := nats.Connect(c.URLs(1), nats.NoReconnect(), nats.DontRandomize())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(quitter.Close)
	waiter, err := nats.Connect(c.Members[0].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(waiter.Close)
	eventually(t, "the service answers on every member", func() bool {
		r := sendSession(t, holder, subjects.OpTryLock, "probe", "", "")
		return r.Locked
	})

	got := sendSession(t, holder, subjects.OpTryLock, "job", `{"key":"holder-key"}`, sessionA)
	if !got.Locked {
		t.Fatalf("trylock: %+v", got)
	}
	// The session also waits for "queue", before another waiter.
	if r := sendSession(t, waiter, subjects.OpTryLock, "queue", `{"key":"queue-holder"}`, ""); !r.Locked {
		t.Fatalf("trylock queue: %+v", r)
	}
	sessionWait := parkedLock(t, holder, "queue", "session-wait", sessionA)
	eventually(t, "the session waits for queue", func() bool { _, w := holders(c.Service, "queue"); return len(w) == 1 })
	otherWait := parkedLock(t, waiter, "queue", "other-wait", "")
	eventually(t, "the other waiter waits for queue", func() bool { _, w := holders(c.Service, "queue"); return len(w) == 2 })
	// A holder on the same server that will not come back.
	if r := sendSession(t, quitter, subjects.OpTryLock, "abandoned", `{"key":"quitter-key"}`, sessionB); !r.Locked {
		t.Fatalf("trylock abandoned: %+v", r)
	}
	abandonedWait := parkedLock(t, waiter, "abandoned", "abandoned-wait", "")
	eventually(t, "a waiter waits for abandoned", func() bool { _, w := holders(c.Service, "abandoned"); return len(w) == 1 })

	before := holder.ConnectedServerId()
	if quitter.ConnectedServerId() != before {
		t.Fatal("the two clients are on different servers")
	}
	c.MemberOf(holder).Shutdown()
	reconnected(t, holder, before)

	a := attach(t, holder, sessionA)
	if !a.Attached || !a.Resumed {
		t.Fatalf("attach after the reconnect: %+v", a)
	}
	if len(a.Held) != 1 || a.Held[0] != (subjects.AttachedLock{Name: "job", Key: "holder-key", Token: got.Token}) {
		t.Errorf("attach lists held %+v, want job with the same key and token %d", a.Held, got.Token)
	}
	if len(a.Waiting) != 1 || a.Waiting[0] != (subjects.AttachedLock{Name: "queue", Key: "session-wait"}) {
		t.Errorf("attach lists waiting %+v, want queue", a.Waiting)
	}

	// The abandoned lock goes to its waiter once the grace ends.
	select {
	case r := <-abandonedWait:
		if !r.Locked {
			t.Fatalf("the waiter for the abandoned lock: %+v", r)
		}
	case <-time.After(3 * testTimeout):
		t.Fatal("the abandoned lock was not released after the grace")
	}
	// By then the grace of the holder's old connection has ended too: it
	// must still hold, and renew.
	if r := sendSession(t, holder, subjects.OpRenew, "job", `{"key":"holder-key","lock_timeout_seconds":30}`, sessionA); !r.Locked || r.Token != got.Token {
		t.Fatalf("renew after the reconnect: %+v", r)
	}
	// The session kept its place before the other waiter.
	sendSession(t, waiter, subjects.OpUnlock, "queue", `{"key":"queue-holder"}`, "")
	if r := <-sessionWait; !r.Locked || r.Key != "session-wait" {
		t.Fatalf("the session's parked lock, answered over the new connection: %+v", r)
	}
	select {
	case r := <-otherWait:
		t.Fatalf("the later waiter was served first: %+v", r)
	default:
	}
	// The abandoned session is forgotten: a client coming back late is
	// told so, and makes a new session.
	if a := attach(t, waiter, sessionB); !a.Attached || a.Resumed || len(a.Held)+len(a.Waiting) != 0 {
		t.Fatalf("attach of the abandoned session: %+v", a)
	}
}

// A connection that its client closes, or that an operator kicks, loses
// its session's locks at once: with an hour of grace, only that frees them
// within the test's time.
func TestSessionReleasedAtOnceOnDeliberateEnd(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{ReconnectGrace: time.Hour}))
	other := srv.Connect(t)
	// A released session is remembered as gone for a while (its late
	// requests are refused): each case has its own.
	for end, session := range map[string]string{"Client Closed": sessionA, "Kicked": sessionB} {
		t.Run(end, func(t *testing.T) {
			nc := srv.Connect(t, nats.NoReconnect())
			name := "deliberate-" + end
			if r := sendSession(t, nc, subjects.OpTryLock, name, "", session); !r.Locked {
				t.Fatalf("trylock: %+v", r)
			}
			if end == "Kicked" {
				srv.Kick(t, nc)
			} else {
				nc.Close()
			}
			eventually(t, "the lock is free again", func() bool {
				r := sendSession(t, other, subjects.OpTryLock, name, "", "")
				return r.Locked
			})
		})
	}
}

// What attach and the session header refuse.
func TestSessionBadRequests(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	tests := []struct {
		name, op, body, session string
		noOwner                 bool
	}{
		{name: "attach without session", op: subjects.OpAttach},
		{name: "attach with a short session", op: subjects.OpAttach, session: "short"},
		{name: "attach with a dot in the session", op: subjects.OpAttach, session: "0123456789abcdef.0123"},
		{name: "attach without owner", op: subjects.OpAttach, session: sessionA, noOwner: true},
		{name: "attach with a body", op: subjects.OpAttach, session: sessionA, body: `{"key":"k"}`},
		{name: "lock with a bad session", op: subjects.OpTryLock, session: "not a session id"},
		{name: "lock with a session and no owner", op: subjects.OpTryLock, session: sessionA, noOwner: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := ""
			if tt.op != subjects.OpAttach {
				name = "bad"
			}
			msg := sessionMsg(t, nc, tt.op, name, tt.body, tt.session)
			if tt.noOwner {
				msg.Header.Del(subjects.HeaderOwner)
			}
			res, err := nc.RequestMsg(msg, testTimeout)
			if err != nil {
				t.Fatal(err)
			}
			var r struct {
				Error *subjects.Error `json:"error"`
			}
			if err := json.Unmarshal(res.Data, &r); err != nil {
				t.Fatal(err)
			}
			if r.Error == nil || r.Error.Code != subjects.CodeBadRequest || res.Header.Get(subjects.HeaderErrorCode) != string(subjects.CodeBadRequest) {
				t.Fatalf("reply %s, want BadRequest", res.Data)
			}
		})
	}
	// A longer subject under PREFIX.attach is not ours: no reply.
	msg := sessionMsg(t, nc, subjects.OpAttach, "", "", sessionA)
	msg.Subject += ".more"
	if _, err := nc.RequestMsg(msg, 200*time.Millisecond); err == nil {
		t.Error("PREFIX.attach.more was answered")
	}
}

// Without the session header, a lock is the connection's, as before
// sessions: a reconnect (new client id) loses it, and attach of a session
// lists nothing of it.
func TestRequestWithoutSessionIsConnectionOwned(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{ReconnectGrace: time.Hour}))
	nc := srv.Connect(t, nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond))
	other := srv.Connect(t)
	if r := sendSession(t, nc, subjects.OpTryLock, "plain", "", ""); !r.Locked {
		t.Fatalf("trylock: %+v", r)
	}
	for _, l := range srv.Service.Engine().Snapshot() {
		if l.Name == "plain" && l.Holders[0].Owner.Session != "" {
			t.Fatalf("owner %+v has a session", l.Holders[0].Owner)
		}
	}
	if a := attach(t, nc, sessionA); len(a.Held) != 0 {
		t.Fatalf("attach lists %+v", a.Held)
	}
	srv.Kick(t, nc) // "Kicked"; a stale connection would be the same for it
	eventually(t, "the lock is free again", func() bool {
		return sendSession(t, other, subjects.OpTryLock, "plain", "", "").Locked
	})
}

// A single NATS server restarts (a new server id) under a service that
// stays up: the holder reconnects to it, attaches, and keeps its lock.
func TestSessionSurvivesServerRestart(t *testing.T) {
	t.Parallel()
	opts := func(port int) *server.Options {
		app, sys := server.NewAccount("APP"), server.NewAccount("SYS")
		return &server.Options{
			Host: "127.0.0.1", Port: port, ServerName: "restarting-sessions", NoSigs: true,
			Accounts: []*server.Account{app, sys}, SystemAccount: "SYS", NoAuthUser: "app",
			Users: []*server.User{{Username: "app", Account: app}, {Username: "sys", Password: "sys", Account: sys}},
		}
	}
	start := func(port int) *server.Server {
		ns, err := server.NewServer(opts(port))
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		if !ns.ReadyForConnections(testTimeout) {
			t.Fatal("nats-server not ready")
		}
		return ns
	}
	ns := start(server.RANDOM_PORT)
	port := ns.Addr().(*net.TCPAddr).Port
	url := ns.ClientURL()
	reconnecting := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond)}
	connect := func(opts ...nats.Option) *nats.Conn {
		nc, err := nats.Connect(url, append(reconnecting, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	svcConn, sysConn := connect(nats.NoEcho()), connect(nats.UserInfo("sys", "sys"))
	svc, err := service.Start(service.Config{ReconnectGrace: time.Hour}, svcConn, sysConn, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Stop)
	holder := connect()
	got := sendSession(t, holder, subjects.OpTryLock, "job", `{"key":"holder-key"}`, sessionA)
	if !got.Locked {
		t.Fatalf("trylock: %+v", got)
	}

	before := holder.ConnectedServerId()
	ns.Shutdown()
	ns.WaitForShutdown()
	ns = start(port)
	t.Cleanup(ns.Shutdown)
	eventually(t, "everyone is back", func() bool {
		return holder.IsConnected() && holder.ConnectedServerId() != before && svcConn.IsConnected() && sysConn.IsConnected()
	})
	eventually(t, "the service learnt of the restart and the session is in grace, or attached already", func() bool {
		return svc.SessionsInGrace() == 1
	})
	var a subjects.AttachResponse
	eventually(t, "the service answers the attach", func() bool {
		res, err := holder.RequestMsg(sessionMsg(t, holder, subjects.OpAttach, "", "", sessionA), time.Second)
		return err == nil && subjects.DecodeAttachResponse(res.Data, &a) == nil
	})
	if !a.Resumed || len(a.Held) != 1 || a.Held[0].Key != "holder-key" || a.Held[0].Token != got.Token {
		t.Fatalf("attach after the restart: %+v", a)
	}
	if n := svc.SessionsInGrace(); n != 0 {
		t.Errorf("%d sessions still in grace after the attach", n)
	}
	if r := sendSession(t, holder, subjects.OpRenew, "job", `{"key":"holder-key","lock_timeout_seconds":30}`, sessionA); !r.Locked {
		t.Fatalf("renew: %+v", r)
	}
}
