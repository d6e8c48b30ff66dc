package main

import (
	"fmt"
	"io"
	"os"
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
