package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// TestEmbeddedClusterMembers: two ldlm binaries whose embedded NATS
// servers form one cluster (LDLM_EMBEDDED_CLUSTER_*) carry each other's
// requests: a client of one member locks through the lock service of the
// other (on a prefix of its own, since two services on one prefix refuse
// each other).
func TestEmbeddedClusterMembers(t *testing.T) {
	t.Parallel()
	portA, portB := freePort(t), freePort(t)
	routes := fmt.Sprintf("LDLM_EMBEDDED_CLUSTER_ROUTES=nats-route://127.0.0.1:%d,nats-route://127.0.0.1:%d", portA, portB)
	a := startLDLM(t, []string{"LDLM_SUBJECT_PREFIX=a", "LDLM_EMBEDDED_SERVER_NAME=member-a",
		fmt.Sprintf("LDLM_EMBEDDED_CLUSTER_LISTEN=127.0.0.1:%d", portA), routes})
	b := startLDLM(t, []string{"LDLM_SUBJECT_PREFIX=b", "LDLM_EMBEDDED_SERVER_NAME=member-b",
		fmt.Sprintf("LDLM_EMBEDDED_CLUSTER_LISTEN=127.0.0.1:%d", portB), routes})

	for _, tc := range []struct {
		via    *ldlmServer
		prefix string
	}{{b, "a"}, {a, "b"}} {
		nc := tc.via.connect(t)
		subject := subjects.Subject(tc.prefix, subjects.OpTryLock, "clustered")
		deadline := time.Now().Add(30 * time.Second) // the routes form, then interest spreads
		for {
			msg, err := nc.Request(subject, []byte(`{}`), 2*time.Second)
			var resp subjects.LockResponse
			if err == nil {
				if err = subjects.DecodeLockResponse(msg.Data, &resp); err == nil && !resp.Locked {
					err = fmt.Errorf("not locked: %s", msg.Data)
				}
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s through the other member: %v", subject, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestClusterMemberNamedAfterHost: a cluster member without a server name
// of its own takes the host name, since the members' names must differ.
func TestClusterMemberNamedAfterHost(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip("no host name:", err)
	}
	cfg, err := parseServerConfigFrom([]string{"LDLM_EMBEDDED_CLUSTER_LISTEN=127.0.0.1:6222"}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.EmbeddedServerName != host {
		t.Errorf("server name %q, want the host name %q", cfg.EmbeddedServerName, host)
	}
	cfg, err = parseServerConfigFrom([]string{"LDLM_EMBEDDED_CLUSTER_LISTEN=127.0.0.1:6222", "LDLM_EMBEDDED_SERVER_NAME=n1"}, nil, io.Discard)
	if err != nil || cfg.EmbeddedServerName != "n1" {
		t.Errorf("server name %q (%v), want n1 as given", cfg.EmbeddedServerName, err)
	}
}

// TestE2EEmbeddedClusterKeepsLocks: three ldlm binaries, each with its
// embedded NATS server and a data folder, form one NATS cluster with
// JetStream and one lock service: one active, two standbys. A lock made
// with the nats CLI through one member outlives kill -9 of the active: a
// standby takes over and answers, through any surviving member, with the
// same key and token. No member exits by itself meanwhile (of two standbys
// that take over at once, the one the stream refuses stands by again in
// its process, keeping its NATS server in the quorum). The killed member,
// started again on its folder as deploy/cluster.yml's restart policy does,
// stands by.
func TestE2EEmbeddedClusterKeepsLocks(t *testing.T) {
	t.Parallel()
	natsCLI(t)
	var routes []string
	var clusterPorts []int
	for range 3 {
		p := freePort(t)
		clusterPorts = append(clusterPorts, p)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	members := make([]*ldlmServer, 3)
	envs, ports := make([][]string, 3), make([]int, 3)
	// start runs member i, again with the same folder and ports after the
	// test killed it.
	start := func(i int) {
		s := spawnLDLM(t, ldlmBinary(t), ports[i], envs[i], nil)
		t.Cleanup(func() {
			s.kill()
			if t.Failed() {
				t.Logf("member %d output:\n%s", i, s.stderr)
			}
		})
		members[i] = s
	}
	for i := range 3 {
		envs[i] = []string{fmt.Sprintf("LDLM_EMBEDDED_SERVER_NAME=m%d", i), "LDLM_DATA_DIR=" + t.TempDir(),
			fmt.Sprintf("LDLM_EMBEDDED_CLUSTER_LISTEN=127.0.0.1:%d", clusterPorts[i]),
			"LDLM_EMBEDDED_CLUSTER_ROUTES=" + strings.Join(routes, ",")}
		ports[i] = freePort(t)
		start(i)
	}
	for i, s := range members {
		if err := s.waitReady(); err != nil {
			t.Fatalf("member %d did not start: %v", i, err)
		}
	}
	// A member's client port opens before its lock service runs (a
	// cluster member's port cannot wait): wait until each has a role.
	active := -1
	for deadline := time.Now().Add(startTimeout); ; {
		var roles []string
		for _, s := range members {
			roles = append(roles, memberRole(s.stderr.String()))
		}
		if !slices.Contains(roles, "") && strings.Count(strings.Join(roles, " "), "active") == 1 {
			active = slices.Index(roles, "active")
		}
		if active >= 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the members' roles after %s: %q; want one active, the others standbys", startTimeout, roles)
		}
		time.Sleep(100 * time.Millisecond)
	}
	held := wantGrant(t, members[2].req(t, subject(subjects.OpTryLock, "clustered"), `{"lock_timeout_seconds":600}`), "clustered")
	// noneExited fails the test if a member that the test did not kill
	// exited.
	killed := members[active]
	noneExited := func() {
		t.Helper()
		for i, m := range members {
			select {
			case <-m.exited:
				if m != killed {
					t.Fatalf("member %d exited by itself (%v)", i, m.err)
				}
			default:
			}
		}
	}
	killed.kill()
	killedAt := time.Now()
	other := (active + 1) % 3

	// Until a standby took over, a request may find no responders (the
	// nats CLI then fails, or prints no reply).
	deadline := time.Now().Add(startTimeout)
	var renewed subjects.LockResponse
	for {
		noneExited()
		// A short timeout: a request that reached an instance deposed
		// meanwhile is never answered.
		r, err := members[other].runNats("req", "--timeout", "5s", subject(subjects.OpRenew, "clustered"), renewBody(t, held.Key, 600))
		if err == nil {
			err = subjects.DecodeLockResponse([]byte(r.stdout), &renewed)
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no member answered after kill -9 of the active (member %d): %v (stdout %q, stderr %q)", active, err, r.stdout, r.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("a standby answered %v after kill -9 of the active member", time.Since(killedAt).Round(time.Millisecond))
	if !renewed.Locked || renewed.Token != held.Token {
		t.Fatalf("renew after the takeover: %+v; the grant before: %+v", renewed, held)
	}
	wantBusy(t, members[other].req(t, subject(subjects.OpTryLock, "clustered"), ""), "clustered")

	start(active)
	deadline = time.Now().Add(startTimeout)
	for !strings.Contains(members[active].stderr.String(), "standby: another instance is active") {
		select {
		case <-members[active].exited:
			t.Fatalf("the killed member, started again, exited: %v", members[active].err)
		default:
		}
		noneExited()
		if time.Now().After(deadline) {
			t.Fatalf("the killed member, started again, did not stand by within %s", startTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	noneExited()
	for i, m := range members {
		if n := strings.Count(m.stderr.String(), "no longer the active instance; standing by again"); n > 0 {
			t.Logf("member %d was deposed %d times and stood by again", i, n)
		}
	}
}

// memberRole is what a member's log says its lock service is now: "active",
// "standby", or "" before either.
func memberRole(log string) string {
	last, role := -1, ""
	for marker, r := range map[string]string{
		"lock service ready":                               "active",
		"took over: this instance is the active now":       "active",
		"standby: another instance is active":              "standby",
		"no longer the active instance; standing by again": "standby",
	} {
		if i := strings.LastIndex(log, marker); i > last {
			last, role = i, r
		}
	}
	return role
}
