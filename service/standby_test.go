package service_test

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// testLogger logs to stderr when LDLM_TEST_LOG is set, as ldlmtest does.
func testLogger() *slog.Logger {
	if os.Getenv("LDLM_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

// startStandby starts a second lock service with JetStream state on the
// NATS server of s, on connections of its own; it is stopped when the test
// ends.
func startStandby(t *testing.T, s *ldlmtest.Server) *service.Service {
	t.Helper()
	app, err := s.NATS.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	sys, err := s.NATS.ConnectSystem()
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.Start(service.Config{State: service.StateJetStream}, app, sys, testLogger())
	if err != nil {
		t.Fatalf("a second instance on the same prefix: %v", err)
	}
	t.Cleanup(func() {
		svc.Stop()
		app.Close()
		sys.Close()
	})
	return svc
}

// A second instance with JetStream state on the same prefix waits as a
// standby, and takes over with every lock and waiter when the active goes:
// when it stops, and when its connection dies.
func TestStandbyTakesOver(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// noActiveRecord: the standby loads a stream without the active
		// record (as when it reads while a takeover rewrites it, or
		// before the first active wrote it) and makes up an instance id;
		// the takeover must use the state's id all the same.
		noActiveRecord bool
		end            func(t *testing.T, active *ldlmtest.Server)
	}{
		{"active stops", false, func(t *testing.T, active *ldlmtest.Server) { active.Service.Stop() }},
		{"active's connection dies", false, func(t *testing.T, active *ldlmtest.Server) {
			app, _ := active.ServiceConns()
			app.Close()
		}},
		{"standby loaded no active record", true, func(t *testing.T, active *ldlmtest.Server) { active.Service.Stop() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			active := startDurable(t, t.TempDir())
			t.Cleanup(active.Close) // after the standby's stop
			if tt.noActiveRecord {
				js, err := jetstream.New(appConn(t, active))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				stream, err := js.Stream(ctx, "LDLM_ldlm")
				if err == nil {
					err = stream.Purge(ctx, jetstream.WithPurgeSubject("$LDLM.ldlm.state.active"))
				}
				if err != nil {
					t.Fatalf("purging the active record: %v", err)
				}
			}
			standby := startStandby(t, active)
			if st := standby.Engine().Stats(); st.Locks != 0 {
				t.Fatalf("a standby's engine holds %d locks", st.Locks)
			}
			nc := active.Connect(t)
			held := send(t, nc, subjects.OpTryLock, "job", `{"lock_timeout_seconds":300}`, "")
			if !held.Locked {
				t.Fatalf("trylock: %+v", held)
			}
			w, err := nc.SubscribeSync("answer.w")
			if err != nil {
				t.Fatal(err)
			}
			if err := nc.PublishRequest(subjects.Subject(subjects.DefaultPrefix, subjects.OpLock, "job"), "answer.w", []byte(`{"key":"w","wait_timeout_seconds":300}`)); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the waiter parked", func() bool { return active.Service.Engine().Stats().Waiters == 1 })
			// A reply after the waiter's record: the record is written.
			send(t, nc, subjects.OpTryLock, "flush", "", "")

			tt.end(t, active)
			eventually(t, "the standby took over", func() bool { return standby.Engine().Stats().Locks >= 2 })
			eventually(t, "the new active answers", func() bool {
				m, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, "probe"), nil, testTimeout)
				return err == nil && len(m.Data) > 0
			})
			if r := send(t, nc, subjects.OpTryLock, "job", "", ""); r.Locked || r.Error != nil {
				t.Fatalf("the held lock after the takeover: %+v", r)
			}
			if r := send(t, nc, subjects.OpRenew, "job", `{"key":"`+held.Key+`","lock_timeout_seconds":60}`, ""); !r.Locked || r.Token != held.Token || r.Instance != held.Instance {
				t.Fatalf("renew after the takeover: %+v; want token %d of instance %s", r, held.Token, held.Instance)
			}
			if u := send(t, nc, subjects.OpUnlock, "job", `{"key":"`+held.Key+`"}`, ""); !u.Unlocked {
				t.Fatalf("unlock after the takeover: %+v", u)
			}
			granted := waitReply(t, w)
			if !granted.Locked || granted.Key != "w" || granted.Token <= held.Token {
				t.Fatalf("the waiter after the takeover: %+v", granted)
			}
			select {
			case <-standby.Done():
				t.Fatalf("the new active stopped: %v", standby.Err())
			default:
			}
		})
	}
}

// Of two standbys, one wins the takeover; the other, refused, follows the
// new active and takes over from it in turn.
func TestStandbysTakeOverInTurn(t *testing.T) {
	t.Parallel()
	active := startDurable(t, t.TempDir())
	t.Cleanup(active.Close) // after the standbys' stop
	standbys := []*service.Service{startStandby(t, active), startStandby(t, active)}
	nc := active.Connect(t)
	held := send(t, nc, subjects.OpTryLock, "job", `{"lock_timeout_seconds":300}`, "")
	if !held.Locked {
		t.Fatalf("trylock: %+v", held)
	}

	active.Service.Stop()
	var winner, other *service.Service
	eventually(t, "a standby took over", func() bool {
		for i, s := range standbys {
			if s.Engine().Stats().Locks > 0 {
				winner, other = s, standbys[1-i]
				return true
			}
		}
		return false
	})
	eventually(t, "the new active answers", func() bool {
		m, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, "probe"), nil, testTimeout)
		return err == nil && len(m.Data) > 0
	})
	if r := send(t, nc, subjects.OpRenew, "job", `{"key":"`+held.Key+`","lock_timeout_seconds":300}`, ""); !r.Locked || r.Token != held.Token {
		t.Fatalf("renew after the first takeover: %+v", r)
	}
	select {
	case <-other.Done():
		t.Fatalf("the refused standby stopped: %v", other.Err())
	default:
	}

	winner.Stop()
	eventually(t, "the other standby took over", func() bool { return other.Engine().Stats().Locks > 0 })
	eventually(t, "the last instance answers", func() bool {
		m, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, subjects.OpTryLock, "probe"), nil, testTimeout)
		return err == nil && len(m.Data) > 0
	})
	if r := send(t, nc, subjects.OpRenew, "job", `{"key":"`+held.Key+`","lock_timeout_seconds":300}`, ""); !r.Locked || r.Token != held.Token || r.Instance != held.Instance {
		t.Fatalf("renew after the second takeover: %+v; want token %d of instance %s", r, held.Token, held.Instance)
	}
}
