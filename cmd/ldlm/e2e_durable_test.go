package main

import (
	"context"
	"encoding/json"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// jetStreamNATS starts a nats-server with JetStream for the account APP.
// It returns the environment of an `ldlm server` with LDLM_STATE=jetstream
// on it, the URL of its clients (the app user), and that of the service's
// own user, who may write the state stream (as an intruder of a test).
func jetStreamNATS(t *testing.T) (env []string, clientURL, serviceURL string) {
	t.Helper()
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
	clientURL = u.String()
	u.User = url.UserPassword("ldlm", pw.service)
	env = []string{"LDLM_NATS_URL=" + ns.ClientURL(), "LDLM_NATS_USER=ldlm", "LDLM_NATS_PASSWORD=" + pw.service,
		"LDLM_SYSTEM_USER=ldlm-system", "LDLM_SYSTEM_PASSWORD=" + pw.system, "LDLM_STATE=jetstream", "LDLM_STATE_REPLICAS=1"}
	return env, clientURL, u.String()
}

// spawnJetStreamLDLM starts an `ldlm server` with env, whose clients use
// clientURL; it is stopped (exit status 0 wanted) when the test ends.
func spawnJetStreamLDLM(t *testing.T, env []string, clientURL string) *ldlmServer {
	t.Helper()
	s := spawnLDLM(t, ldlmBinary(t), freePort(t), env, nil)
	s.url = clientURL
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("ldlm output:\n%s", s.stderr)
		}
	})
	return s
}

// TestE2EStandbyTakesOverAfterKill9: two `ldlm server` processes with
// LDLM_STATE=jetstream on one nats-server: the second waits as a standby,
// which `ldlm status` shows, up to date with the active; after kill -9 of
// the first it answers, with the lock made with the nats CLI before (same
// key, token and instance), `ldlm status` shows it as the active, and it
// stops cleanly.
func TestE2EStandbyTakesOverAfterKill9(t *testing.T) {
	t.Parallel()
	env, clientURL, _ := jetStreamNATS(t)
	active := spawnJetStreamLDLM(t, env, clientURL)
	if err := active.waitReady(); err != nil {
		t.Fatalf("the first instance did not start: %v", err)
	}
	standby := spawnJetStreamLDLM(t, env, clientURL)
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

// TestE2EDeposedActiveStandsByAgain: an `ldlm server` whose write the state
// stream refuses (another writer moved it on) does not exit: it starts a
// new lock service in the same process, which loads the stream again and,
// since no instance answers, takes over. The lock held before keeps its
// key, token and instance; the change whose write was refused was never
// answered nor kept; the process stops cleanly at the end.
func TestE2EDeposedActiveStandsByAgain(t *testing.T) {
	t.Parallel()
	env, clientURL, serviceURL := jetStreamNATS(t)
	s := spawnJetStreamLDLM(t, env, clientURL)
	if err := s.waitReady(); err != nil {
		t.Fatalf("ldlm did not start: %v", err)
	}
	held := wantGrant(t, s.req(t, subject(subjects.OpTryLock, "durable"), `{"lock_timeout_seconds":600}`), "durable")

	// Another writer rewrites the active record, naming a connection of
	// its own: the active's next write expects a sequence the stream has
	// passed.
	intruder, err := nats.Connect(serviceURL)
	if err != nil {
		t.Fatal(err)
	}
	defer intruder.Close()
	js, err := jetstream.New(intruder)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), extWaitTimeout)
	defer cancel()
	stream, err := js.Stream(ctx, "LDLM_ldlm")
	if err != nil {
		t.Fatalf("the state stream: %v", err)
	}
	const activeSubject = "$LDLM.ldlm.state.active"
	last, err := stream.GetLastMsgForSubject(ctx, activeSubject)
	if err != nil {
		t.Fatalf("the active record: %v", err)
	}
	var record map[string]any
	if err := json.Unmarshal(last.Data, &record); err != nil {
		t.Fatalf("the active record %q: %v", last.Data, err)
	}
	record["server_id"], record["client_id"] = "INTRUDER", 1
	data, err := json.Marshal(record)
	if err != nil {
		t.Fatal(err)
	}
	// As a real takeover does, write it more times than the active may
	// have writes in flight: a write it sent after its first refused one
	// would otherwise find the sequence it expects, and be stored.
	for range 1 + 1024 {
		if _, err := js.PublishAsync(activeSubject, data); err != nil {
			t.Fatalf("writing the active record: %v", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatalf("writing the active record: %v", ctx.Err())
	}

	// A grant makes the active write: refused, so never answered.
	client, err := nats.Connect(clientURL)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if m, err := client.Request(subject(subjects.OpTryLock, "refused"), nil, 2*time.Second); err == nil {
		t.Fatalf("the deposed active answered a change it could not write: %s", m.Data)
	}
	extWaitLog(t, s.stderr, "no longer the active instance; standing by again")

	// The new service takes over (nobody else answers) and answers.
	deadline := time.Now().Add(extWaitTimeout)
	for {
		_, err := client.Request(subject(subjects.OpTryLock, "probe"), nil, 2*time.Second)
		if err == nil {
			break
		}
		select {
		case <-s.exited:
			t.Fatalf("ldlm exited after it was deposed: %v", s.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ldlm did not answer again within %s of being deposed: %v", extWaitTimeout, err)
		}
		time.Sleep(extPoll)
	}
	if n := strings.Count(s.stderr.String(), "lock service ready"); n != 2 {
		t.Errorf("the log says %d times that the lock service is ready; want 2 (at start, and after it was deposed)", n)
	}
	wantBusy(t, s.req(t, subject(subjects.OpTryLock, "durable"), ""), "durable")
	renewed := wantGrant(t, s.req(t, subject(subjects.OpRenew, "durable"), renewBody(t, held.Key, 600)), "durable")
	if renewed.Token != held.Token || renewed.Key != held.Key || renewed.Instance != held.Instance {
		t.Fatalf("renew after standing by again: %+v; the grant before: %+v", renewed, held)
	}
	wantGrant(t, s.req(t, subject(subjects.OpTryLock, "refused"), ""), "refused")
	select {
	case <-s.exited:
		t.Fatalf("ldlm exited: %v", s.err)
	default:
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
