package main

// End-to-end tests: the real ldlm binary, built once per test run, driven
// with the real nats CLI (github.com/nats-io/natscli, v0.5.0) and, where a
// test needs a connection it controls, with nats.go. This file holds the
// harness; e2e_locks_test.go and e2e_process_test.go hold the tests.
//
// Every wait is bounded by a deadline and polls for its condition, so the
// suite holds on a loaded 2-core machine under -race.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// helperEnv, when set, makes the test binary a helper process (see
// TestHelperHolder) rather than a test run.
const helperEnv = "LDLM_E2E_HELPER"

// Bounds of the harness's waits. They are generous: they only turn a hang
// into a failure, they do not measure anything.
const (
	startTimeout = 45 * time.Second // binary start until the service answers
	stopTimeout  = 20 * time.Second // SIGTERM until the process exited
	cliTimeout   = 90 * time.Second // one nats CLI run
)

// raceEnabled is set by e2e_race_test.go when the tests run with -race; the
// binary is then built with -race too, so that a data race in the server
// makes it exit with status 66 and the test that stops it fails.
var raceEnabled bool

// e2eDir holds the built binary and the nats CLI's home for this run.
var e2eDir string

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		// A helper process: run the helper test only, build nothing.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "ldlm-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temporary directory:", err)
		os.Exit(1)
	}
	e2eDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	ldlmPath  string
	buildErr  error
)

// ldlmBinary builds the binary from this package once and returns its path.
func ldlmBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		path := filepath.Join(e2eDir, "ldlm")
		// -buildvcs=auto overrides a GOFLAGS=-buildvcs=false of the
		// environment: CI builds in a git checkout with VCS stamping, and the
		// binary must work with the version that stamping gives it.
		args := []string{"build", "-buildvcs=auto", "-o", path}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, ".")
		cmd := exec.Command("go", args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		ldlmPath = path
	})
	if buildErr != nil {
		t.Fatalf("building the ldlm binary: %v", buildErr)
	}
	return ldlmPath
}

var (
	natsOnce sync.Once
	natsPath string
)

// natsCLI returns the path of the nats CLI. The e2e tests need it: they
// fail, rather than skip, without it.
func natsCLI(t testing.TB) string {
	t.Helper()
	natsOnce.Do(func() {
		if p, err := exec.LookPath("nats"); err == nil {
			natsPath = p
			return
		}
		out, err := exec.Command("go", "env", "GOPATH").Output()
		if err != nil {
			return
		}
		for _, gopath := range filepath.SplitList(strings.TrimSpace(string(out))) {
			p := filepath.Join(gopath, "bin", "nats")
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
				natsPath = p
				return
			}
		}
	})
	if natsPath == "" {
		t.Fatal("the nats CLI is not on PATH nor in $(go env GOPATH)/bin; the end-to-end tests need it: " +
			"go install github.com/nats-io/natscli/nats@v0.5.0")
	}
	return natsPath
}

// cleanEnv is the test's environment without LDLM_* and NATS_* variables,
// so that a developer's settings do not leak into the processes under test.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LDLM_") || strings.HasPrefix(kv, "NATS_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// cliEnv is the nats CLI's environment: a home of its own, so that no
// selected nats context (with its credentials) of the user applies.
func cliEnv() []string {
	home := filepath.Join(e2eDir, "home")
	return cleanEnv("HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))
}

// ldlmServer is a running ldlm process in embedded mode.
type ldlmServer struct {
	url    string
	opts   []nats.Option // how test clients log in; none: anonymous
	cmd    *exec.Cmd
	stderr *ldlmtest.SyncBuffer
	exited chan struct{} // closed when the process has exited
	err    error         // cmd.Wait's result, set before exited is closed
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// startLDLM starts `ldlm` (embedded NATS on a free loopback port) with the
// extra environment and arguments, waits until its lock service answers, and
// stops it with SIGTERM when the test ends, failing the test unless it then
// exits 0 (which a data race report would prevent). Its stderr goes to the
// test log when the test failed.
func startLDLM(t testing.TB, env []string, args ...string) *ldlmServer {
	t.Helper()
	return startLDLMWith(t, env, nil, args...)
}

// startLDLMWith is startLDLM for a server whose clients must log in with
// opts (credentials, TLS settings).
func startLDLMWith(t testing.TB, env []string, opts []nats.Option, args ...string) *ldlmServer {
	t.Helper()
	bin := ldlmBinary(t)
	// Another process may take the free port between our check and the
	// server's listen: try again on another port then.
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		s := spawnLDLM(t, bin, port, env, opts, args...)
		err := s.waitReady()
		if err == nil {
			t.Cleanup(func() {
				s.stop(t)
				if t.Failed() {
					t.Logf("ldlm output (%s):\n%s", s.url, s.stderr)
				}
			})
			return s
		}
		s.kill()
		if attempt < 3 && strings.Contains(s.stderr.String(), "address already in use") {
			t.Logf("port %d was taken meanwhile; trying another", port)
			continue
		}
		t.Fatalf("ldlm did not start: %v\nldlm output:\n%s", err, s.stderr)
	}
}

// spawnLDLM starts the binary bin with its embedded server on the loopback
// port, and returns at once: the caller waits for it and stops it.
func spawnLDLM(t testing.TB, bin string, port int, env []string, opts []nats.Option, args ...string) *ldlmServer {
	t.Helper()
	s := &ldlmServer{url: fmt.Sprintf("nats://127.0.0.1:%d", port), opts: opts, stderr: &ldlmtest.SyncBuffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Env = cleanEnv(append([]string{
		fmt.Sprintf("LDLM_EMBEDDED_LISTEN=127.0.0.1:%d", port),
		"LDLM_LOG_LEVEL=debug",
	}, env...)...)
	s.cmd.Stdout = s.stderr
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	return s
}

// waitReady polls until the micro service lists the four lock endpoints
// (micro subscribes an endpoint before it lists it).
func (s *ldlmServer) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	var nc *nats.Conn
	defer func() {
		if nc != nil {
			nc.Close()
		}
	}()
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("ldlm exited during start: %v", s.err)
		default:
		}
		if nc == nil {
			c, err := nats.Connect(s.url, append([]nats.Option{nats.Timeout(2 * time.Second), nats.NoReconnect()}, s.opts...)...)
			if err != nil {
				last = err
				time.Sleep(25 * time.Millisecond)
				continue
			}
			nc = c
		}
		msg, err := nc.Request("$SRV.INFO."+"ldlm", nil, 2*time.Second)
		if err == nil {
			var info micro.Info
			if err = json.Unmarshal(msg.Data, &info); err == nil {
				var names []string
				for _, ep := range info.Endpoints {
					names = append(names, ep.Name)
				}
				if slices.Contains(names, service.RequestsEndpoint) {
					return nil
				}
				err = fmt.Errorf("endpoints so far: %v", names)
			}
		}
		last = err
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("no answer within %s: %v", startTimeout, last)
}

// signal sends sig and waits, up to stopTimeout, for the process to exit.
// It returns the exit code and how long the exit took.
func (s *ldlmServer) signal(t testing.TB, sig os.Signal) (code int, took time.Duration) {
	t.Helper()
	start := time.Now()
	if err := s.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("sending %v to ldlm: %v", sig, err)
	}
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		s.kill()
		t.Errorf("ldlm did not exit within %s of %v; killed it", stopTimeout, sig)
		return -1, time.Since(start)
	}
	return s.cmd.ProcessState.ExitCode(), time.Since(start)
}

// stop is the cleanup: SIGTERM, and the exit status must be 0.
func (s *ldlmServer) stop(t testing.TB) {
	select {
	case <-s.exited:
		// A test stopped it already and checked the status.
		return
	default:
	}
	if code, _ := s.signal(t, syscall.SIGTERM); code != 0 {
		t.Errorf("ldlm exited with status %d after SIGTERM (66 means the race detector reported a data race); output:\n%s", code, s.stderr)
	}
}

func (s *ldlmServer) kill() {
	_ = s.cmd.Process.Kill()
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
	}
}

// connect opens a nats.go connection, closed when the test ends.
func (s *ldlmServer) connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.url, append([]nats.Option{nats.Timeout(5 * time.Second)}, s.opts...)...)
	if err != nil {
		t.Fatalf("connecting to %s: %v", s.url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// cliResult is what one run of the nats CLI printed.
type cliResult struct {
	args   []string
	stdout string
	stderr string
	// code and message are the Nats-Service-Error-Code and
	// Nats-Service-Error headers of the reply as the CLI showed them; empty
	// when the reply had none.
	code    subjects.ErrorCode
	message string
}

var (
	codeHeaderRE    = regexp.MustCompile(`(?m)\b` + subjects.HeaderErrorCode + `: (.*?)\s*$`)
	messageHeaderRE = regexp.MustCompile(`(?m)\b` + subjects.HeaderError + `: (.*?)\s*$`)
)

// runNats runs the nats CLI against the server. It is safe in any
// goroutine: it reports failures as an error.
func (s *ldlmServer) runNats(args ...string) (cliResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	full := append([]string{"--server", s.url}, args...)
	cmd := exec.CommandContext(ctx, natsPath, full...)
	cmd.Env = cliEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	if m := codeHeaderRE.FindStringSubmatch(r.stderr); m != nil {
		r.code = subjects.ErrorCode(m[1])
	}
	if m := messageHeaderRE.FindStringSubmatch(r.stderr); m != nil {
		r.message = m[1]
	}
	if err != nil {
		return r, fmt.Errorf("nats %s: %v\nstdout: %s\nstderr: %s", quoteArgs(args), err, r.stdout, r.stderr)
	}
	return r, nil
}

// nats runs the nats CLI and fails the test if it fails.
func (s *ldlmServer) nats(t testing.TB, args ...string) cliResult {
	t.Helper()
	natsCLI(t)
	r, err := s.runNats(args...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// reqArgs are the arguments of `nats req` with headers "Key:Value".
func reqArgs(subject, body string, headers ...string) []string {
	args := []string{"req", "--timeout", "60s"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	return append(args, subject, body)
}

// req sends one request with `nats req` and returns what the CLI printed.
func (s *ldlmServer) req(t testing.TB, subject, body string, headers ...string) cliResult {
	t.Helper()
	return s.nats(t, reqArgs(subject, body, headers...)...)
}

func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if len(a) > 80 {
			a = a[:80] + "..."
		}
		q[i] = fmt.Sprintf("%q", a)
	}
	return strings.Join(q, " ")
}

// decodeStrict decodes the one JSON value the CLI printed into v, refusing
// unknown fields, so that a reply that drifts from the wire contract fails.
func decodeStrict(t testing.TB, r cliResult, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("nats %s: reply is not a %T: %v\nstdout: %s\nstderr: %s", quoteArgs(r.args), v, err, r.stdout, r.stderr)
	}
	if rest, _ := io.ReadAll(dec.Buffered()); strings.TrimSpace(string(rest)) != "" {
		t.Fatalf("nats %s: data after the reply: %q", quoteArgs(r.args), rest)
	}
}

// checkHeaders: the error headers match the body's error, and a reply
// without error has none.
func checkHeaders(t testing.TB, r cliResult, e *subjects.Error) {
	t.Helper()
	switch {
	case e == nil && r.code != "":
		t.Errorf("nats %s: reply has no error but header %s: %s", quoteArgs(r.args), subjects.HeaderErrorCode, r.code)
	case e != nil && r.code != e.Code:
		t.Errorf("nats %s: header %s is %q, the body's error code %q\nstderr: %s", quoteArgs(r.args), subjects.HeaderErrorCode, r.code, e.Code, r.stderr)
	case e != nil && (e.Message == "" || r.message == ""):
		t.Errorf("nats %s: error %s without a message (body %q, header %q)", quoteArgs(r.args), e.Code, e.Message, r.message)
	}
}

// lockReply decodes the reply to lock, trylock or renew.
func lockReply(t testing.TB, r cliResult) subjects.LockResponse {
	t.Helper()
	var resp subjects.LockResponse
	decodeStrict(t, r, &resp)
	checkHeaders(t, r, resp.Error)
	return resp
}

// unlockReply decodes the reply to unlock.
func unlockReply(t testing.TB, r cliResult) subjects.UnlockResponse {
	t.Helper()
	var resp subjects.UnlockResponse
	decodeStrict(t, r, &resp)
	checkHeaders(t, r, resp.Error)
	return resp
}

// wantGrant checks a reply that grants lock name.
func wantGrant(t testing.TB, r cliResult, name string) subjects.LockResponse {
	t.Helper()
	resp := lockReply(t, r)
	if !resp.Locked || resp.Error != nil || resp.Name != name || resp.Key == "" || resp.Token == 0 || resp.Size < 1 {
		t.Fatalf("nats %s: want a grant of %q, got %+v (error %v)", quoteArgs(r.args), name, resp, resp.Error)
	}
	return resp
}

// wantBusy checks a trylock reply that found every slot taken: no error.
func wantBusy(t testing.TB, r cliResult, name string) {
	t.Helper()
	resp := lockReply(t, r)
	if resp.Locked || resp.Error != nil || resp.Name != name || resp.Key != "" || resp.Token != 0 || !resp.ExpiresAt.IsZero() {
		t.Fatalf("nats %s: want {locked:false, name:%q} without error, got %+v (error %v)", quoteArgs(r.args), name, resp, resp.Error)
	}
}

// wantLockError checks a failed lock, trylock or renew reply.
func wantLockError(t testing.TB, r cliResult, name string, code subjects.ErrorCode) subjects.LockResponse {
	t.Helper()
	resp := lockReply(t, r)
	if resp.Locked || resp.Error == nil || resp.Error.Code != code || resp.Name != name || resp.Key != "" || resp.Token != 0 {
		t.Fatalf("nats %s: want error %s for %q, got %+v (error %v)", quoteArgs(r.args), code, name, resp, resp.Error)
	}
	return resp
}

// wantUnlocked checks a successful unlock reply.
func wantUnlocked(t testing.TB, r cliResult, name string) {
	t.Helper()
	resp := unlockReply(t, r)
	if !resp.Unlocked || resp.Error != nil || resp.Name != name {
		t.Fatalf("nats %s: want {unlocked:true, name:%q}, got %+v (error %v)", quoteArgs(r.args), name, resp, resp.Error)
	}
}

// wantUnlockError checks a failed unlock reply.
func wantUnlockError(t testing.TB, r cliResult, name string, code subjects.ErrorCode) {
	t.Helper()
	resp := unlockReply(t, r)
	if resp.Unlocked || resp.Error == nil || resp.Error.Code != code || resp.Name != name {
		t.Fatalf("nats %s: want error %s for %q, got %+v (error %v)", quoteArgs(r.args), code, name, resp, resp.Error)
	}
}

// subject is the default-prefix subject of op on the lock called name.
func subject(op, name string) string { return subjects.Subject(subjects.DefaultPrefix, op, name) }

// jsonBody marshals a request body.
func jsonBody(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// unlockBody is the body of an unlock with key.
func unlockBody(t testing.TB, key string) string { return jsonBody(t, map[string]any{"key": key}) }

// renewBody is the body of a renew with key and a new lock timeout.
func renewBody(t testing.TB, key string, seconds float64) string {
	return jsonBody(t, map[string]any{"key": key, "lock_timeout_seconds": seconds})
}

// waitParked polls, over nc, until key waits for lock name: a renew with a
// waiting key is refused with NotLocked ("the key is still waiting"), while
// a key the service does not know yet gets InvalidLockKey or
// LockDoesNotExist. The probe changes nothing.
func waitParked(t testing.TB, nc *nats.Conn, name, key string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	body := []byte(renewBody(t, key, 1))
	var last string
	for time.Now().Before(deadline) {
		msg, err := nc.Request(subject(subjects.OpRenew, name), body, 5*time.Second)
		if err == nil {
			var resp subjects.LockResponse
			if err = json.Unmarshal(msg.Data, &resp); err == nil {
				if resp.Error != nil && resp.Error.Code == subjects.CodeNotLocked {
					return
				}
				if resp.Locked {
					t.Fatalf("waitParked: the key %q holds %q: it was granted, not parked", key, name)
				}
				last = string(msg.Data)
			}
		}
		if err != nil {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("key %q did not park on lock %q within 30s; last probe: %s", key, name, last)
}

// newKey returns a client-chosen key of 130 random bits.
func newKey() string { return rand.Text() }

// expiresAround checks that resp expires about d after the request was sent
// at sent (replied by done), with generous slack for a loaded machine.
func expiresAround(t testing.TB, resp subjects.LockResponse, sent, done time.Time, d time.Duration) {
	t.Helper()
	const slack = 5 * time.Second
	if resp.ExpiresAt.IsZero() {
		t.Fatalf("%q: want expires_at about %s ahead, got none", resp.Name, d)
	}
	lo, hi := sent.Add(d-slack), done.Add(d+slack)
	if resp.ExpiresAt.Before(lo) || resp.ExpiresAt.After(hi) {
		t.Fatalf("%q: expires_at %s is not about %s after the request (want between %s and %s)",
			resp.Name, resp.ExpiresAt.Format(time.RFC3339Nano), d, lo.Format(time.RFC3339Nano), hi.Format(time.RFC3339Nano))
	}
}
