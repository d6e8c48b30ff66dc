package service_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/service/engine"
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

// Issue 11, D3: a list of more than 1 MiB of locks (it got no reply at all
// before) comes in pages, each well under NATS's 1 MiB, that together hold
// every lock once, in name order; a name prefix filters them; a lock with
// many holders shows the first MaxListEntries and the totals.
func TestAdminListPages(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	e := srv.Service.Engine()
	const n = 2500 // × ~1,000-byte names: over 2.5 MB of names alone
	long := strings.Repeat("n", 990)
	for i := range n {
		if _, ok, err := e.TryLock(engine.Request{Name: fmt.Sprintf("%s-%05d", long, i)}); !ok || err != nil {
			t.Fatalf("trylock %d: %v %v", i, ok, err)
		}
	}
	for range subjects.MaxListEntries + 5 {
		if _, ok, err := e.TryLock(engine.Request{Name: "sem", Size: 1000}); !ok || err != nil {
			t.Fatalf("trylock sem: %v %v", ok, err)
		}
	}

	subject := subjects.AdminSubject("ldlm", subjects.OpAdminList, "")
	list := func(req subjects.ListRequest) (all []subjects.LockInfo, pages int) {
		for {
			res, err := nc.Request(subject, []byte(mustMarshal(t, req)), testTimeout)
			if err != nil {
				t.Fatalf("page %d after %q: %v", pages, req.After, err)
			}
			if len(res.Data) > subjects.MaxListPageBytes {
				t.Fatalf("page of %d bytes, over %d", len(res.Data), subjects.MaxListPageBytes)
			}
			var page subjects.ListResponse
			if err := json.Unmarshal(res.Data, &page); err != nil || page.Error != nil {
				t.Fatalf("page: %v %+v", err, page.Error)
			}
			all = append(all, page.Locks...)
			pages++
			if page.Next == "" {
				return all, pages
			}
			req.After = page.Next
		}
	}
	all, pages := list(subjects.ListRequest{})
	if len(all) != n+1 || pages < 2 {
		t.Fatalf("%d locks in %d pages; want %d in several", len(all), pages, n+1)
	}
	for i := 1; i < len(all); i++ {
		if all[i-1].Name >= all[i].Name {
			t.Fatalf("locks out of order or repeated at %d: %.20q then %.20q", i, all[i-1].Name, all[i].Name)
		}
	}
	sem := all[len(all)-1]
	if sem.Name != "sem" || len(sem.Holders) != subjects.MaxListEntries || sem.HoldersTotal != subjects.MaxListEntries+5 {
		t.Fatalf("sem: %d holders listed of %d", len(sem.Holders), sem.HoldersTotal)
	}

	some, _ := list(subjects.ListRequest{Prefix: long + "-000", Limit: 7})
	if len(some) != 100 {
		t.Fatalf("prefix filter: %d locks, want 100", len(some))
	}
	var bad subjects.ListResponse
	admin(t, nc, subject, `{"limit":100000}`, &bad)
	if bad.Error == nil || bad.Error.Code != subjects.CodeBadRequest {
		t.Fatalf("limit over the maximum: %+v", bad)
	}
}
