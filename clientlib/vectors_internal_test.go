package clientlib

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// The client-behaviour cases of the shared wire vectors
// (subjects/testdata/wire-vectors.json, WIRE-V2 item 6): replies, notices
// and owners. The subjects package runs the request, name and decoding
// cases.

type vectorCase struct {
	Name    string `json:"name"`
	Pending string `json:"pending"`
	Op      string `json:"op"`
	Body    string `json:"body"`
	Timing  string `json:"timing"`
	Held    struct {
		Name     string `json:"name"`
		Token    uint64 `json:"token"`
		Instance string `json:"instance"`
	} `json:"held"`
	Event struct {
		Kind    string `json:"kind"`
		Subject string `json:"subject"`
		Op      string `json:"op"`
		Body    string `json:"body"`
	} `json:"event"`
	// no_service: what the service answers every request of Op with
	// (nil: nobody answers), and when it starts answering.
	EveryReply            *string `json:"every_reply"`
	WaitTimeoutSeconds    float64 `json:"wait_timeout_seconds"`
	RequestTimeoutSeconds float64 `json:"request_timeout_seconds"`
	AnswersAfterSeconds   float64 `json:"answers_after_seconds"`
	ServerID              string  `json:"server_id"`
	ClientID              uint64  `json:"client_id"`
	Prefix                string  `json:"prefix"`
	Expect                struct {
		Fields json.RawMessage `json:"fields"`
		Error  string          `json:"error"`
		Client struct {
			Outcome    string             `json:"outcome"`
			ErrorNames map[string]*string `json:"error_names"`
			Cause      map[string]*string `json:"cause"`
		} `json:"client"`
		Action      string  `json:"action"`
		Go          *string `json:"go"`
		Header      string  `json:"header"`
		LostSubject string  `json:"lost_subject"`
	} `json:"expect"`
}

func loadVectors(t *testing.T) map[string][]vectorCase {
	t.Helper()
	data, err := os.ReadFile("../subjects/testdata/wire-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var groups map[string]json.RawMessage
	if err := json.Unmarshal(data, &groups); err != nil {
		t.Fatal(err)
	}
	out := map[string][]vectorCase{}
	for _, g := range []string{"replies", "notices", "owners", "no_service"} {
		var cases []vectorCase
		if err := json.Unmarshal(groups[g], &cases); err != nil {
			t.Fatalf("group %s: %v", g, err)
		}
		out[g] = cases
	}
	return out
}

// sentinels are the Go error names the vectors use.
var sentinels = map[string]error{
	"ErrBadRequest": ErrBadRequest, "ErrInvalidLockName": ErrInvalidLockName, "ErrInvalidLockSize": ErrInvalidLockSize,
	"ErrLockSizeMismatch": ErrLockSizeMismatch, "ErrInvalidTimeout": ErrInvalidTimeout, "ErrInvalidLockKey": ErrInvalidLockKey,
	"ErrLockKeyInUse": ErrLockKeyInUse, "ErrLockDoesNotExist": ErrLockDoesNotExist, "ErrNotLocked": ErrNotLocked,
	"ErrLockWaitTimeout": ErrLockWaitTimeout, "ErrLockWaitCancelled": ErrLockWaitCancelled, "ErrOwnerGone": ErrOwnerGone,
	"ErrLimitExceeded": ErrLimitExceeded, "ErrInternal": ErrInternal, "ErrUnavailable": ErrUnavailable,
	"ErrLockLost": ErrLockLost, "ErrExpired": ErrExpired, "ErrForceReleased": ErrForceReleased,
	"ErrServiceRestarted": ErrServiceRestarted, "ErrConnectionLost": ErrConnectionLost, "ErrNoService": ErrNoService,
}

// matchesName checks err against the Go name of a vector: the sentinel it
// must match, or (null) none of them.
func matchesName(t *testing.T, err error, name *string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	if name == nil {
		for n, s := range sentinels {
			if errors.Is(err, s) {
				t.Errorf("%v matches %s, want no sentinel", err, n)
			}
		}
		return
	}
	s, ok := sentinels[*name]
	if !ok {
		t.Fatalf("no Go sentinel called %s", *name)
	}
	if !errors.Is(err, s) {
		t.Errorf("%v does not match %s", err, *name)
	}
}

// fakeService answers the lock subjects of prefix "vec" with the bodies
// queued per operation, and with a grant (or an unlock) when none is.
type fakeService struct {
	mu     sync.Mutex
	queued map[string][]string
	seen   map[string]int
}

const grantBody = `{"locked":true,"name":"job","key":"k","token":17,"size":1,"instance":"I1"}`

func (f *fakeService) handle(m *nats.Msg) {
	op := strings.Split(m.Subject, ".")[1]
	f.mu.Lock()
	f.seen[op]++
	var body string
	if q := f.queued[op]; len(q) > 0 {
		body, f.queued[op] = q[0], q[1:]
	} else if op == subjects.OpUnlock {
		body = `{"unlocked":true,"name":"job"}`
	} else {
		body = grantBody
	}
	f.mu.Unlock()
	_ = m.Respond([]byte(body))
}

func (f *fakeService) reset(op, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queued = map[string][]string{op: {body}}
	f.seen = map[string]int{}
}

func (f *fakeService) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[op]
}

func TestVectorsReplies(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	fake := &fakeService{}
	if _, err := nc.Subscribe("vec.>", fake.handle); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, tc := range loadVectors(t)["replies"] {
		t.Run(tc.Name, func(t *testing.T) {
			if tc.Pending != "" {
				t.Skip("pending: " + tc.Pending)
			}
			var fields subjects.LockResponse // for granted
			if tc.Expect.Fields != nil {
				fields = checkDecoded(t, tc)
			}
			c, err := New(nc, WithPrefix("vec"), WithRequestTimeout(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fake.reset(tc.Op, tc.Body)
			var l *Lock
			switch tc.Op {
			case subjects.OpLock:
				l, err = c.Lock(ctx, "job")
			case subjects.OpTryLock:
				l, err = c.TryLock(ctx, "job")
			default: // renew and unlock: of a lock held first
				fake.reset(tc.Op, tc.Body)
				if l, err = c.TryLock(ctx, "job", WithLockTimeout(time.Minute), WithAutoRenew(false)); err != nil || !l.Locked() {
					t.Fatalf("TryLock before %s: %v", tc.Op, err)
				}
				if tc.Op == subjects.OpRenew {
					err = l.Renew(ctx, time.Minute)
				} else {
					err = l.Unlock(ctx)
				}
			}
			want := tc.Expect.Client
			switch want.Outcome {
			case "granted":
				if err != nil || !l.Locked() || l.Token() != fields.Token || l.Size() != fields.Size {
					t.Fatalf("got %v, %v; want granted with token %d, size %d", l, err, fields.Token, fields.Size)
				}
			case "not_obtained":
				if err != nil || l.Locked() || !errors.Is(l.Err(), ErrNotObtained) {
					t.Fatalf("got %v, %v; want not obtained", l, err)
				}
			case "renewed", "unlocked":
				if err != nil {
					t.Fatalf("got %v, want %s", err, want.Outcome)
				}
			case "retry":
				if err != nil || fake.count(tc.Op) < 2 {
					t.Fatalf("got %v after %d requests; want success after asking again", err, fake.count(tc.Op))
				}
			case "lost":
				matchesName(t, err, want.ErrorNames["go"])
				matchesName(t, err, want.Cause["go"])
				if l.Locked() {
					t.Error("the lock is still held")
				}
			case "error":
				matchesName(t, err, want.ErrorNames["go"])
			default:
				t.Fatalf("unknown outcome %q", want.Outcome)
			}
		})
	}
}

// TestVectorsNoService: while no service answers, or the one that does is
// stopping, each operation asks again within the caller's budget; a
// service that starts answering within it gets the request, else the
// error names the cause. Each case has a prefix of its own, where a
// stand-in service subscribes only when the case says.
func TestVectorsNoService(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	for i, tc := range loadVectors(t)["no_service"] {
		t.Run(tc.Name, func(t *testing.T) {
			prefix := fmt.Sprintf("nosvc%d", i)
			var asked atomic.Int64 // requests of tc.Op the stand-in answered
			answer := func(m *nats.Msg) {
				op := strings.Split(m.Subject, ".")[1]
				body := grantBody
				switch {
				case op == tc.Op && tc.EveryReply != nil:
					asked.Add(1)
					body = *tc.EveryReply
				case op == subjects.OpUnlock:
					body = `{"unlocked":true,"name":"job"}`
				}
				_ = m.Respond([]byte(body))
			}
			subs := make(chan *nats.Subscription, 2)
			defer func() {
				for len(subs) > 0 {
					_ = (<-subs).Unsubscribe()
				}
			}()
			listen := func() *nats.Subscription {
				sub, err := nc.Subscribe(prefix+".>", answer)
				if err == nil {
					err = nc.Flush()
				}
				if err != nil {
					t.Errorf("the stand-in service: %v", err)
				}
				subs <- sub
				return sub
			}
			requestTimeout := 500 * time.Millisecond
			if tc.RequestTimeoutSeconds > 0 {
				requestTimeout = time.Duration(tc.RequestTimeoutSeconds * float64(time.Second))
			}
			c, err := New(nc, WithPrefix(prefix), WithRequestTimeout(requestTimeout))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Every budget of the cases is short: the context is not the
			// one that ends the call, except where a Lock has no wait
			// timeout, which must end by the request timeout of silence.
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			var held *Lock
			if tc.Op == subjects.OpUnlock || tc.Op == subjects.OpRenew {
				sub := listen()
				if held, err = c.TryLock(ctx, "job", WithLockTimeout(time.Minute), WithAutoRenew(false)); err != nil || !held.Locked() {
					t.Fatalf("TryLock before %s: %v", tc.Op, err)
				}
				if err := sub.Unsubscribe(); err != nil || nc.Flush() != nil {
					t.Fatalf("the stand-in service going away: %v", err)
				}
			}
			if tc.EveryReply != nil {
				listen()
			}
			if tc.AnswersAfterSeconds > 0 {
				timer := time.AfterFunc(time.Duration(tc.AnswersAfterSeconds*float64(time.Second)), func() { listen() })
				defer timer.Stop()
			}
			var l *Lock
			switch tc.Op {
			case subjects.OpLock:
				var opts []LockOption
				if tc.WaitTimeoutSeconds > 0 {
					opts = append(opts, WithWaitTimeout(time.Duration(tc.WaitTimeoutSeconds*float64(time.Second))))
				} else {
					ctx = context.Background() // no budget but the request timeout's
				}
				l, err = c.Lock(ctx, "job", opts...)
			case subjects.OpTryLock:
				l, err = c.TryLock(ctx, "job")
			case subjects.OpUnlock:
				err = held.Unlock(ctx)
			case subjects.OpRenew:
				err = held.Renew(ctx, time.Minute)
			}
			want := tc.Expect.Client
			switch want.Outcome {
			case "granted":
				if err != nil || !l.Locked() {
					t.Fatalf("got %v, %v; want granted once the service answers", l, err)
				}
			case "unlocked", "renewed":
				if err != nil {
					t.Fatalf("got %v; want %s once the service answers", err, want.Outcome)
				}
			case "error":
				matchesName(t, err, want.ErrorNames["go"])
				if tc.EveryReply != nil && asked.Load() < 2 {
					t.Errorf("the stand-in service was asked %d times: the client did not ask again", asked.Load())
				}
				t.Log(err)
			default:
				t.Fatalf("unknown outcome %q", want.Outcome)
			}
		})
	}
}

// checkDecoded checks that the client decodes the reply's fields and
// error code, and returns the fields of a lock reply.
func checkDecoded(t *testing.T, tc vectorCase) subjects.LockResponse {
	t.Helper()
	var got, want any = &subjects.LockResponse{}, &subjects.LockResponse{}
	if tc.Op == subjects.OpUnlock {
		got, want = &subjects.UnlockResponse{}, &subjects.UnlockResponse{}
	}
	if err := json.Unmarshal(tc.Expect.Fields, want); err != nil {
		t.Fatal(err)
	}
	if err := decodeReply([]byte(tc.Body), got); err != nil {
		t.Fatal(err)
	}
	var code string
	switch g := got.(type) {
	case *subjects.LockResponse:
		if g.Error != nil {
			code, g.Error = string(g.Error.Code), nil
		}
		w := want.(*subjects.LockResponse)
		if !g.ExpiresAt.Equal(w.ExpiresAt) {
			t.Errorf("decoded expires_at %v, want %v", g.ExpiresAt, w.ExpiresAt)
		}
		g.ExpiresAt, w.ExpiresAt = time.Time{}, time.Time{}
		if *g != *w {
			t.Errorf("decoded %+v, want %+v", *g, *w)
		}
	case *subjects.UnlockResponse:
		if g.Error != nil {
			code, g.Error = string(g.Error.Code), nil
		}
		if *g != *want.(*subjects.UnlockResponse) {
			t.Errorf("decoded %+v, want %+v", *g, want)
		}
	}
	if code != tc.Expect.Error {
		t.Errorf("decoded error %q, want %q", code, tc.Expect.Error)
	}
	if w, ok := want.(*subjects.LockResponse); ok {
		return *w
	}
	return subjects.LockResponse{}
}

func TestVectorsNotices(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	for _, tc := range loadVectors(t)["notices"] {
		t.Run(tc.Name, func(t *testing.T) {
			if tc.Pending != "" {
				t.Skip("pending: " + tc.Pending)
			}
			c, err := New(nc, WithPrefix("vec"), WithRequestTimeout(50*time.Millisecond)) // nobody answers: Close gives up soon
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.mu.Lock()
			ep := c.cur
			c.mu.Unlock()
			l := newLock(c, ep, tc.Held.Name, "k", subjects.LockResponse{Token: tc.Held.Token, Size: 1, Instance: tc.Held.Instance}, lockOptions{}, time.Now())
			grant := func() { _ = c.register(l, nil) } // as attempt does with a grant's reply
			if tc.Timing != "before_reply" {
				grant()
				if err := l.Err(); err != nil {
					t.Fatalf("the grant was refused: %v", err)
				}
			}
			msg := &nats.Msg{Subject: tc.Event.Subject, Data: []byte(tc.Event.Body)}
			switch tc.Event.Kind {
			case "lost":
				c.onLost(msg)
			case "instance":
				c.onInstance(msg)
			case "reply": // a grant of another lock
				var resp subjects.LockResponse
				if err := decodeReply(msg.Data, &resp); err != nil {
					t.Fatal(err)
				}
				if err := c.register(newLock(c, ep, resp.Name, "k2", resp, lockOptions{}, time.Now()), nil); err != nil {
					t.Fatalf("the other grant was refused: %v", err)
				}
			default:
				t.Fatalf("unknown event %q", tc.Event.Kind)
			}
			if tc.Timing == "before_reply" {
				grant()
			}
			err = l.Err()
			switch tc.Expect.Action {
			case "keep":
				if err != nil {
					t.Errorf("lost: %v; want kept", err)
				}
			case "lose":
				if !errors.Is(err, ErrLockLost) {
					t.Fatalf("Err() = %v, want lost", err)
				}
				if tc.Expect.Go != nil {
					matchesName(t, err, tc.Expect.Go)
				}
			default:
				t.Fatalf("unknown action %q", tc.Expect.Action)
			}
		})
	}
}

func TestVectorsOwners(t *testing.T) {
	for _, tc := range loadVectors(t)["owners"] {
		t.Run(tc.Name, func(t *testing.T) {
			if tc.Pending != "" {
				t.Skip("pending: " + tc.Pending)
			}
			owner := subjects.FormatOwner(tc.ServerID, tc.ClientID)
			if owner != tc.Expect.Header {
				t.Errorf("owner %q, want %q", owner, tc.Expect.Header)
			}
			if s := subjects.LostSubject(tc.Prefix, owner); s != tc.Expect.LostSubject {
				t.Errorf("lost subject %q, want %q", s, tc.Expect.LostSubject)
			}
		})
	}
}

// decodeReply decodes a reply as the client does: the two reply types
// through their scanners, anything else with json.Unmarshal.
func decodeReply(data []byte, out any) error {
	switch out := out.(type) {
	case *subjects.LockResponse:
		return subjects.DecodeLockResponse(data, out)
	case *subjects.UnlockResponse:
		return subjects.DecodeUnlockResponse(data, out)
	default:
		return json.Unmarshal(data, out)
	}
}
