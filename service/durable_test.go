package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/service/journal"
	"github.com/ldlm-io/ldlm/subjects"
)

// appConn is a new in-process connection of the service's user to s's
// NATS server, which may use JetStream.
func appConn(t *testing.T, s *ldlmtest.Server) *nats.Conn {
	t.Helper()
	nc, err := s.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// lastRecord returns the current record of subject ("active",
// "lock.NAME") in the state stream of s.
func lastRecord(t *testing.T, s *ldlmtest.Server, subject string) []byte {
	t.Helper()
	js, err := jetstream.New(appConn(t, s))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	stream, err := js.Stream(ctx, "LDLM_ldlm")
	if err != nil {
		t.Fatal(err)
	}
	m, err := stream.GetLastMsgForSubject(ctx, "$LDLM.ldlm.state."+subject)
	if err != nil {
		t.Fatalf("record %s: %v", subject, err)
	}
	return m.Data
}

// startDurable starts a server with its state in dir; the caller closes it.
func startDurable(t *testing.T, dir string) *ldlmtest.Server {
	t.Helper()
	s, err := ldlmtest.StartServer(ldlmtest.WithDataDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitReply returns the next message of sub as a lock reply.
func waitReply(t *testing.T, sub *nats.Subscription) reply {
	t.Helper()
	msg, err := sub.NextMsg(testTimeout)
	if err != nil {
		t.Fatalf("no reply on %s: %v", sub.Subject, err)
	}
	var r reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		t.Fatalf("reply %q: %v", msg.Data, err)
	}
	return r
}

// A restart on the same data folder keeps every lock: holders (keys,
// tokens, sizes, deadlines) and waiters in their order, which are then
// answered on their reply subjects; every later token is larger.
func TestDurableRestartKeepsLocks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s1 := startDurable(t, dir)
	nc := s1.Connect(t)
	var tokens []uint64
	for _, req := range []struct{ name, body string }{
		{"job", `{"lock_timeout_seconds":300}`},
		{"sem", `{"size":3,"lock_timeout_seconds":300}`},
		{"sem", `{"size":3,"key":"mine"}`},
		{"gone", ``},
	} {
		r := send(t, nc, subjects.OpTryLock, req.name, req.body, "")
		if !r.Locked {
			t.Fatalf("trylock %s %s: %+v", req.name, req.body, r)
		}
		tokens = append(tokens, r.Token)
	}
	gone := send(t, nc, subjects.OpTryLock, "gone", `{"key":"g2"}`, "")
	if gone.Locked {
		t.Fatalf("trylock of a held lock: %+v", gone)
	}
	if u := send(t, nc, subjects.OpUnlock, "sem", `{"key":"mine"}`, ""); !u.Unlocked {
		t.Fatalf("unlock: %+v", u)
	}
	// Two waiters of job, answered on subjects of their own: the
	// connection that sent them goes with the first server.
	for _, w := range []string{"w1", "w2"} {
		if err := nc.PublishRequest(subjects.Subject(subjects.DefaultPrefix, subjects.OpLock, "job"), "answer."+w,
			[]byte(`{"key":"`+w+`","wait_timeout_seconds":300,"lock_timeout_seconds":200}`)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "both waiters parked", func() bool { return s1.Service.Engine().Stats().Waiters == 2 })
	// The last change has no reply: wait until the stream has it. Its
	// records are the locks' last ones once the recorder is idle, which a
	// reply to a change of another lock, written after, shows.
	if r := send(t, nc, subjects.OpTryLock, "flush", `{"lock_timeout_seconds":300}`, ""); !r.Locked {
		t.Fatalf("trylock flush: %+v", r)
	} else {
		tokens = append(tokens, r.Token)
	}
	before := s1.Service.Engine().Snapshot()
	s1.Close()

	s2 := startDurable(t, dir)
	defer s2.Close()
	after := s2.Service.Engine().Snapshot()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("locks after the restart differ:\n got %+v\nwant %+v", after, before)
	}
	if len(after) != 4 || after[0].Name != "flush" || after[1].Name != "gone" || after[2].Name != "job" || len(after[2].Waiters) != 2 {
		t.Fatalf("locks after the restart: %+v", after)
	}

	// The first stopped gracefully, and said so in the active record for
	// standbys; the second must not repeat it.
	if active := lastRecord(t, s2, "active"); strings.Contains(string(active), `"stopped"`) {
		t.Fatalf("the active record after the restart says stopped: %s", active)
	}

	nc2 := s2.Connect(t)
	w1, err := nc2.SubscribeSync("answer.w1")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc2.Flush(); err != nil {
		t.Fatal(err)
	}
	fresh := send(t, nc2, subjects.OpTryLock, "new", "", "")
	if u := send(t, nc2, subjects.OpUnlock, "job", `{"key":"`+after[2].Holders[0].Key+`"}`, ""); !u.Unlocked {
		t.Fatalf("unlock of a restored holder: %+v", u)
	}
	granted := waitReply(t, w1)
	if !granted.Locked || granted.Key != "w1" || granted.ExpiresAt.IsZero() {
		t.Fatalf("the first restored waiter's answer: %+v", granted)
	}
	for _, tok := range tokens {
		if fresh.Token <= tok || granted.Token <= tok {
			t.Fatalf("tokens after the restart (%d, %d) must exceed %d, given before", fresh.Token, granted.Token, tok)
		}
	}
}

// A write the stream refuses deposes the service: the change it records is
// never reported, and the service stops answering with ErrDeposed (its
// owner starts a new one).
func TestDurableRefusedWriteIsNotAnswered(t *testing.T) {
	t.Parallel()
	s := startDurable(t, t.TempDir())
	defer s.Close()
	nc := s.Connect(t)
	if r := send(t, nc, subjects.OpTryLock, "before", "", ""); !r.Locked {
		t.Fatalf("trylock: %+v", r)
	}
	// Another writer moves the stream on: the active's next write expects
	// a sequence the stream has passed. (Clients may not: an in-process
	// connection of the service's user may.)
	js, err := jetstream.New(appConn(t, s))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := js.Publish(ctx, "$LDLM.ldlm.state.intruder", []byte("x")); err != nil {
		t.Fatalf("publishing on the state stream: %v", err)
	}
	res, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, "after"), nil, 2*time.Second)
	if err == nil {
		t.Fatalf("a deposed service answered a grant: %s", res.Data)
	}
	select {
	case <-s.Service.Done():
	case <-time.After(testTimeout):
		t.Fatal("the deposed service did not stop")
	}
	if err := s.Service.Err(); !errors.Is(err, journal.ErrNotActive) || !errors.Is(err, service.ErrDeposed) {
		t.Fatalf("Err = %v, want ErrDeposed and ErrNotActive", err)
	}
	if _, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, "later"), nil, testTimeout); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("a request to the stopped service: %v, want no responders", err)
	}
}

// The state stream is outside the request subjects and holds one record
// per lock in use: a lock that nobody holds any more has an empty record.
func TestDurableRecords(t *testing.T) {
	t.Parallel()
	s := startDurable(t, t.TempDir())
	defer s.Close()
	nc := s.Connect(t)
	r := send(t, nc, subjects.OpTryLock, "My lock", `{"lock_timeout_seconds":30}`, "")
	js, err := jetstream.New(appConn(t, s))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	stream, err := js.Stream(ctx, "LDLM_ldlm")
	if err != nil {
		t.Fatal(err)
	}
	subject := "$LDLM.ldlm.state.lock." + subjects.EncodeName("My lock")
	m, err := stream.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	var rec engine.LockRecord
	if err := json.Unmarshal(m.Data, &rec); err != nil || len(rec.Holders) != 1 || rec.Holders[0].Token != r.Token || rec.Holders[0].Key != r.Key {
		t.Fatalf("record %s = %s (%v); want the holder of %+v", subject, m.Data, err, r)
	}
	if u := send(t, nc, subjects.OpUnlock, "My lock", `{"key":"`+r.Key+`"}`, ""); !u.Unlocked {
		t.Fatalf("unlock: %+v", u)
	}
	if m, err = stream.GetLastMsgForSubject(ctx, subject); err != nil || len(m.Data) != 0 || m.Header.Get("Nats-TTL") == "" {
		t.Fatalf("record after the unlock = %q %v (%v); want empty, with a TTL", m.Data, m.Header, err)
	}
}

// Replicas are capped by the JetStream servers present: three asked of a
// single server give one, where JetStream would refuse three.
func TestDurableReplicasCapped(t *testing.T) {
	t.Parallel()
	s, err := ldlmtest.StartServer(ldlmtest.WithDataDir(t.TempDir()),
		ldlmtest.WithConfig(service.Config{State: service.StateJetStream, Replicas: 3}))
	if err != nil {
		t.Fatalf("three replicas on one JetStream server: %v", err)
	}
	defer s.Close()
	js, err := jetstream.New(appConn(t, s))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	stream, err := js.Stream(ctx, "LDLM_ldlm")
	if err != nil {
		t.Fatal(err)
	}
	if r := stream.CachedInfo().Config.Replicas; r != 1 {
		t.Fatalf("the state stream has %d replicas, want 1", r)
	}
}
