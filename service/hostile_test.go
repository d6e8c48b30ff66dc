package service_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// Issue 11, D1: every field a client controls is bounded before it can
// reach a subject, a header or a log line. The first case is the
// reproduction from the issue: an owner so long that the lost notice's
// subject passed NATS's 4,096-byte control line, which made the server close
// the service's connection for good.
func TestClientFieldsBounded(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	cases := []struct {
		name, op, body, owner string
		want                  subjects.ErrorCode
	}{
		{"owner over 4 KiB", subjects.OpTryLock, `{"lock_timeout_seconds":0.2}`, strings.Repeat("s", 4100) + ":1", subjects.CodeBadRequest},
		{"owner of 257 bytes", subjects.OpTryLock, ``, strings.Repeat("s", 255) + ":1", subjects.CodeBadRequest},
		{"owner with a space", subjects.OpTryLock, ``, "my server:1", subjects.CodeBadRequest},
		{"owner not ASCII", subjects.OpLock, ``, "sérveur:1", subjects.CodeBadRequest},
		{"owner with a control character", subjects.OpTryLock, ``, "srv\x01:1", subjects.CodeBadRequest},
		{"size of a billion", subjects.OpTryLock, `{"size":1000000000}`, "", subjects.CodeInvalidLockSize},
		{"size above the limit", subjects.OpLock, `{"size":1000001}`, "", subjects.CodeInvalidLockSize},
		{"key over 256 bytes", subjects.OpTryLock, `{"key":"` + strings.Repeat("k", 257) + `"}`, "", subjects.CodeInvalidLockKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := send(t, nc, c.op, "x", c.body, c.owner)
			if r.Locked || code(r) != c.want {
				t.Fatalf("reply %+v; want refused with %s", r, c.want)
			}
			if len(r.Error.Message) > 1024 {
				t.Fatalf("error message of %d bytes echoes the input", len(r.Error.Message))
			}
		})
	}
	// The largest size is accepted.
	if r := send(t, nc, subjects.OpTryLock, "big", `{"size":1000000}`, ""); !r.Locked {
		t.Fatalf("trylock with size 1,000,000: %+v", r)
	}
	// The longest owner accepted loses its lock: the notice is published
	// and the service lives on.
	owner := strings.Repeat("s", subjects.MaxOwnerLength-2) + ":1"
	if r := send(t, nc, subjects.OpTryLock, "y", `{"lock_timeout_seconds":0.05}`, owner); !r.Locked {
		t.Fatalf("trylock with a %d-byte owner: %+v", len(owner), r)
	}
	eventually(t, "the lock expired", func() bool { return len(srv.Service.Engine().Snapshot()) == 1 })
	if r := send(t, nc, subjects.OpTryLock, "z", ``, ""); !r.Locked {
		t.Fatalf("the service stopped answering after the lost notice: %+v", r)
	}
	select {
	case <-srv.Service.Done():
		t.Fatalf("the service stopped: %v", srv.Service.Err())
	default:
	}
}

// The service refuses settings that would let a request make it publish
// on a subject over NATS's limit.
func TestNameLengthCapped(t *testing.T) {
	_, err := ldlmtest.StartServer(ldlmtest.WithConfig(service.Config{MaxNameLength: subjects.MaxNameLengthLimit + 1}))
	if err == nil || !strings.Contains(err.Error(), "longest lock name") {
		t.Fatalf("start with names of %d bytes: %v; want refused", subjects.MaxNameLengthLimit+1, err)
	}
	// At the cap, the longest name that encodes worst works in every
	// subject the service publishes on, events included.
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{MaxNameLength: subjects.MaxNameLengthLimit, Events: true}))
	nc := srv.Connect(t)
	name := strings.Repeat("é", subjects.MaxNameLengthLimit/2)
	r := send(t, nc, subjects.OpTryLock, name, `{"lock_timeout_seconds":0.05}`, ownerOf(t, nc))
	if !r.Locked {
		t.Fatalf("trylock of a %d-byte name: %+v", len(name), r)
	}
	eventually(t, "the lock expired", func() bool { return len(srv.Service.Engine().Snapshot()) == 0 })
	if r := send(t, nc, subjects.OpTryLock, "z", ``, ""); !r.Locked {
		t.Fatalf("the service stopped answering: %+v", r)
	}
}

// Issue 11, D1(b): a service whose connection is closed for good does not
// stay silently dead: Done closes, Err says why, and micro discovery no
// longer finds it.
func TestServiceStopsWhenItsConnectionCloses(t *testing.T) {
	for _, which := range []string{"service", "system"} {
		t.Run(which, func(t *testing.T) {
			srv := ldlmtest.Start(t)
			app, sys := srv.ServiceConns()
			client := srv.Connect(t)
			if r := send(t, client, subjects.OpTryLock, "x", ``, ""); !r.Locked {
				t.Fatalf("trylock: %+v", r)
			}
			closed := time.Now()
			if which == "service" {
				app.Close()
			} else {
				sys.Close()
			}
			select {
			case <-srv.Service.Done():
				t.Logf("the service stopped %v after its %s connection closed", time.Since(closed), which)
			case <-timeout():
				t.Fatal("Done was not closed after the connection closed")
			}
			if err := srv.Service.Err(); !errors.Is(err, service.ErrConnectionClosed) || !strings.Contains(err.Error(), which) {
				t.Fatalf("Err() = %v; want ErrConnectionClosed naming the %s connection", err, which)
			}
			// Soon nothing answers: no responders, or silence (micro
			// unsubscribes asynchronously).
			eventually(t, "micro ping gets no answer", func() bool {
				_, err := client.Request("$SRV.PING."+service.ServiceName, nil, time.Second)
				return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout)
			})
		})
	}
}

// Issue 11, D2: lock requests naming owners for client ids the server has
// not handed out yet are released by the sweep, but the genuine
// connections that get those ids later are served.
func TestForgedFutureOwnersDoNotLockOutGenuineClients(t *testing.T) {
	srv := ldlmtest.Start(t)
	forger := srv.Connect(t)
	cid, err := forger.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	server := forger.ConnectedServerName()
	const n = 20
	for i := range uint64(n) {
		owner := subjects.FormatOwner(server, cid+1+i)
		if r := send(t, forger, subjects.OpTryLock, fmt.Sprintf("forged-%d", i), ``, owner); !r.Locked {
			t.Fatalf("forged trylock: %+v", r)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := srv.Service.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if st := srv.Service.Engine().Stats(); st.Holders != 0 {
		t.Fatalf("the sweep left %d forged grants", st.Holders)
	}
	for i := range n {
		nc := srv.Connect(t)
		r := send(t, nc, subjects.OpTryLock, fmt.Sprintf("genuine-%d", i), ``, ownerOf(t, nc))
		if !r.Locked {
			t.Fatalf("genuine connection %s was refused: %+v", ownerOf(t, nc), r)
		}
	}
}

// timeout fires after testTimeout.
func timeout() <-chan time.Time { return time.After(testTimeout) }

// Issue 12, item 2: clients before the server id sent SERVER_NAME:CLIENT_ID.
// The service still serves them: the name resolves to the server's id, the
// lock belongs to SERVER_ID:CLIENT_ID (and is released with that
// connection), and its lost notice also goes to the subject of the old
// form, where such a client listens.
func TestLegacyOwnerNameResolvesToServerID(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	legacy, current := legacyOwnerOf(t, nc), ownerOf(t, nc)
	if legacy == current {
		t.Fatalf("the test server's name is its id: %s", legacy)
	}
	notices := make(chan *nats.Msg, 4)
	for _, o := range []string{legacy, current} {
		if _, err := nc.ChanSubscribe(subjects.LostSubject(subjects.DefaultPrefix, o), notices); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	g := send(t, nc, subjects.OpTryLock, "job", `{"lock_timeout_seconds":0.05}`, legacy)
	if !g.Locked {
		t.Fatalf("trylock with a legacy owner: %+v", g)
	}
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case msg := <-notices:
			got[msg.Subject] = true
		case <-timeout():
			t.Fatalf("lost notices on %v; want on the subjects of %s and %s", got, legacy, current)
		}
	}

	send(t, nc, subjects.OpTryLock, "held", ``, legacy)
	snap := srv.Service.Engine().Snapshot()
	if len(snap) != 1 || snap[0].Holders[0].Owner.String() != current {
		t.Fatalf("the lock belongs to %+v; want %s", snap, current)
	}
	nc.Close()
	eventually(t, "the legacy owner's lock is released with its connection", func() bool {
		return srv.Service.Engine().Stats().Locks == 0
	})
}
