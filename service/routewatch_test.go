package service_test

import (
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

const sessionC = "cccccccccccccccccccccccccccccccc"

// A NATS server killed with SIGKILL sends nothing: no shutdown
// announcement, no disconnect advisories. The service notices it from its
// routes, long before the sweep (10 minutes here, so that only that can
// free anything): the locks of its clients that do not come back go to
// their waiters after the grace (a session's) or at once (a connection's),
// and a holder that reconnects to another member keeps its lock past the
// grace; a quiet holder on a member that lives on keeps its lock. Without
// the holder, nothing but the route check itself brings
// the news. When the killed server is the service's own, the service
// reconnects to another member, and the same happens.
func TestServerKilled(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		holderComesBack bool
		serviceOnKilled bool // the service is connected to the killed member
		grace           time.Duration
	}{
		{name: "holder comes back", holderComesBack: true, grace: time.Second},
		{name: "nobody comes back", grace: time.Second},
		// The holder's attach waits for the service to be back too: the
		// default grace, as the two reconnects must fit in it.
		{name: "the service's own server", holderComesBack: true, serviceOnKilled: true, grace: service.DefaultReconnectGrace},
	}
	for _, tt := range tests {
		holderComesBack, grace := tt.holderComesBack, tt.grace
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := service.Config{ReconnectGrace: grace, SweepInterval: 10 * time.Minute}
			var c *ldlmtest.Cluster
			var p *ldlmtest.Process
			if tt.serviceOnKilled {
				c = ldlmtest.StartCluster(t, 2, ldlmtest.WithoutService())
				p = c.StartProcessMember(t, "m2")
				c.StartServiceOver(t, cfg, p.URL+","+c.URLs(0))
			} else {
				c = ldlmtest.StartCluster(t, 2, ldlmtest.WithConfig(cfg))
				p = c.StartProcessMember(t, "m2")
			}
			connect := func(urls string, opts ...nats.Option) *nats.Conn {
				nc, err := nats.Connect(urls, opts...)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(nc.Close)
				return nc
			}
			// The canary's process dies with the server: it never reconnects.
			canary := connect(p.URL, nats.NoReconnect())
			waiter := connect(c.Members[0].ClientURL())
			eventually(t, "the service answers on the killed member", func() bool {
				_, err := canary.RequestMsg(sessionMsg(t, canary, subjects.OpTryLock, "probe", "", ""), time.Second)
				return err == nil
			})
			// A server is noticed only once the route watcher has seen it.
			eventually(t, "the service watches the member", func() bool {
				return slices.Contains(c.Service.WatchedServers(), canary.ConnectedServerId())
			})
			if r := sendSession(t, canary, subjects.OpTryLock, "session-lock", "", sessionB); !r.Locked {
				t.Fatalf("trylock session-lock: %+v", r)
			}
			if r := sendSession(t, canary, subjects.OpTryLock, "connection-lock", "", ""); !r.Locked {
				t.Fatalf("trylock connection-lock: %+v", r)
			}
			// A quiet holder on a member that lives on: it must not lose
			// its lock though it sends nothing after the kill.
			bystander := connect(c.Members[1].ClientURL())
			if r := sendSession(t, bystander, subjects.OpTryLock, "bystander-lock", `{"key":"bystander-key"}`, sessionC); !r.Locked {
				t.Fatalf("trylock bystander-lock: %+v", r)
			}
			var holder *nats.Conn
			var got reply
			if holderComesBack {
				holder = connect(p.URL+","+c.URLs(1), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.DontRandomize())
				if got = sendSession(t, holder, subjects.OpTryLock, "job", `{"key":"holder-key"}`, sessionA); !got.Locked {
					t.Fatalf("trylock job: %+v", got)
				}
			}
			waits := map[string]<-chan reply{}
			for i, name := range []string{"session-lock", "connection-lock"} {
				waits[name] = parkedLock(t, waiter, name, "waiter", "")
				eventually(t, "the waiter waits", func() bool {
					n := 0
					for _, name := range []string{"session-lock", "connection-lock"} {
						_, w := holders(c.Service, name)
						n += len(w)
					}
					return n == i+1
				})
			}

			var before string
			if holderComesBack {
				before = holder.ConnectedServerId()
			}
			killedAt := time.Now()
			p.Kill()
			if holderComesBack {
				reconnected(t, holder, before)
				// The service may be reconnecting too: try until it answers.
				var a subjects.AttachResponse
				eventually(t, "the service answers the attach", func() bool {
					res, err := holder.RequestMsg(sessionMsg(t, holder, subjects.OpAttach, "", "", sessionA), time.Second)
					return err == nil && subjects.DecodeAttachResponse(res.Data, &a) == nil
				})
				if !a.Resumed || len(a.Held) != 1 || a.Held[0] != (subjects.AttachedLock{Name: "job", Key: "holder-key", Token: got.Token}) {
					t.Fatalf("attach after the kill: %+v; want job held with token %d", a, got.Token)
				}
			}
			// Well below the sweep interval: only the route check frees them.
			bound := time.After(20 * time.Second)
			for _, name := range []string{"connection-lock", "session-lock"} {
				select {
				case r := <-waits[name]:
					if !r.Locked {
						t.Fatalf("the waiter for %s: %+v", name, r)
					}
					t.Logf("%s went to its waiter %v after the kill (grace %v)", name, time.Since(killedAt).Round(time.Millisecond), grace)
				case <-bound:
					t.Fatalf("%s was not freed within 20 s of its server's death", name)
				}
			}
			eventually(t, "the grace has passed", func() bool {
				return time.Since(killedAt) > grace+100*time.Millisecond && c.Service.SessionsInGrace() == 0
			})
			if held, _ := holders(c.Service, "bystander-lock"); len(held) != 1 || held[0] != "bystander-key" {
				t.Fatalf("the quiet holder on a live member lost its lock: held by %v", held)
			}
			if !holderComesBack {
				return
			}
			if r := sendSession(t, holder, subjects.OpRenew, "job", `{"key":"holder-key","lock_timeout_seconds":30}`, sessionA); !r.Locked || r.Token != got.Token {
				t.Fatalf("renew past the grace: %+v", r)
			}
			if held, _ := holders(c.Service, "job"); len(held) != 1 || held[0] != "holder-key" {
				t.Fatalf("job is held by %v", held)
			}
		})
	}
}
