package service_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// admin sends an admin request and decodes the reply into out.
func admin(t *testing.T, nc *nats.Conn, subject, body string, out any) *nats.Msg {
	t.Helper()
	res, err := nc.Request(subject, []byte(body), testTimeout)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	if err := json.Unmarshal(res.Data, out); err != nil {
		t.Fatalf("%s: reply %q: %v", subject, res.Data, err)
	}
	return res
}

func TestAdminListAndStatus(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	owner := ownerOf(t, nc)
	held := send(t, nc, subjects.OpTryLock, "b", `{"lock_timeout_seconds":60}`, owner)
	send(t, nc, subjects.OpTryLock, "a", `{"size":2}`, owner)
	go func() { _, _ = nc.Request("ldlm.lock.b", nil, testTimeout) }()
	eventually(t, "the waiter is parked", func() bool { return srv.Service.Engine().Stats().Waiters == 1 })

	var list subjects.ListResponse
	admin(t, nc, subjects.AdminSubject("ldlm", subjects.OpAdminList, ""), "", &list)
	if len(list.Locks) != 2 || list.Locks[0].Name != "a" || list.Locks[1].Name != "b" {
		t.Fatalf("list: %+v", list)
	}
	b := list.Locks[1]
	if len(b.Holders) != 1 || b.Holders[0].Owner != owner || b.Holders[0].Token != held.Token ||
		b.Holders[0].ExpiresAt.IsZero() || len(b.Waiters) != 1 {
		t.Fatalf("lock b: %+v", b)
	}
	if kp := b.Holders[0].KeyPrefix; strings.Contains(held.Key, strings.TrimSuffix(kp, "…")) && len(kp) >= len(held.Key) {
		t.Fatalf("list must not show the whole key: %q", kp)
	}
	if strings.Contains(mustMarshal(t, list), held.Key) {
		t.Fatal("the list reply contains a holder's key")
	}

	var st subjects.StatusResponse
	admin(t, nc, subjects.AdminSubject("ldlm", subjects.OpAdminStatus, ""), "", &st)
	if st.Locks != 2 || st.Holders != 2 || st.Waiters != 1 || st.Owners != 1 ||
		st.Liveness != "advisories+sweep" || st.LastSweep.IsZero() || !st.ClearOnDisconnect || st.Uptime <= 0 {
		t.Fatalf("status: %+v", st)
	}
}

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A force-released holder is told on its lost subject; its waiter is
// granted.
func TestAdminForceUnlock(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	operator := srv.Connect(t)
	holder := srv.Connect(t)
	owner := ownerOf(t, holder)

	lost := make(chan *nats.Msg, 4)
	sub, err := holder.ChanSubscribe(subjects.LostSubject("ldlm", owner), lost)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := holder.Flush(); err != nil {
		t.Fatal(err)
	}

	held := send(t, holder, subjects.OpTryLock, "job", "", owner)
	var res subjects.ForceUnlockResponse
	admin(t, operator, subjects.AdminSubject("ldlm", subjects.OpAdminUnlock, "job"), "", &res)
	if !res.Unlocked || len(res.Released) != 1 || res.Released[0] != held.Token {
		t.Fatalf("force unlock: %+v", res)
	}
	select {
	case msg := <-lost:
		var n subjects.LostNotice
		if err := json.Unmarshal(msg.Data, &n); err != nil {
			t.Fatal(err)
		}
		if n.Name != "job" || n.Token != held.Token || n.Reason != subjects.ReasonForced {
			t.Fatalf("lost notice: %+v", n)
		}
	case <-time.After(testTimeout):
		t.Fatal("the holder was not told it lost the lock")
	}
	if r := send(t, holder, subjects.OpUnlock, "job", `{"key":"`+held.Key+`"}`, owner); code(r) != subjects.CodeLockDoesNotExist {
		t.Fatalf("unlock after force release: %+v", r)
	}

	var miss subjects.ForceUnlockResponse
	msg := admin(t, operator, subjects.AdminSubject("ldlm", subjects.OpAdminUnlock, "job"), "", &miss)
	if miss.Unlocked || miss.Error == nil || miss.Error.Code != subjects.CodeLockDoesNotExist ||
		msg.Header.Get(subjects.HeaderErrorCode) != string(subjects.CodeLockDoesNotExist) {
		t.Fatalf("force unlock of a free lock: %+v", miss)
	}
	send(t, holder, subjects.OpTryLock, "job", "", owner)
	admin(t, operator, subjects.AdminSubject("ldlm", subjects.OpAdminUnlock, "job"), `{"token":1}`, &miss)
	if miss.Error == nil || miss.Error.Code != subjects.CodeInvalidLockKey {
		t.Fatalf("force unlock of a token nobody holds: %+v", miss)
	}
	admin(t, operator, subjects.AdminSubject("ldlm", subjects.OpAdminUnlock, "job"), `{"token":"x"}`, &miss)
	if miss.Error == nil || miss.Error.Code != subjects.CodeBadRequest {
		t.Fatalf("force unlock with a bad body: %+v", miss)
	}
}

func TestPublishedEvents(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{Events: true}))
	nc := srv.Connect(t)
	events := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe("ldlm.events.>", events)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	g := send(t, nc, subjects.OpTryLock, "My lock", "", "")
	send(t, nc, subjects.OpUnlock, "My lock", `{"key":"`+g.Key+`"}`, "")
	for _, want := range []string{"granted", "released"} {
		select {
		case msg := <-events:
			var ev subjects.Event
			if err := json.Unmarshal(msg.Data, &ev); err != nil {
				t.Fatal(err)
			}
			if msg.Subject != "ldlm.events."+want+".~TXkgbG9jaw" || ev.Kind != want || ev.Name != "My lock" || ev.Token != g.Token {
				t.Fatalf("event on %s: %+v, want %s", msg.Subject, ev, want)
			}
		case <-time.After(testTimeout):
			t.Fatalf("no %s event", want)
		}
	}
}
