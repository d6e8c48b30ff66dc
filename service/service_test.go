package service_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// testTimeout bounds every request of these tests: generous, since the
// machine may be loaded; no test asserts on how fast anything is.
const testTimeout = 10 * time.Second

type reply struct {
	subjects.LockResponse
	Unlocked bool `json:"unlocked"`
	// headerCode is the Nats-Service-Error-Code header.
	headerCode string
}

// send makes one request and decodes the reply. owner, when not empty, is
// sent as the Ldlm-Owner header.
func send(t *testing.T, nc *nats.Conn, op, name, body, owner string) reply {
	t.Helper()
	msg := nats.NewMsg(subjects.Subject(subjects.DefaultPrefix, op, name))
	msg.Data = []byte(body)
	if owner != "" {
		msg.Header.Set(subjects.HeaderOwner, owner)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	res, err := nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		t.Fatalf("%s %q %s: %v", op, name, body, err)
	}
	var r reply
	if err := json.Unmarshal(res.Data, &r); err != nil {
		t.Fatalf("%s %q: reply %q is not JSON: %v", op, name, res.Data, err)
	}
	r.headerCode = res.Header.Get(subjects.HeaderErrorCode)
	if r.Error != nil && r.headerCode != string(r.Error.Code) {
		t.Fatalf("%s %q: error header %q does not match body code %q", op, name, r.headerCode, r.Error.Code)
	}
	return r
}

func code(r reply) subjects.ErrorCode {
	if r.Error == nil {
		return ""
	}
	return r.Error.Code
}

// ownerOf is the Ldlm-Owner value for nc, as the client libraries send it:
// SERVER_ID:CLIENT_ID.
func ownerOf(t *testing.T, nc *nats.Conn) string {
	t.Helper()
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	return subjects.FormatOwner(nc.ConnectedServerId(), cid)
}

// legacyOwnerOf is the Ldlm-Owner value for nc as clients sent it before
// the server id: SERVER_NAME:CLIENT_ID.
func legacyOwnerOf(t *testing.T, nc *nats.Conn) string {
	t.Helper()
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	return subjects.FormatOwner(nc.ConnectedServerName(), cid)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLockLifecycle(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	owner := ownerOf(t, nc)

	got := send(t, nc, subjects.OpTryLock, "job", "", owner)
	if !got.Locked || got.Key == "" || got.Token == 0 || got.Size != 1 || !got.ExpiresAt.IsZero() {
		t.Fatalf("trylock of a free lock: %+v", got)
	}
	first := got

	if again := send(t, nc, subjects.OpTryLock, "job", "", owner); again.Locked || again.Error != nil {
		t.Fatalf("trylock of a held lock: want locked:false without error, got %+v", again)
	}

	renewed := send(t, nc, subjects.OpRenew, "job", `{"key":"`+first.Key+`","lock_timeout_seconds":30}`, owner)
	if !renewed.Locked || renewed.Token != first.Token || renewed.ExpiresAt.IsZero() {
		t.Fatalf("renew: %+v", renewed)
	}

	if u := send(t, nc, subjects.OpUnlock, "job", `{"key":"`+first.Key+`"}`, owner); !u.Unlocked || u.Name != "job" {
		t.Fatalf("unlock: %+v", u)
	}
	second := send(t, nc, subjects.OpTryLock, "job", "", owner)
	if !second.Locked || second.Token <= first.Token {
		t.Fatalf("the next grant must have a larger fencing token than %d: %+v", first.Token, second)
	}
}

// Names that cannot be subject tokens travel '~'-encoded; both forms of a
// plain name reach the same lock.
func TestNames(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)

	for _, name := range []string{"My lock", "a*b", "a>b", "é", "~tilde", "orders.123", "a..b", ".lead"} {
		got := send(t, nc, subjects.OpTryLock, name, "", "")
		if !got.Locked || got.Name != name {
			t.Errorf("trylock %q: %+v", name, got)
		}
	}
	// "orders.123" is held: its '~' form names the same lock.
	msg, err := nc.Request(subjects.DefaultPrefix+".trylock.~b3JkZXJzLjEyMw", nil, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(msg.Data), `"locked":false`) {
		t.Errorf("the encoded form of a held plain name must find it held: %s", msg.Data)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	held := send(t, nc, subjects.OpTryLock, "held", `{"size":2}`, "")

	longName := strings.Repeat("n", subjects.DefaultMaxNameLength+1)
	tests := []struct {
		name    string
		subject string // used instead of op+lock when set
		op      string
		lock    string
		body    string
		owner   string
		want    subjects.ErrorCode
	}{
		{name: "malformed JSON", op: "lock", lock: "x", body: `{"size":`, want: subjects.CodeBadRequest},
		{name: "not an object", op: "lock", lock: "x", body: `[1,2]`, want: subjects.CodeBadRequest},
		{name: "null body", op: "lock", lock: "x", body: `null`, want: subjects.CodeBadRequest},
		{name: "string body", op: "trylock", lock: "x", body: `"hello"`, want: subjects.CodeBadRequest},
		{name: "wrong type", op: "trylock", lock: "x", body: `{"size":"two"}`, want: subjects.CodeBadRequest},
		{name: "fractional size", op: "trylock", lock: "x", body: `{"size":1.5}`, want: subjects.CodeBadRequest},
		{name: "unknown field", op: "trylock", lock: "x", body: `{"lock_timeout":5}`, want: subjects.CodeBadRequest},
		{name: "trailing data", op: "trylock", lock: "x", body: `{} {}`, want: subjects.CodeBadRequest},
		{name: "deep nesting", op: "trylock", lock: "x", body: `{"key":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`, want: subjects.CodeBadRequest},
		{name: "size zero", op: "trylock", lock: "x", body: `{"size":0}`, want: subjects.CodeInvalidLockSize},
		{name: "size negative", op: "trylock", lock: "x", body: `{"size":-3}`, want: subjects.CodeInvalidLockSize},
		{name: "size too big for int", op: "trylock", lock: "x", body: `{"size":1e30}`, want: subjects.CodeBadRequest},
		{name: "size mismatch", op: "trylock", lock: "held", body: `{"size":3}`, want: subjects.CodeLockSizeMismatch},
		{name: "negative wait timeout", op: "lock", lock: "x", body: `{"wait_timeout_seconds":-1}`, want: subjects.CodeInvalidTimeout},
		{name: "huge lock timeout", op: "lock", lock: "x", body: `{"lock_timeout_seconds":1e12}`, want: subjects.CodeInvalidTimeout},
		{name: "trylock does not wait", op: "trylock", lock: "x", body: `{"wait_timeout_seconds":1}`, want: subjects.CodeBadRequest},
		{name: "name too long", op: "trylock", lock: longName, want: subjects.CodeInvalidLockName},
		{name: "broken encoding", subject: "ldlm.trylock.~!!", want: subjects.CodeInvalidLockName},
		{name: "encoded empty name", subject: "ldlm.trylock.~", want: subjects.CodeInvalidLockName},
		{name: "key with space", op: "trylock", lock: "x", body: `{"key":"a b"}`, want: subjects.CodeInvalidLockKey},
		{name: "unlock without key", op: "unlock", lock: "held", want: subjects.CodeInvalidLockKey},
		{name: "unlock wrong key", op: "unlock", lock: "held", body: `{"key":"nope"}`, want: subjects.CodeInvalidLockKey},
		{name: "unlock never taken", op: "unlock", lock: "never", body: `{"key":"k"}`, want: subjects.CodeLockDoesNotExist},
		{name: "unlock with size", op: "unlock", lock: "held", body: `{"key":"k","size":2}`, want: subjects.CodeBadRequest},
		{name: "renew without timeout", op: "renew", lock: "held", body: `{"key":"` + held.Key + `"}`, want: subjects.CodeInvalidTimeout},
		{name: "renew wrong key", op: "renew", lock: "held", body: `{"key":"nope","lock_timeout_seconds":5}`, want: subjects.CodeInvalidLockKey},
		{name: "renew never taken", op: "renew", lock: "never", body: `{"key":"k","lock_timeout_seconds":5}`, want: subjects.CodeLockDoesNotExist},
		{name: "malformed owner header", op: "trylock", lock: "x", owner: "no-client-id", want: subjects.CodeBadRequest},
		{name: "duplicate client key", op: "trylock", lock: "held", body: `{"size":2,"key":"` + held.Key + `"}`, want: subjects.CodeLockKeyInUse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got reply
			if tt.subject != "" {
				res, err := nc.Request(tt.subject, []byte(tt.body), testTimeout)
				if err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(res.Data, &got); err != nil {
					t.Fatalf("reply %q: %v", res.Data, err)
				}
				got.headerCode = res.Header.Get(subjects.HeaderErrorCode)
			} else {
				got = send(t, nc, tt.op, tt.lock, tt.body, tt.owner)
			}
			if code(got) != tt.want || got.headerCode != string(tt.want) || got.Locked || got.Unlocked {
				t.Fatalf("want error %s, got %+v (header %q)", tt.want, got, got.headerCode)
			}
			if got.Error.Message == "" {
				t.Fatal("an error needs a message")
			}
		})
	}
	// After all that, the service still serves.
	if ok := send(t, nc, subjects.OpTryLock, "after", "", ""); !ok.Locked {
		t.Fatalf("service stopped serving after bad input: %+v", ok)
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{MaxBodyBytes: 100, MaxLocks: 1, MaxWaitersPerLock: 1}))
	nc := srv.Connect(t)
	if got := send(t, nc, subjects.OpTryLock, "x", `{"key":"`+strings.Repeat("k", 200)+`"}`, ""); code(got) != subjects.CodeBadRequest {
		t.Fatalf("a body over the limit: %+v", got)
	}
	send(t, nc, subjects.OpTryLock, "x", "", "")
	if got := send(t, nc, subjects.OpTryLock, "y", "", ""); code(got) != subjects.CodeLimitExceeded {
		t.Fatalf("a lock over the limit: %+v", got)
	}
	go func() { _, _ = nc.Request("ldlm.lock.x", nil, testTimeout) }()
	eventually(t, "the waiter is parked", func() bool { return srv.Service.Engine().Stats().Waiters == 1 })
	if got := send(t, nc, subjects.OpLock, "x", `{"wait_timeout_seconds":5}`, ""); code(got) != subjects.CodeLimitExceeded {
		t.Fatalf("a waiter over the limit: %+v", got)
	}
	if got := send(t, nc, subjects.OpTryLock, "x", "", ""); got.Error != nil {
		t.Fatalf("the service must keep serving at its limits: %+v", got)
	}
}

func TestWaitersAreParkedNotBlocking(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	holder := send(t, nc, subjects.OpTryLock, "busy", "", "")

	// A waiter parks on "busy"...
	waiter := make(chan reply, 1)
	go func() {
		waiter <- send(t, nc, subjects.OpLock, "busy", "", "")
	}()
	eventually(t, "the waiter is parked", func() bool { return srv.Service.Engine().Stats().Waiters == 1 })

	// ...and other requests are still answered meanwhile.
	if other := send(t, nc, subjects.OpTryLock, "other", "", ""); !other.Locked {
		t.Fatalf("a parked waiter blocked other requests: %+v", other)
	}

	send(t, nc, subjects.OpUnlock, "busy", `{"key":"`+holder.Key+`"}`, "")
	select {
	case got := <-waiter:
		if !got.Locked || got.Token <= holder.Token {
			t.Fatalf("waiter after unlock: %+v", got)
		}
	case <-time.After(testTimeout):
		t.Fatal("the waiter was not granted after the unlock")
	}
}

func TestWaitTimeout(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	send(t, nc, subjects.OpTryLock, "busy", "", "")

	got := send(t, nc, subjects.OpLock, "busy", `{"wait_timeout_seconds":0.05}`, "")
	if got.Locked || code(got) != subjects.CodeLockWaitTimeout || got.headerCode != string(subjects.CodeLockWaitTimeout) {
		t.Fatalf("want LockWaitTimeout, got %+v", got)
	}
}

func TestLockTimeoutReleases(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	first := send(t, nc, subjects.OpTryLock, "short", `{"lock_timeout_seconds":0.05}`, ownerOf(t, nc))
	if !first.Locked || first.ExpiresAt.IsZero() {
		t.Fatalf("%+v", first)
	}
	// A blocking lock is granted once the first grant expires.
	second := send(t, nc, subjects.OpLock, "short", "", "")
	if !second.Locked || second.Token <= first.Token {
		t.Fatalf("want a grant after expiry, got %+v", second)
	}
	if r := send(t, nc, subjects.OpRenew, "short", `{"key":"`+first.Key+`","lock_timeout_seconds":5}`, ""); code(r) != subjects.CodeInvalidLockKey {
		t.Fatalf("renewing an expired grant: want InvalidLockKey, got %+v", r)
	}
}

func TestAnonymousLocksGetTheDefaultTimeout(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{AnonymousLockTimeout: time.Hour}))
	nc := srv.Connect(t)

	anon := send(t, nc, subjects.OpTryLock, "anon", "", "")
	if left := time.Until(anon.ExpiresAt); left < 59*time.Minute || left > time.Hour {
		t.Fatalf("a lock without owner or timeout must expire after the anonymous lock timeout (1h); expires_at %v", anon.ExpiresAt)
	}
	owned := send(t, nc, subjects.OpTryLock, "owned", "", ownerOf(t, nc))
	if !owned.ExpiresAt.IsZero() {
		t.Fatalf("a lock with an owner and no timeout must not expire; expires_at %v", owned.ExpiresAt)
	}
	explicit := send(t, nc, subjects.OpTryLock, "explicit", `{"lock_timeout_seconds":10}`, "")
	if left := time.Until(explicit.ExpiresAt); left > 10*time.Second {
		t.Fatalf("an explicit timeout wins over the default; expires_at %v", explicit.ExpiresAt)
	}
}

// The client's way to give up waiting: unlock with its own key cancels the
// wait, or releases the grant if it raced in first. Either way the lock ends
// up free.
func TestCancelWaitByKey(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	holder := send(t, nc, subjects.OpTryLock, "c", "", "")

	waiter := make(chan reply, 1)
	go func() { waiter <- send(t, nc, subjects.OpLock, "c", `{"key":"waiter-key-1"}`, "") }()
	eventually(t, "the waiter is parked", func() bool { return srv.Service.Engine().Stats().Waiters == 1 })

	if u := send(t, nc, subjects.OpUnlock, "c", `{"key":"waiter-key-1"}`, ""); !u.Unlocked {
		t.Fatalf("unlock by a waiter's key must cancel the wait: %+v", u)
	}
	if got := <-waiter; got.Locked || code(got) != subjects.CodeLockWaitCancelled {
		t.Fatalf("the cancelled waiter's reply: %+v", got)
	}
	send(t, nc, subjects.OpUnlock, "c", `{"key":"`+holder.Key+`"}`, "")
	if st := srv.Service.Engine().Stats(); st.Locks != 0 {
		t.Fatalf("lock left behind: %+v", st)
	}

	// The race the other way: the grant lands before the unlock.
	for i := range 50 {
		key := "race-key-" + string(rune('a'+i%26)) + strings.Repeat("x", i)
		h := send(t, nc, subjects.OpTryLock, "r", "", "")
		done := make(chan reply, 1)
		go func() { done <- send(t, nc, subjects.OpLock, "r", `{"key":"`+key+`"}`, "") }()
		send(t, nc, subjects.OpUnlock, "r", `{"key":"`+h.Key+`"}`, "")
		// The waiter's grant may or may not have happened yet.
		if u := send(t, nc, subjects.OpUnlock, "r", `{"key":"`+key+`"}`, ""); !u.Unlocked {
			// Only possible if the lock request had not even arrived yet.
			if code(u) != subjects.CodeLockDoesNotExist {
				t.Fatalf("unlock by the waiter's key: %+v", u)
			}
			<-done
			send(t, nc, subjects.OpUnlock, "r", `{"key":"`+key+`"}`, "")
		} else {
			<-done
		}
		eventually(t, "the lock is free", func() bool { return srv.Service.Engine().Stats().Locks == 0 })
	}
}

func TestDisconnectReleasesLocksAndWaits(t *testing.T) {
	t.Parallel()
	// No periodic sweep: only the advisory can free the locks.
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{SweepInterval: -1}))
	observer := srv.Connect(t)
	holder := srv.Connect(t)
	owner := ownerOf(t, holder)

	send(t, holder, subjects.OpTryLock, "a", "", owner)
	send(t, holder, subjects.OpTryLock, "b", `{"size":3}`, owner)
	other := send(t, observer, subjects.OpTryLock, "c", "", ownerOf(t, observer))
	// The holder also waits for c.
	go func() {
		msg := nats.NewMsg(subjects.Subject(subjects.DefaultPrefix, subjects.OpLock, "c"))
		msg.Header.Set(subjects.HeaderOwner, owner)
		_, _ = holder.RequestMsg(msg, testTimeout)
	}()
	eventually(t, "the holder waits for c", func() bool { return srv.Service.Engine().Stats().Waiters == 1 })

	holder.Close()
	eventually(t, "the closed connection's locks and waits are released", func() bool {
		st := srv.Service.Engine().Stats()
		return st.Holders == 1 && st.Waiters == 0
	})
	if got := send(t, observer, subjects.OpTryLock, "a", "", ""); !got.Locked {
		t.Fatalf("lock a still held after its holder disconnected: %+v", got)
	}
	send(t, observer, subjects.OpUnlock, "c", `{"key":"`+other.Key+`"}`, "")
}

// A connection kicked by the server is gone too, even though the client
// reconnects under a new client id.
func TestKickedConnectionLosesLocks(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{SweepInterval: -1}))
	holder := srv.Connect(t, nats.ReconnectWait(10*time.Millisecond))
	send(t, holder, subjects.OpTryLock, "k", "", ownerOf(t, holder))

	srv.Kick(t, holder)
	eventually(t, "the kicked connection's lock is released", func() bool {
		return srv.Service.Engine().Stats().Locks == 0
	})
}

// Without system account access the service sees no advisories; the sweep
// of the account's connections frees a closed connection's locks, and
// keeps those of live ones.
func TestSweepWithoutSystemAccount(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithoutSystemAccount(), ldlmtest.WithConfig(service.Config{SweepInterval: -1}))
	alive := srv.Connect(t)
	dying := srv.Connect(t)
	send(t, alive, subjects.OpTryLock, "alive", "", ownerOf(t, alive))
	send(t, dying, subjects.OpTryLock, "dying", "", ownerOf(t, dying))
	// An owner on a server that does not exist: kept by the first sweep
	// that misses it, released by the second.
	send(t, alive, subjects.OpTryLock, "ghost", "", subjects.FormatOwner("no-such-server", 7))

	ns := srv.NATS.NATSServer()
	before := ns.NumClients()
	dying.Close()
	eventually(t, "the server has closed the connection", func() bool { return ns.NumClients() == before-1 })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// The advisory is not seen, so the lock stays until a sweep.
	if st := srv.Service.Engine().Stats(); st.Locks != 3 {
		t.Fatalf("before the sweep: %+v", st)
	}
	if err := srv.Service.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := send(t, alive, subjects.OpTryLock, "dying", "", ""); !got.Locked {
		t.Fatalf("the sweep did not free the closed connection's lock: %+v", got)
	}
	if got := send(t, alive, subjects.OpTryLock, "alive", "", ""); got.Locked {
		t.Fatal("the sweep freed a live connection's lock")
	}
	if got := send(t, alive, subjects.OpTryLock, "ghost", "", ""); got.Locked {
		t.Fatal("one missed sweep must not free the locks of a server's connections")
	}
	if err := srv.Service.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := send(t, alive, subjects.OpTryLock, "ghost", "", ""); !got.Locked {
		t.Fatal("a server missing from two sweeps in a row is gone; its connections' locks must be freed")
	}
}

func TestNoClearOnDisconnect(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t, ldlmtest.WithConfig(service.Config{NoClearOnDisconnect: true, SweepInterval: -1}))
	observer := srv.Connect(t)
	holder := srv.Connect(t)
	got := send(t, holder, subjects.OpTryLock, "kept", "", ownerOf(t, holder))
	if got.ExpiresAt.IsZero() {
		t.Fatal("with no clear on disconnect every lock needs a timeout; got none")
	}
	ns := srv.NATS.NATSServer()
	before := ns.NumClients()
	holder.Close()
	eventually(t, "the server has closed the connection", func() bool { return ns.NumClients() == before-1 })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := srv.Service.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if again := send(t, observer, subjects.OpTryLock, "kept", "", ""); again.Locked {
		t.Fatal("the lock was released on disconnect although the service keeps locks")
	}
}

func TestMicroDiscovery(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	res, err := nc.Request("$SRV.INFO."+service.ServiceName, nil, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Name      string `json:"name"`
		Endpoints []struct {
			Subject string `json:"subject"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(res.Data, &info); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range info.Endpoints {
		got = append(got, e.Subject)
	}
	want := "ldlm.> ldlm.admin.list ldlm.admin.status ldlm.admin.unlock.>"
	if info.Name != "ldlm" || strings.Join(got, " ") != want {
		t.Fatalf("micro info: name %q endpoints %v, want %s", info.Name, got, want)
	}

	// One endpoint serves the four operations; its stats count each.
	send(t, nc, subjects.OpTryLock, "x", "", "")
	send(t, nc, subjects.OpTryLock, "x", "", "")
	send(t, nc, subjects.OpRenew, "x", `{"key":"nope","lock_timeout_seconds":1}`, "")
	res, err = nc.Request("$SRV.STATS."+service.ServiceName, nil, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Endpoints []struct {
			Name string                      `json:"name"`
			Data map[string]service.OpCounts `json:"data"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(res.Data, &stats); err != nil {
		t.Fatal(err)
	}
	if e := stats.Endpoints[0]; e.Data[subjects.OpTryLock] != (service.OpCounts{Requests: 2}) ||
		e.Data[subjects.OpRenew] != (service.OpCounts{Requests: 1, Errors: 1}) || e.Data[subjects.OpLock] != (service.OpCounts{}) {
		t.Fatalf("stats of %s: %+v", e.Name, e.Data)
	}
}

// A grant after a wait says how long the request waited (waited_ms), so
// that the client counts the lock timeout from the grant: never more than
// the time since the request was sent, at least the time it was parked.
func TestGrantSaysHowLongItWaited(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	holder := send(t, nc, subjects.OpTryLock, "queue", "", "")
	if !holder.Locked || holder.WaitedMS != 0 {
		t.Fatalf("trylock of a free lock: %+v (want locked, no waited_ms)", holder)
	}

	waiter := make(chan reply, 1)
	sent := time.Now()
	go func() { waiter <- send(t, nc, subjects.OpLock, "queue", `{"lock_timeout_seconds":60}`, "") }()
	eventually(t, "the waiter is parked", func() bool { return srv.Service.Engine().Stats().Waiters == 1 })
	parked := time.Now()
	const held = 50 * time.Millisecond
	for time.Since(parked) < held {
		time.Sleep(5 * time.Millisecond)
	}
	send(t, nc, subjects.OpUnlock, "queue", `{"key":"`+holder.Key+`"}`, "")
	select {
	case got := <-waiter:
		waited := time.Duration(got.WaitedMS) * time.Millisecond
		if !got.Locked || waited < held || waited > time.Since(sent) {
			t.Fatalf("grant after a wait: %+v; waited_ms must be at least %s (parked that long) and at most %s (since sent)",
				got, held, time.Since(sent))
		}
	case <-time.After(testTimeout):
		t.Fatal("the waiter was not granted after the unlock")
	}
}
