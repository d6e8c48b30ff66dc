package service_test

import (
	"encoding/json"
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

// Done means stopped for any reason: Stop closes it too, and Err then says
// the service was stopped.
func TestDoneAfterStop(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	select {
	case <-srv.Service.Done():
		t.Fatalf("Done closed before Stop: %v", srv.Service.Err())
	default:
	}
	if err := srv.Service.Err(); err != nil {
		t.Fatalf("Err before Stop = %v, want nil", err)
	}
	srv.Service.Stop()
	select {
	case <-srv.Service.Done():
	default:
		t.Fatal("Done not closed when Stop returned")
	}
	if err := srv.Service.Err(); !errors.Is(err, service.ErrStopped) {
		t.Fatalf("Err after Stop = %v, want ErrStopped", err)
	}
}

// Issue 11, D5: Stop announces instance.stopped before it drains, and
// answers the requests it still reads with Unavailable; no grant is ever
// made after the announcement. One connection receives the replies and the
// notice on one channel, in the order the service sent them.
func TestStopAnnouncesBeforeDraining(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	client := srv.Connect(t)
	in := make(chan *nats.Msg, 10_000)
	for _, subject := range []string{"reply.>", subjects.InstanceSubject(subjects.DefaultPrefix, subjects.InstanceStopped)} {
		sub, err := client.ChanSubscribe(subject, in)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	// A parked waiter: it learns of the stop from its Unavailable reply.
	if r := send(t, client, subjects.OpTryLock, "held", ``, ""); !r.Locked {
		t.Fatalf("trylock: %+v", r)
	}
	if err := client.PublishRequest(subjects.Subject(subjects.DefaultPrefix, subjects.OpLock, "held"), "reply.waiter", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the waiter is parked", func() bool { return srv.Service.Engine().Stats().Waiters == 1 })

	const n = 2000
	sent := make(chan error, 1)
	stopAt := make(chan time.Time, 1)
	go func() {
		for i := range n {
			subject := subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, fmt.Sprint("x", i))
			if err := client.PublishRequest(subject, fmt.Sprint("reply.", i), nil); err != nil {
				sent <- err
				return
			}
			if i == n/4 {
				stopAt <- time.Now()
				go srv.Service.Stop()
			}
		}
		sent <- client.Flush()
	}()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}

	var (
		announced              bool
		announcedAfter         time.Duration
		grants, unavailable    int
		noResponders, answered int
		waiterCode             string
	)
	deadline := time.After(testTimeout)
	for answered < n+1 {
		select {
		case msg := <-in:
			if strings.HasPrefix(msg.Subject, subjects.DefaultPrefix+".") {
				announced = true
				announcedAfter = time.Since(<-stopAt)
				continue
			}
			answered++
			if msg.Header.Get("Status") == "503" {
				noResponders++
				continue
			}
			var r subjects.LockResponse
			if err := json.Unmarshal(msg.Data, &r); err != nil {
				t.Fatalf("reply %q: %v", msg.Data, err)
			}
			switch {
			case r.Locked && announced:
				t.Fatalf("grant %+v after the stop was announced", r)
			case r.Locked:
				grants++
			case r.Error != nil && r.Error.Code == subjects.CodeUnavailable:
				unavailable++
			default:
				t.Fatalf("reply %+v; want a grant or Unavailable", r)
			}
			if msg.Subject == "reply.waiter" {
				waiterCode = msg.Header.Get(subjects.HeaderErrorCode)
			}
		case <-deadline:
			t.Fatalf("%d of %d requests answered (announced %t)", answered, n+1, announced)
		}
	}
	if !announced {
		t.Fatal("no instance.stopped notice")
	}
	if waiterCode != string(subjects.CodeUnavailable) {
		t.Fatalf("the parked waiter got %q, want Unavailable", waiterCode)
	}
	t.Logf("stop announced %v after Stop was called", announcedAfter)
	t.Logf("%d granted before the announcement, %d Unavailable, %d no responders", grants, unavailable, noResponders)
}
