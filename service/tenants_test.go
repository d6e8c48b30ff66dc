package service_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// startTenants runs a service with two tenant accounts, A and B.
func startTenants(t *testing.T) *ldlmtest.Server {
	t.Helper()
	return ldlmtest.Start(t,
		ldlmtest.WithTenants(
			embeddednats.Tenant{Account: "A", User: "alice", Password: "pa"},
			embeddednats.Tenant{Account: "B", User: "bob", Password: "pb"},
		),
		ldlmtest.WithConfig(service.Config{SweepInterval: -1}),
	)
}

// Each account has its own namespace: two tenants' "my-task" are two locks,
// and one cannot release the other's.
func TestTenantNamespaces(t *testing.T) {
	t.Parallel()
	srv := startTenants(t)
	a := srv.Connect(t, nats.UserInfo("alice", "pa"))
	b := srv.Connect(t, nats.UserInfo("bob", "pb"))

	ga := send(t, a, subjects.OpTryLock, "my-task", "", "")
	gb := send(t, b, subjects.OpTryLock, "my-task", "", "")
	if !ga.Locked || !gb.Locked {
		t.Fatalf("each tenant gets its own my-task: %+v %+v", ga, gb)
	}
	if r := send(t, b, subjects.OpUnlock, "my-task", `{"key":"`+ga.Key+`"}`, ""); code(r) != subjects.CodeInvalidLockKey {
		t.Fatalf("B unlocking A's lock with A's key: %+v", r)
	}
	if r := send(t, b, subjects.OpUnlock, "only-a", `{"key":"k"}`, ""); code(r) != subjects.CodeLockDoesNotExist {
		t.Fatalf("%+v", r)
	}
	// Tenants cannot administer: the admin subjects are not imported.
	if _, err := b.Request("ldlm.admin.list", nil, 500*time.Millisecond); err == nil {
		t.Fatal("a tenant reached the admin subjects")
	}
	// The operator, in the service's account, sees both, by account.
	op, err := srv.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	var list subjects.ListResponse
	admin(t, op, "ldlm.admin.list", "", &list)
	if len(list.Locks) != 2 || list.Locks[0].Account != "A" || list.Locks[1].Account != "B" || list.Locks[0].Name != "my-task" {
		t.Fatalf("admin list: %+v", list)
	}
	// A request that does not come through an import names no account.
	if r := send(t, op, subjects.OpTryLock, "x", "", ""); code(r) != subjects.CodeBadRequest {
		t.Fatalf("a request without Nats-Request-Info in tenant mode: %+v", r)
	}
}

// Identity comes from the server-stamped Nats-Request-Info: a forged one is
// overwritten, and a plain request (no Ldlm-Owner header) is still tied to
// its connection and released when it closes.
func TestTenantIdentityCannotBeForged(t *testing.T) {
	t.Parallel()
	srv := startTenants(t)
	victim := srv.Connect(t, nats.UserInfo("alice", "pa"))
	forger := srv.Connect(t, nats.UserInfo("alice", "pa"))
	victimCID, _ := victim.GetClientID()

	msg := nats.NewMsg("ldlm.trylock.forged")
	forged, _ := json.Marshal(map[string]any{"acc": "A", "id": victimCID, "server": victim.ConnectedServerName()})
	msg.Header.Set(subjects.HeaderRequestInfo, string(forged))
	res, err := forger.RequestMsg(msg, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	var got subjects.LockResponse
	if err := json.Unmarshal(res.Data, &got); err != nil || !got.Locked {
		t.Fatalf("%s %v", res.Data, err)
	}
	var list subjects.ListResponse
	op, err := srv.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	admin(t, op, "ldlm.admin.list", "", &list)
	if owner := list.Locks[0].Holders[0].Owner; owner != ownerOf(t, forger) {
		t.Fatalf("the lock belongs to %q; the forger is %q and the victim %q", owner, ownerOf(t, forger), ownerOf(t, victim))
	}

	victim.Close()
	forger.Close()
	eventually(t, "the forger's lock is released when the forger disconnects", func() bool {
		return srv.Service.Engine().Stats().Locks == 0
	})
}

// Each tenant receives the lost-lock notices of its own connections on the
// plain lost subject.
func TestTenantLostNotices(t *testing.T) {
	t.Parallel()
	srv := startTenants(t)
	a := srv.Connect(t, nats.UserInfo("alice", "pa"))
	b := srv.Connect(t, nats.UserInfo("bob", "pb"))
	lostA := make(chan *nats.Msg, 4)
	lostB := make(chan *nats.Msg, 4)
	if _, err := a.ChanSubscribe("ldlm.lost.>", lostA); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ChanSubscribe("ldlm.lost.>", lostB); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}

	g := send(t, a, subjects.OpTryLock, "job", "", "")
	op, err := srv.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	var res subjects.ForceUnlockResponse
	admin(t, op, "ldlm.admin.unlock.job", `{"account":"A"}`, &res)
	if !res.Unlocked {
		t.Fatalf("%+v", res)
	}
	select {
	case msg := <-lostA:
		var n subjects.LostNotice
		if err := json.Unmarshal(msg.Data, &n); err != nil {
			t.Fatal(err)
		}
		if msg.Subject != subjects.LostSubject("ldlm", ownerOf(t, a)) || n.Token != g.Token || n.Name != "job" {
			t.Fatalf("notice on %s: %+v", msg.Subject, n)
		}
	case <-time.After(testTimeout):
		t.Fatal("tenant A got no lost notice")
	}
	// B heard nothing of A's locks (checked after A's arrived, so a leak
	// would have had its chance).
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case msg := <-lostB:
		t.Fatalf("tenant B saw tenant A's notice on %s", msg.Subject)
	default:
	}
}
