package service_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// gatherAnswers sends one request on subject and returns the bodies of
// the answers that come until none has for quiet (at most testTimeout).
func gatherAnswers(t *testing.T, nc *nats.Conn, subject string, quiet time.Duration) [][]byte {
	t.Helper()
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		t.Fatal(err)
	}
	var bodies [][]byte
	for deadline := time.Now().Add(testTimeout); time.Now().Before(deadline); {
		m, err := sub.NextMsg(quiet)
		if err != nil {
			break
		}
		if len(m.Data) > 0 { // not a no-responders status
			bodies = append(bodies, m.Data)
		}
	}
	return bodies
}

// instances asks every instance on the default prefix about itself:
// the active first, then the standbys by id.
func instances(t *testing.T, nc *nats.Conn) []subjects.InstanceInfo {
	t.Helper()
	var infos []subjects.InstanceInfo
	for _, b := range gatherAnswers(t, nc, subjects.AdminSubject(subjects.DefaultPrefix, subjects.OpAdminInstances, ""), 300*time.Millisecond) {
		var info subjects.InstanceInfo
		if err := json.Unmarshal(b, &info); err != nil {
			t.Fatalf("instances answer %q: %v", b, err)
		}
		infos = append(infos, info)
	}
	slices.SortFunc(infos, func(a, b subjects.InstanceInfo) int {
		if a.Role != b.Role {
			if a.Role == subjects.RoleActive {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	return infos
}

// roles are the roles of infos, in order.
func roles(infos []subjects.InstanceInfo) []string {
	var r []string
	for _, i := range infos {
		r = append(r, i.Role)
	}
	return r
}

// Every instance of a prefix with JetStream state answers
// PREFIX.admin.instances: one active, the standbys, each standby's
// applied sequence reaching the active's after writes, also after a
// takeover; only the active answers micro's ping.
func TestInstancesAnswer(t *testing.T) {
	t.Parallel()
	active := startDurable(t, t.TempDir())
	t.Cleanup(active.Close) // after the standbys' stop
	startStandby(t, active)
	startStandby(t, active)
	nc := active.Connect(t)

	var infos []subjects.InstanceInfo
	eventually(t, "one active and two standbys answer", func() bool {
		infos = instances(t, nc)
		return slices.Equal(roles(infos), []string{subjects.RoleActive, subjects.RoleStandby, subjects.RoleStandby})
	})
	ids := map[string]bool{}
	for _, i := range infos {
		ids[i.ID] = true
		if i.ID == "" || i.Instance != infos[0].Instance || i.Instance == "" || i.State != service.StateJetStream || i.Server == "" || i.Since.IsZero() {
			t.Errorf("answer %+v; want an id, the active's instance %q, state jetstream, a server and a since", i, infos[0].Instance)
		}
		if (i.MicroID != "") != (i.Role == subjects.RoleActive) {
			t.Errorf("answer %+v: only the active has a micro id", i)
		}
	}
	if len(ids) != 3 {
		t.Errorf("ids %v: want three different", ids)
	}
	if infos[0].Sequence == 0 {
		t.Errorf("the active's sequence is 0: it wrote its takeover")
	}
	pings := gatherAnswers(t, nc, "$SRV.PING."+service.ServiceName, 300*time.Millisecond)
	if len(pings) != 1 {
		t.Errorf("micro ping: %d answers, want the active's alone: %q", len(pings), pings)
	}

	// Writes move the active's sequence; the standbys follow.
	before := infos[0].Sequence
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		if r := send(t, nc, subjects.OpTryLock, name, `{"lock_timeout_seconds":300}`, ""); !r.Locked {
			t.Fatalf("trylock %s: %+v", name, r)
		}
	}
	caughtUp := func(want int) func() bool {
		return func() bool {
			infos = instances(t, nc)
			if len(infos) != want || infos[0].Role != subjects.RoleActive {
				return false
			}
			for _, i := range infos[1:] {
				if i.Role != subjects.RoleStandby || i.Sequence != infos[0].Sequence {
					return false
				}
			}
			return true
		}
	}
	eventually(t, "the standbys applied what the active wrote", caughtUp(3))
	if infos[0].Sequence < before+5 {
		t.Errorf("the active's sequence %d after 5 writes, %d before", infos[0].Sequence, before)
	}

	// After a takeover, a standby answers as the active, with its id, and
	// the other follows it.
	standbyIDs := []string{infos[1].ID, infos[2].ID}
	active.Service.Stop()
	eventually(t, "a standby took over and the other follows it", caughtUp(2))
	if !slices.Contains(standbyIDs, infos[0].ID) || !slices.Contains(standbyIDs, infos[1].ID) || infos[0].MicroID == "" {
		t.Errorf("after the takeover: %+v; want the standbys %v, the active with a micro id", infos, standbyIDs)
	}
}

// In memory mode the one instance answers as the active, without a
// sequence.
func TestInstancesAnswerInMemoryMode(t *testing.T) {
	t.Parallel()
	srv := ldlmtest.Start(t)
	infos := instances(t, srv.Connect(t))
	if len(infos) != 1 {
		t.Fatalf("answers %+v: want one", infos)
	}
	if i := infos[0]; i.Role != subjects.RoleActive || i.State != service.StateMemory || i.Sequence != 0 || i.MicroID == "" || i.Instance != i.MicroID {
		t.Errorf("answer %+v: want the active, memory state, no sequence, its micro id as instance", i)
	}
}
