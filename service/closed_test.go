package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// A request sent just before its connection closed can be read after the
// service processed the close: it must be refused, not granted to a
// connection that will never unlock.
func TestRequestOfClosedConnectionRefused(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{SweepInterval: -1}))
	other := srv.Connect(t)

	// A connection whose close the service has seen: its lock is released.
	holder := srv.Connect(t)
	holderOwner := ownerOf(t, holder)
	send(t, holder, subjects.OpTryLock, "held", "", holderOwner)
	holder.Close()
	eventually(t, "the closed connection's lock is released", func() bool {
		return srv.Service.Engine().Stats().Locks == 0
	})
	// Its late requests, which another connection replays here.
	for _, op := range []string{subjects.OpTryLock, subjects.OpLock} {
		if got := send(t, other, op, "late", "", holderOwner); got.Locked || code(got) != subjects.CodeOwnerGone {
			t.Fatalf("%s of a closed connection: %+v, want OwnerGone", op, got)
		}
	}

	// A connection that closes before any of its requests is read.
	idle := srv.Connect(t)
	idleOwner := ownerOf(t, idle)
	idle.Close()
	eventually(t, "requests of the closed connection are refused", func() bool {
		got := send(t, other, subjects.OpTryLock, "idle", "", idleOwner)
		if got.Locked { // the close is not processed yet
			send(t, other, subjects.OpUnlock, "idle", `{"key":"`+got.Key+`"}`, "")
		}
		return code(got) == subjects.CodeOwnerGone
	})

	if got := send(t, other, subjects.OpTryLock, "late", "", ownerOf(t, other)); !got.Locked {
		t.Fatalf("a live connection is refused: %+v", got)
	}
}

// A connection released by the sweep (its close was not seen) is refused
// in the same way, once the sweep knows that its client id was handed out:
// here a later connection is listed with a higher id (see
// TestForgedFutureOwnersDoNotLockOutGenuineClients for ids not handed out).
func TestRequestOfSweptConnectionRefused(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithoutSystemAccount(),
		ldlmtest.WithConfig(service.Config{SweepInterval: -1}))
	dying := srv.Connect(t)
	owner := ownerOf(t, dying)
	other := srv.Connect(t)
	send(t, dying, subjects.OpTryLock, "d", "", owner)
	ns := srv.NATS.NATSServer()
	before := ns.NumClients()
	dying.Close()
	eventually(t, "the server has closed the connection", func() bool { return ns.NumClients() == before-1 })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := srv.Service.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := send(t, other, subjects.OpTryLock, "d", "", owner); code(got) != subjects.CodeOwnerGone {
		t.Fatalf("trylock of a swept connection: %+v, want OwnerGone", got)
	}
}

// When a NATS server restarts it gives its client ids out again: a new
// connection with the id of one that closed before the restart is a
// different connection, and is served.
func TestClosedConnectionsForgottenOnServerRestart(t *testing.T) {
	t.Parallel()
	opts := func(port int) *server.Options {
		app, sys := server.NewAccount("APP"), server.NewAccount("SYS")
		return &server.Options{
			Host: "127.0.0.1", Port: port, ServerName: "restarting", NoSigs: true,
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
	svcConn, err := nats.Connect(url, reconnecting...)
	if err != nil {
		t.Fatal(err)
	}
	defer svcConn.Close()
	sysConn, err := nats.Connect(url, append(reconnecting, nats.UserInfo("sys", "sys"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer sysConn.Close()
	// A memory longer than the test: only the restart can clear it.
	cfg := service.Config{SweepInterval: -1}
	svc, err := service.Start(cfg, svcConn, sysConn, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()

	other, err := nats.Connect(url, reconnecting...)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	gone, err := nats.Connect(url, nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	goneCID, _ := gone.GetClientID()
	goneOwner := ownerOf(t, gone)
	gone.Close()
	eventually(t, "requests of the closed connection are refused", func() bool {
		got := send(t, other, subjects.OpTryLock, "x", "", goneOwner)
		if got.Locked {
			send(t, other, subjects.OpUnlock, "x", `{"key":"`+got.Key+`"}`, "")
		}
		return code(got) == subjects.CodeOwnerGone
	})

	ns.Shutdown()
	ns.WaitForShutdown()
	ns = start(port)
	t.Cleanup(ns.Shutdown) // after the deferred closes
	// Let the reconnecting connections take their new ids first, then
	// open connections until one has the closed connection's client id.
	eventually(t, "the old connections are back", func() bool {
		return svcConn.IsConnected() && sysConn.IsConnected() && other.IsConnected()
	})
	var reborn *nats.Conn
	for reborn == nil {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		switch cid, _ := nc.GetClientID(); {
		case cid == goneCID:
			reborn = nc
		case cid > goneCID:
			t.Fatalf("client ids after the restart skipped %d (got %d)", goneCID, cid)
		}
	}
	// The service learns of the restart when its connections come back
	// (or at the next sweep or advisory): until then the new connection
	// may be refused, and the service may not even be subscribed again.
	msg := nats.NewMsg(subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, "y"))
	msg.Header.Set(subjects.HeaderOwner, ownerOf(t, reborn))
	eventually(t, "the new connection with the old client id is served", func() bool {
		res, err := reborn.RequestMsg(msg, testTimeout)
		if err != nil {
			return false
		}
		var got reply
		if err := json.Unmarshal(res.Data, &got); err != nil {
			t.Fatal(err)
		}
		if !got.Locked && code(got) != subjects.CodeOwnerGone {
			t.Fatalf("%+v", got)
		}
		return got.Locked
	})
}

// The system connection must be in the system account: in an application
// account it sees neither advisories nor other accounts' connections, and
// its sweeps would release the locks of live clients.
func TestSystemConnectionInAppAccountRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  embeddednats.Config
	}{
		{"one account", embeddednats.Config{ServerName: "plain"}},
		{"tenants", embeddednats.Config{ServerName: "tenants", Tenants: []embeddednats.Tenant{{Account: "A", User: "alice", Password: "pa"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ns, err := embeddednats.Start(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(ns.Shutdown)
			app, err := ns.ConnectApp()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(app.Close)
			notSys, err := ns.ConnectApp()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(notSys.Close)
			cfg := service.Config{Tenants: len(tt.cfg.Tenants) > 0}
			svc, err := service.Start(cfg, app, notSys, nil)
			if err == nil {
				svc.Stop()
				t.Fatal("the service started with a system connection in an application account")
			}
			if !strings.Contains(err.Error(), "LDLM_SYSTEM_") || !strings.Contains(err.Error(), "not in the NATS system account") {
				t.Fatalf("the error must say what is wrong and which setting to fix: %v", err)
			}

			// The real system connection is accepted.
			sys, err := ns.ConnectSystem()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(sys.Close)
			svc, err = service.Start(cfg, app, sys, nil)
			if err != nil {
				t.Fatalf("a system account connection is refused: %v", err)
			}
			svc.Stop()
		})
	}
}

// Within one account a client can put any Nats-Request-Info header on its
// request; the server stamps it only across an account import. Without
// tenants the service ignores it: a forger cannot tie its lock to another
// connection.
func TestForgedRequestInfoIgnoredWithoutTenants(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	victim := srv.Connect(t)
	forger := srv.Connect(t)
	victimCID, err := victim.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := json.Marshal(map[string]any{"acc": "OTHER", "id": victimCID, "server": victim.ConnectedServerName()})

	tests := []struct {
		name      string
		owner     string // Ldlm-Owner header
		wantOwner string
	}{
		{"with the client header", ownerOf(t, forger), ownerOf(t, forger)},
		{"alone", "", ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprint("forged-", i)
			msg := nats.NewMsg(subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, name))
			msg.Header.Set(subjects.HeaderRequestInfo, string(forged))
			if tt.owner != "" {
				msg.Header.Set(subjects.HeaderOwner, tt.owner)
			}
			res, err := forger.RequestMsg(msg, testTimeout)
			if err != nil {
				t.Fatal(err)
			}
			var got subjects.LockResponse
			if err := json.Unmarshal(res.Data, &got); err != nil || !got.Locked {
				t.Fatalf("%s %v", res.Data, err)
			}
			if tt.wantOwner == "" && got.ExpiresAt.IsZero() {
				t.Fatalf("a lock of no connection must get the anonymous lock timeout: %+v", got)
			}
			var list subjects.ListResponse
			admin(t, forger, "ldlm.admin.list", "", &list)
			for _, l := range list.Locks {
				if l.Name != name {
					continue
				}
				if l.Account != "" || len(l.Holders) != 1 || l.Holders[0].Owner != tt.wantOwner {
					t.Fatalf("lock %q: %+v; want owner %q (the victim is %q)", name, l, tt.wantOwner, ownerOf(t, victim))
				}
				return
			}
			t.Fatalf("lock %q not listed: %+v", name, list)
		})
	}
}

// Issue 12, item 1: a client that gives up sends unlock right after lock,
// with the same key, on the same connection. The service reads them in that
// order, every time: the unlock releases the grant (a free lock) or
// cancels the wait (a held one), it never finds nothing, and nothing is
// left behind over many tries.
func TestUnlockRightAfterLockAlwaysCleansUp(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	owner := ownerOf(t, nc)
	holder := send(t, nc, subjects.OpTryLock, "busy", "", owner)
	lockReplies := make(chan *nats.Msg, 4096)
	unlockReplies := make(chan *nats.Msg, 4096)
	lockInbox, unlockInbox := nats.NewInbox(), nats.NewInbox()
	for inbox, ch := range map[string]chan *nats.Msg{lockInbox: lockReplies, unlockInbox: unlockReplies} {
		sub, err := nc.ChanSubscribe(inbox, ch)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	publish := func(op, name, reply, body string) {
		msg := nats.NewMsg(subjects.Subject(subjects.DefaultPrefix, op, name))
		msg.Reply = reply
		msg.Data = []byte(body)
		msg.Header.Set(subjects.HeaderOwner, owner)
		if err := nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	const n = 1000
	for i := range n {
		body := fmt.Sprintf(`{"key":"given-up-%d"}`, i)
		for _, name := range []string{"busy", "free"} { // parks, or is granted
			publish(subjects.OpLock, name, lockInbox, body)
			publish(subjects.OpUnlock, name, unlockInbox, body)
		}
	}
	var granted, cancelled int
	for range 2 * n {
		select {
		case msg := <-lockReplies:
			var r subjects.LockResponse
			if err := json.Unmarshal(msg.Data, &r); err != nil {
				t.Fatal(err)
			}
			switch {
			case r.Locked && r.Name == "free":
				granted++
			case r.Error != nil && r.Error.Code == subjects.CodeLockWaitCancelled && r.Name == "busy":
				cancelled++
			default:
				t.Fatalf("lock reply %+v; want a grant of free or a cancelled wait for busy", r)
			}
		case <-time.After(testTimeout):
			t.Fatalf("a lock request was never answered: %+v", srv.Service.Engine().Stats())
		}
	}
	for range 2 * n {
		select {
		case msg := <-unlockReplies:
			var r subjects.UnlockResponse
			if err := json.Unmarshal(msg.Data, &r); err != nil || !r.Unlocked {
				t.Fatalf("unlock reply %s: it was read before its lock request", msg.Data)
			}
		case <-time.After(testTimeout):
			t.Fatalf("an unlock was never answered: %+v", srv.Service.Engine().Stats())
		}
	}
	if granted != n || cancelled != n {
		t.Fatalf("%d grants and %d cancelled waits; want %d of each", granted, cancelled, n)
	}
	if st := srv.Service.Engine().Stats(); st.Holders != 1 || st.Waiters != 0 || st.Locks != 1 {
		t.Fatalf("left behind: %+v; want only the holder of busy", st)
	}
	send(t, nc, subjects.OpUnlock, "busy", `{"key":"`+holder.Key+`"}`, owner)
}
