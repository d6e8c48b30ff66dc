package main

import (
	"net/url"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// TestE2EDataDirSurvivesKill9: `LDLM_DATA_DIR=dir ldlm`, killed with
// SIGKILL and started again on the same folder, still has the lock made
// with the nats CLI before (same key, token and expiry), and every new
// token is larger than the old one. Grants name the same instance.
func TestE2EDataDirSurvivesKill9(t *testing.T) {
	t.Parallel()
	env := []string{"LDLM_DATA_DIR=" + t.TempDir()}
	s := startLDLM(t, env)
	held := wantGrant(t, s.req(t, subject(subjects.OpTryLock, "durable"), `{"lock_timeout_seconds":600}`), "durable")
	s.kill()

	u, err := url.Parse(s.url)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	s2 := spawnLDLM(t, ldlmBinary(t), port, env, nil)
	t.Cleanup(func() {
		s2.stop(t)
		if t.Failed() {
			t.Logf("ldlm output after the restart:\n%s", s2.stderr)
		}
	})
	if err := s2.waitReady(); err != nil {
		t.Fatalf("ldlm did not start again on its data folder: %v", err)
	}
	wantBusy(t, s2.req(t, subject(subjects.OpTryLock, "durable"), ""), "durable")
	renewed := wantGrant(t, s2.req(t, subject(subjects.OpRenew, "durable"), renewBody(t, held.Key, 600)), "durable")
	// The same instance id: clients must not take the restart for a new
	// instance, whose start would end the locks of the old one.
	if renewed.Token != held.Token || renewed.Key != held.Key || renewed.Instance != held.Instance || !renewed.ExpiresAt.After(held.ExpiresAt.Add(-time.Second)) {
		t.Fatalf("renew after the restart: %+v; the grant before: %+v", renewed, held)
	}
	other := wantGrant(t, s2.req(t, subject(subjects.OpTryLock, "other"), ""), "other")
	if other.Token <= held.Token {
		t.Fatalf("token after the restart %d, not above %d given before", other.Token, held.Token)
	}
	wantUnlocked(t, s2.req(t, subject(subjects.OpUnlock, "durable"), unlockBody(t, held.Key)), "durable")
}

// TestE2EStandbyTakesOverAfterKill9: two `ldlm server` processes with
// LDLM_STATE=jetstream on one nats-server: the second waits as a standby,
// which `ldlm status` shows, up to date with the active; after kill -9 of
// the first it answers, with the lock made with the nats CLI before (same
// key, token and instance), `ldlm status` shows it as the active, and it
// stops cleanly.
func TestE2EStandbyTakesOverAfterKill9(t *testing.T) {
	t.Parallel()
	opts, pw := extUserOptions(t, false)
	opts.JetStream, opts.StoreDir = true, t.TempDir()
	ns := extStartNATS(t, opts)
	acc, err := ns.LookupAccount("APP")
	if err == nil {
		err = acc.EnableJetStream(nil, nil)
	}
	if err != nil {
		t.Fatalf("JetStream for APP: %v", err)
	}
	u, err := url.Parse(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("app", pw.app)
	env := []string{"LDLM_NATS_URL=" + ns.ClientURL(), "LDLM_NATS_USER=ldlm", "LDLM_NATS_PASSWORD=" + pw.service,
		"LDLM_SYSTEM_USER=ldlm-system", "LDLM_SYSTEM_PASSWORD=" + pw.system, "LDLM_STATE=jetstream", "LDLM_STATE_REPLICAS=1"}
	start := func() *ldlmServer {
		s := spawnLDLM(t, ldlmBinary(t), freePort(t), env, nil)
		s.url = u.String() // the clients' way in, with the app user
		t.Cleanup(func() {
			s.stop(t)
			if t.Failed() {
				t.Logf("ldlm output:\n%s", s.stderr)
			}
		})
		return s
	}
	active := start()
	if err := active.waitReady(); err != nil {
		t.Fatalf("the first instance did not start: %v", err)
	}
	standby := start()
	extWaitLog(t, standby.stderr, "standby: another instance is active")
	held := wantGrant(t, active.req(t, subject(subjects.OpTryLock, "durable"), `{"lock_timeout_seconds":600}`), "durable")
	before := waitStatus(t, active, "one active and one standby up to date", func(st statusJSON) bool {
		return len(st.Instances) == 2 && st.Instances[0].Role == subjects.RoleActive && st.Instances[1].Role == subjects.RoleStandby &&
			st.Instances[1].BehindRecords != nil && *st.Instances[1].BehindRecords == 0
	})
	code, out, stderr := active.cli(t, "status")
	if code != 0 || !regexp.MustCompile(`(?m)^instances: +1 active, 1 standby `).MatchString(out) ||
		!regexp.MustCompile(`(?m)^active +`+before.Instances[0].ID+` `).MatchString(out) ||
		!regexp.MustCompile(`(?m)^standby +`+before.Instances[1].ID+` .* (up to date|records? \(applied nothing for \S+\))$`).MatchString(out) {
		t.Errorf("ldlm status: exit %d, stderr %q, output:\n%s\nwant the active %s and the standby %s", code, stderr, out, before.Instances[0].ID, before.Instances[1].ID)
	}

	active.kill()
	extWaitLog(t, standby.stderr, "took over")
	waitStatus(t, standby, "the standby answers as the active, alone", func(st statusJSON) bool {
		return len(st.Instances) == 1 && st.Instances[0].Role == subjects.RoleActive && st.Instances[0].ID == before.Instances[1].ID &&
			st.Instances[0].Sequence > before.Instances[0].Sequence
	})
	wantBusy(t, standby.req(t, subject(subjects.OpTryLock, "durable"), ""), "durable")
	renewed := wantGrant(t, standby.req(t, subject(subjects.OpRenew, "durable"), renewBody(t, held.Key, 600)), "durable")
	if renewed.Token != held.Token || renewed.Instance != held.Instance {
		t.Fatalf("renew after the takeover: %+v; the grant before: %+v", renewed, held)
	}
}

// statusJSON is the output of `ldlm status --json`.
type statusJSON struct {
	subjects.StatusResponse
	Instances []instanceReport `json:"instances"`
}

// waitStatus runs `ldlm status --json` against s until cond holds for its
// output (an exit status other than 0 counts as not yet), for up to a
// minute, and returns the output that satisfied it.
func waitStatus(t *testing.T, s *ldlmServer, what string, cond func(statusJSON) bool) statusJSON {
	t.Helper()
	var last string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		code, out, stderr := s.cli(t, "status", "--json")
		last = out + stderr
		if code != 0 {
			continue
		}
		var st statusJSON
		strictJSON(t, out, &st)
		if cond(st) {
			return st
		}
	}
	t.Fatalf("ldlm status --json: timed out waiting until %s; last output:\n%s", what, last)
	return statusJSON{}
}
