package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// A second instance on the same prefix refuses to start; one on another
// prefix is fine.
func TestDuplicateInstanceRefused(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc, err := srv.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	second, err := service.Start(service.Config{}, nc, nil, nil)
	if !errors.Is(err, service.ErrDuplicateInstance) {
		if second != nil {
			second.Stop()
		}
		t.Fatalf("second instance on the same prefix: err %v, want ErrDuplicateInstance", err)
	}
	// The first still serves.
	client := srv.Connect(t)
	if got := send(t, client, subjects.OpTryLock, "x", "", ""); !got.Locked {
		t.Fatalf("first instance after the refused second: %+v", got)
	}

	other, err := service.Start(service.Config{Prefix: "other"}, nc, nil, nil)
	if err != nil {
		t.Fatalf("an instance on another prefix: %v", err)
	}
	other.Stop()
}

// Alone is the caller's word that no other instance can be there, so Start
// does not look: given (falsely, here) next to a running instance, the
// second starts, where without Alone it is refused (above). The periodic
// look still runs, and the younger steps down at the first one.
func TestAloneSkipsTheLooksAtStart(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc, err := srv.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	second, err := service.Start(service.Config{Alone: true, SweepInterval: 20 * time.Millisecond}, nc, nil, nil)
	if err != nil {
		t.Fatalf("second instance with Alone: %v, want a start without looking for rivals", err)
	}
	defer second.Stop()
	select {
	case <-second.Done():
		if !errors.Is(second.Err(), service.ErrDuplicateInstance) {
			t.Fatalf("the younger instance stopped with %v, want ErrDuplicateInstance", second.Err())
		}
	case <-time.After(testTimeout):
		t.Fatalf("the younger instance still serves %s after its start: the periodic look did not find the older one", testTimeout)
	}
}

// Grants carry their instance; a stopping instance says so, and a new one
// announces itself, so clients know their locks are gone.
func TestInstanceAnnouncements(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	client := srv.Connect(t)
	notices := make(chan *nats.Msg, 4)
	sub, err := client.ChanSubscribe(subjects.InstanceSubject("ldlm", "*"), notices)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	g := send(t, client, subjects.OpTryLock, "x", "", "")
	if g.Instance == "" {
		t.Fatalf("grant without instance: %+v", g)
	}

	nc, err := srv.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	srv.Service.Stop()
	next, err := service.Start(service.Config{}, nc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Stop()

	for _, want := range []struct{ event, instance string }{{"stopped", g.Instance}, {"started", ""}} {
		select {
		case msg := <-notices:
			var n subjects.InstanceNotice
			if err := json.Unmarshal(msg.Data, &n); err != nil {
				t.Fatal(err)
			}
			if n.Event != want.event || msg.Subject != "ldlm.instance."+want.event ||
				(want.instance != "" && n.Instance != want.instance) || (want.instance == "" && n.Instance == g.Instance) {
				t.Fatalf("notice %s %+v, want %s", msg.Subject, n, want.event)
			}
		case <-time.After(testTimeout):
			t.Fatalf("no %s notice", want.event)
		}
	}
	if got := send(t, client, subjects.OpTryLock, "x", "", ""); !got.Locked || got.Instance == g.Instance || got.Token <= g.Token {
		t.Fatalf("the new instance knows no old locks, and its tokens keep growing: %+v after %+v", got, g)
	}
}

// gate is a dialer that refuses to connect while closed, to hold the
// service's reconnect back.
type gate struct{ open atomic.Bool }

func (g *gate) Dial(network, address string) (net.Conn, error) {
	if !g.open.Load() {
		return nil, errors.New("gate closed")
	}
	return net.DialTimeout(network, address, time.Second)
}

func startNATS(t *testing.T, port int) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, ServerName: "restarting", NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(testTimeout) {
		t.Fatal("nats-server not ready")
	}
	return ns
}

// When the NATS server restarts, its client ids start again from 1, so a
// new connection may carry the id of a dead holder. The service notices the
// new server id and releases the old connections' locks anyway.
func TestNATSServerRestart(t *testing.T) {
	t.Parallel()
	ns := startNATS(t, server.RANDOM_PORT)
	port := ns.Addr().(*net.TCPAddr).Port
	url := ns.ClientURL()

	var g gate
	g.open.Store(true)
	svcConn, err := nats.Connect(url, nats.SetCustomDialer(&g), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer svcConn.Close()
	svc, err := service.Start(service.Config{SweepInterval: -1}, svcConn, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()

	holder, err := nats.Connect(url, nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	holderCID, _ := holder.GetClientID()
	if got := send(t, holder, subjects.OpTryLock, "x", "", ownerOf(t, holder)); !got.Locked {
		t.Fatalf("%+v", got)
	}

	g.open.Store(false)
	ns.Shutdown()
	ns.WaitForShutdown()
	ns = startNATS(t, port)
	t.Cleanup(ns.Shutdown) // after the deferred svc.Stop

	// Open connections until one has the dead holder's client id.
	for {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		cid, _ := nc.GetClientID()
		if cid == holderCID {
			break
		}
		if cid > holderCID {
			t.Fatalf("client ids after the restart skipped %d (got %d)", holderCID, cid)
		}
	}

	g.open.Store(true)
	eventually(t, "the dead holder's lock is released after the restart", func() bool {
		return svc.Engine().Stats().Locks == 0
	})
	// The release can come before the restarted server has read the
	// service's subscriptions again; a round trip on the service's
	// connection makes sure it has, so the request below finds a responder.
	if err := svcConn.FlushTimeout(testTimeout); err != nil {
		t.Fatal(err)
	}
	client, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if got := send(t, client, subjects.OpTryLock, "x", "", ownerOf(t, client)); !got.Locked {
		t.Fatalf("the service does not serve after the restart: %+v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := svc.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if st := svc.Engine().Stats(); st.Locks != 1 {
		t.Fatalf("a sweep after the restart must keep the live client's lock: %+v", st)
	}
}
