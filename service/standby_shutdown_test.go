package service_test

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// A standby takes over when the active's NATS server announces its
// shutdown ($SYS.SERVER.<id>.SHUTDOWN): the server takes the active's
// connection with it and sends no DISCONNECT advisory for it. A cluster of
// three JetStream servers (a JetStream cluster keeps no quorum with fewer
// when one leaves) and the state in three replicas: the active is connected
// to A, the standby to B; A shuts down.
func TestStandbyTakesOverOnActiveServerShutdown(t *testing.T) {
	t.Parallel()
	var listens, routes []string
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listens = append(listens, l.Addr().String())
		routes = append(routes, "nats-route://"+l.Addr().String())
		l.Close()
	}
	var members []*embeddednats.Server
	for i := range 3 {
		srv, err := embeddednats.Start(embeddednats.Config{ServerName: fmt.Sprintf("s%d", i), Listen: "127.0.0.1:0",
			DataDir: t.TempDir(), Cluster: embeddednats.Cluster{Listen: listens[i], Routes: routes}})
		if err != nil {
			t.Fatalf("starting server %d: %v", i, err)
		}
		t.Cleanup(srv.Shutdown)
		members = append(members, srv)
	}
	a, b := members[0], members[1]

	// start runs a lock service on srv's in-process connections, logging
	// to logs; it stops when the test ends, before the servers.
	start := func(srv *embeddednats.Server, logs *ldlmtest.SyncBuffer) *service.Service {
		t.Helper()
		app, err := srv.ConnectApp()
		if err != nil {
			t.Fatal(err)
		}
		sys, err := srv.ConnectSystem()
		if err != nil {
			t.Fatal(err)
		}
		log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		var svc *service.Service
		// The JetStream cluster needs a while to form.
		deadline := time.Now().Add(3 * testTimeout)
		for {
			svc, err = service.Start(service.Config{State: service.StateJetStream, Replicas: 3}, app, sys, log)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("starting the lock service on %s: %v\n%s", srv.Name(), err, logs)
		}
		t.Cleanup(func() {
			svc.Stop()
			app.Close()
			sys.Close()
			if t.Failed() {
				t.Logf("log of the service on %s:\n%s", srv.Name(), logs)
			}
		})
		return svc
	}
	activeLogs, standbyLogs := &ldlmtest.SyncBuffer{}, &ldlmtest.SyncBuffer{}
	start(a, activeLogs)
	standby := start(b, standbyLogs)
	waitLog(t, standbyLogs, "standby: another instance is active")

	nc, err := nats.Connect(b.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	held := send(t, nc, subjects.OpTryLock, "job", `{"lock_timeout_seconds":300}`, "")
	if !held.Locked {
		t.Fatalf("trylock through the active: %+v", held)
	}

	a.Shutdown()
	waitLog(t, standbyLogs, "the active instance's NATS server shut down: taking over")
	waitLog(t, standbyLogs, "took over: this instance is the active now")
	if r := send(t, nc, subjects.OpRenew, "job", `{"key":"`+held.Key+`","lock_timeout_seconds":300}`, ""); !r.Locked || r.Token != held.Token || r.Instance != held.Instance {
		t.Fatalf("renew after the takeover: %+v; want token %d of instance %s", r, held.Token, held.Instance)
	}
	select {
	case <-standby.Done():
		t.Fatalf("the new active stopped: %v", standby.Err())
	default:
	}
}

// waitLog waits until logs has a line that contains want.
func waitLog(t *testing.T, logs *ldlmtest.SyncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * testTimeout)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log within %s:\n%s", want, 3*testTimeout, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
