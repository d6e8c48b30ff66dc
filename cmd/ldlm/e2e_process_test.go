package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// runLDLM runs the binary to completion (bounded) and returns its exit code
// and output. The embedded server, should it start by mistake, listens on a
// random port and is killed at the deadline.
func runLDLM(t testing.TB, env []string, args ...string) (code int, stdout, stderr string, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ldlmBinary(t), args...)
	cmd.Env = cleanEnv(append([]string{"LDLM_EMBEDDED_LISTEN=127.0.0.1:0"}, env...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("ldlm %q (env %q) still ran after 30s; output:\n%s%s", args, env, out.String(), errb.String())
	}
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("running ldlm %q: %v", args, err)
		}
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String(), took
}

// TestE2EConfigErrors: a bad setting, as flag or LDLM_* variable, stops
// ldlm at once with exit status 2 and one line on stderr that says what is
// wrong.
func TestE2EConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		desc string
		env  []string
		args []string
		want string // in the one line
	}{
		{"unknown flag", nil, []string{"server", "--bogus-flag"}, "bogus-flag"},
		{"unknown flag without the server command", nil, []string{"--bogus-flag"}, "bogus-flag"},
		{"log level from env", []string{"LDLM_LOG_LEVEL=loud"}, nil, `"loud"`},
		{"log level from flag", nil, []string{"server", "--log-level", "loud"}, `"loud"`},
		{"duration from env", []string{"LDLM_SWEEP_INTERVAL=notaduration"}, nil, "notaduration"},
		{"duration from flag", nil, []string{"--sweep-interval=notaduration"}, "notaduration"},
		{"sweep interval 0", []string{"LDLM_SWEEP_INTERVAL=0s"}, nil, "LDLM_SWEEP_INTERVAL (--sweep-interval)"},
		{"integer from env", []string{"LDLM_MAX_NAME_LENGTH=many"}, nil, "many"},
		{"max name length 0", nil, []string{"--max-name-length=0"}, "LDLM_MAX_NAME_LENGTH (--max-name-length)"},
		{"anonymous lock timeout negative", []string{"LDLM_ANONYMOUS_LOCK_TIMEOUT=-1s"}, nil, "LDLM_ANONYMOUS_LOCK_TIMEOUT (--anonymous-lock-timeout)"},
		{"bool from env", []string{"LDLM_NO_CLEAR_ON_DISCONNECT=maybe"}, nil, "maybe"},
		{"log format", []string{"LDLM_LOG_FORMAT=xml"}, nil, `"xml"`},
		{"subject prefix with a space", []string{"LDLM_SUBJECT_PREFIX=my locks"}, nil, "prefix"},
		{"subject prefix with a wildcard", nil, []string{"--subject-prefix=ldlm.*"}, "prefix"},
		{"credentials without NATS URL", []string{"LDLM_NATS_USER=me"}, nil, "LDLM_NATS_URL"},
		{"unexpected argument", nil, []string{"server", "extra"}, `"extra"`},
		{"setting of the original LDLM", []string{"LDLM_TLS_CERT=cert.pem"}, nil, "LDLM_EMBEDDED_TLS_CERT (--embedded-tls-cert)"},
		{"unknown variable", []string{"LDLM_MAX_LOKS=5"}, nil, "LDLM_MAX_LOKS"},
		{"embedded password without user", []string{"LDLM_EMBEDDED_PASSWORD=x"}, nil, "LDLM_EMBEDDED_USER (--embedded-user)"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr, took := runLDLM(t, tc.env, tc.args...)
			if code != exitUsage {
				t.Errorf("exit status %d, want %d", code, exitUsage)
			}
			if stdout != "" {
				t.Errorf("stdout: %q, want nothing", stdout)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "ldlm: ") || !strings.Contains(lines[0], tc.want) {
				t.Errorf("stderr: want one line starting with \"ldlm: \" that mentions %s, got %d lines:\n%s", tc.want, len(lines), stderr)
			}
			t.Logf("%s (after %s)", strings.TrimSpace(stderr), took.Round(time.Millisecond))
		})
	}
}

// TestE2ECommands: the commands besides server.
func TestE2ECommands(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args       []string
		code       int
		wantStdout string // prefix of stdout
		wantStderr string // prefix of stderr
	}{
		{[]string{"version"}, 0, "ldlm ", ""},
		{[]string{"help"}, 0, "Usage:", ""},
		{[]string{"bogus"}, exitUsage, "", `ldlm: unknown command "bogus"`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr, _ := runLDLM(t, nil, tc.args...)
			if code != tc.code || !strings.HasPrefix(stdout, tc.wantStdout) || !strings.HasPrefix(stderr, tc.wantStderr) ||
				(tc.wantStdout == "") != (stdout == "") || (tc.wantStderr == "") != (stderr == "") {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, stdout starting %q, stderr starting %q",
					code, stdout, stderr, tc.code, tc.wantStdout, tc.wantStderr)
			}
		})
	}
}

// envVarsOf lists the LDLM_* variables of a config struct from its env and
// envPrefix tags, as github.com/caarlos0/env reads them.
func envVarsOf(typ reflect.Type, prefix string) []string {
	var vars []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		if tag, ok := f.Tag.Lookup("env"); ok {
			vars = append(vars, prefix+strings.Split(tag, ",")[0])
		} else if p, ok := f.Tag.Lookup("envPrefix"); ok {
			vars = append(vars, envVarsOf(f.Type, prefix+p)...)
		}
	}
	return vars
}

var (
	helpFlagRE = regexp.MustCompile(`^  --([a-z0-9-]+)`)
	helpEnvRE  = regexp.MustCompile(`\(env (LDLM_[A-Z0-9_]+)[,)]`)
)

// TestE2EServerHelp: `ldlm server --help` exits 0 and lists every flag with
// its LDLM_* variable, named alike (--embedded-listen and
// LDLM_EMBEDDED_LISTEN), and every variable the server reads has a flag.
func TestE2EServerHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"server", "--help"}, {"server", "-h"}, {"--help"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr, _ := runLDLM(t, nil, args...)
			if code != 0 {
				t.Fatalf("exit status %d, want 0; stderr:\n%s", code, stderr)
			}
			help := stdout
			flags := map[string]string{}
			var current string
			for _, line := range strings.Split(help, "\n") {
				if m := helpFlagRE.FindStringSubmatch(line); m != nil {
					current = m[1]
					flags[current] = ""
				} else if current != "" && strings.HasPrefix(line, "    ") {
					flags[current] += line
				}
			}
			if len(flags) == 0 {
				t.Fatalf("no flags in the help:\n%s", help)
			}
			var listed []string
			for flag, desc := range flags {
				envs := helpEnvRE.FindAllStringSubmatch(desc, -1)
				if len(envs) != 1 {
					t.Errorf("flag -%s names %d LDLM_* variables, want 1: %s", flag, len(envs), strings.TrimSpace(desc))
					continue
				}
				env := envs[0][1]
				listed = append(listed, env)
				if want := "LDLM_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_")); env != want {
					t.Errorf("flag -%s is listed with %s; by the naming rule it would be %s", flag, env, want)
				}
			}
			want := envVarsOf(reflect.TypeFor[serverConfig](), "")
			slices.Sort(listed)
			slices.Sort(want)
			if !slices.Equal(listed, want) {
				t.Errorf("the help lists the variables\n%v\nthe server reads\n%v", listed, want)
			}
		})
	}
}

// TestE2EPortInUse: when the embedded server's port is taken, ldlm exits
// non-zero at once and says why.
func TestE2EPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	code, stdout, stderr, took := runLDLM(t, []string{"LDLM_EMBEDDED_LISTEN=" + l.Addr().String()})
	if code == 0 {
		t.Errorf("exit status 0 with the port taken")
	}
	out := stdout + stderr
	for _, want := range []string{l.Addr().String(), "address already in use", "LDLM_EMBEDDED_LISTEN"} {
		if !strings.Contains(out, want) {
			t.Errorf("output does not mention %q:\n%s", want, out)
		}
	}
	if took > 10*time.Second {
		t.Errorf("took %s to give up", took)
	}
	t.Logf("exit %d after %s: %s", code, took.Round(time.Millisecond), strings.TrimSpace(out))
}

// TestE2ESettings: settings reach the service, from flags and from LDLM_*
// variables, and a flag wins over its variable.
func TestE2ESettings(t *testing.T) {
	t.Parallel()
	natsCLI(t)

	t.Run("prefix, name length and anonymous timeout", func(t *testing.T) {
		t.Parallel()
		s := startLDLM(t, []string{"LDLM_ANONYMOUS_LOCK_TIMEOUT=100s", "LDLM_MAX_NAME_LENGTH=8"},
			"server", "--subject-prefix=locks", "--anonymous-lock-timeout=5s")
		sent := time.Now()
		g := wantGrant(t, s.req(t, "locks.trylock.job", ""), "job")
		expiresAround(t, g, sent, time.Now(), 5*time.Second) // the flag's 5s, not the variable's 100s
		wantUnlocked(t, s.req(t, "locks.unlock.job", unlockBody(t, g.Key)), "job")

		g = wantGrant(t, s.req(t, "locks.trylock.12345678", ""), "12345678")
		wantUnlocked(t, s.req(t, "locks.unlock.12345678", unlockBody(t, g.Key)), "12345678")
		wantLockError(t, s.req(t, "locks.trylock.123456789", ""), "", subjects.CodeInvalidLockName)

		r := s.req(t, "ldlm.trylock.job", "")
		if strings.TrimSpace(r.stdout) != "" || !strings.Contains(r.stderr, "No responders") {
			t.Errorf("the default prefix still answers with --subject-prefix=locks:\nstdout: %s\nstderr: %s", r.stdout, r.stderr)
		}
		info := s.nats(t, "micro", "info", "ldlm")
		if !strings.Contains(info.stdout, "locks.>") || !strings.Contains(info.stdout, "prefix: locks") {
			t.Errorf("nats micro info ldlm does not show the prefix locks:\n%s", info.stdout)
		}
	})

	t.Run("no clear on disconnect bounds every lock", func(t *testing.T) {
		t.Parallel()
		s := startLDLM(t, []string{"LDLM_NO_CLEAR_ON_DISCONNECT=true", "LDLM_ANONYMOUS_LOCK_TIMEOUT=30s"})
		sent := time.Now()
		g := wantGrant(t, s.req(t, subject(subjects.OpTryLock, "owned"), "", subjects.HeaderOwner+":ldlm:999999"), "owned")
		expiresAround(t, g, sent, time.Now(), 30*time.Second)
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, "owned"), unlockBody(t, g.Key)), "owned")
	})
}

// TestE2EStopSignals: on SIGTERM or SIGINT the server exits 0 promptly, and
// a lock request parked behind a holder is answered with Unavailable
// (service.Stop fails every parked waiter so), which the CLI shows.
func TestE2EStopSignals(t *testing.T) {
	t.Parallel()
	natsCLI(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			s := startLDLM(t, nil)
			nc := s.connect(t)
			const name = "x"
			wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
			key := newKey()
			waiter := s.asyncReq(subject(subjects.OpLock, name), jsonBody(t, map[string]any{"key": key}))
			waitParked(t, nc, name, key)

			code, took := s.signal(t, sig)
			if code != 0 {
				t.Errorf("exit status %d after %v, want 0", code, sig)
			}
			t.Logf("exited %d, %s after %v", code, took.Round(time.Millisecond), sig)
			r := await(t, waiter)
			wantLockError(t, r, name, subjects.CodeUnavailable)
			if !strings.Contains(r.stderr, "Nats-Service-Error-Code: Unavailable") {
				t.Errorf("the CLI did not show the Unavailable header; stderr:\n%s", r.stderr)
			}
		})
	}
}

// TestE2EKill9ReleasesLocks: a process that holds a lock is killed with
// SIGKILL; the lock request parked behind it is granted. The periodic sweep
// is off (LDLM_SWEEP_INTERVAL=-1s), so only the NATS server's disconnect
// advisory can have freed the lock. The time from the kill to the grant is
// logged, over 10 runs.
func TestE2EKill9ReleasesLocks(t *testing.T) {
	t.Parallel()
	const runs = 10
	const bound = 10 * time.Second // sanity only; the sweep would not run at all
	s := startLDLM(t, []string{"LDLM_SWEEP_INTERVAL=-1s"})
	// The service logs its settings just after it registered.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(s.stderr.String(), "sweep_interval=-1s"); {
		if time.Now().After(deadline) {
			t.Fatalf("the server does not report the sweep as disabled:\n%s", s.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	nc := s.connect(t)
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	owner := subjects.FormatOwner(nc.ConnectedServerId(), cid)

	var took []time.Duration
	for i := range runs {
		name := fmt.Sprintf("kill9-%d", i)
		holder := startHolder(t, s.url, name)

		key := newKey()
		msg := nats.NewMsg(subject(subjects.OpLock, name))
		msg.Header.Set(subjects.HeaderOwner, owner)
		msg.Data = []byte(jsonBody(t, map[string]any{"key": key}))
		type result struct {
			msg *nats.Msg
			err error
			at  time.Time
		}
		replies := make(chan result, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		go func() {
			m, err := nc.RequestMsgWithContext(ctx, msg)
			replies <- result{m, err, time.Now()}
		}()
		waitParked(t, nc, name, key)

		killed := time.Now()
		holder.kill9(t)
		var res result
		select {
		case res = <-replies:
		case <-time.After(3 * time.Minute):
			t.Fatalf("run %d: the parked lock request never returned", i)
		}
		cancel()
		if res.err != nil {
			t.Fatalf("run %d: the parked lock request failed: %v (the holder's disconnect did not free the lock)", i, res.err)
		}
		var resp subjects.LockResponse
		if err := json.Unmarshal(res.msg.Data, &resp); err != nil || !resp.Locked || resp.Key != key {
			t.Fatalf("run %d: want a grant with key %q, got %s (%v)", i, key, res.msg.Data, err)
		}
		d := res.at.Sub(killed)
		took = append(took, d)
		if d > bound {
			t.Errorf("run %d: the lock came %s after the kill; with the sweep off only the advisory frees it, which should be at once", i, d)
		}
		if _, err := nc.Request(subject(subjects.OpUnlock, name), []byte(unlockBody(t, key)), 10*time.Second); err != nil {
			t.Fatalf("run %d: unlock: %v", i, err)
		}
	}
	sorted := slices.Clone(took)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	median := (sorted[runs/2-1] + sorted[runs/2]) / 2
	t.Logf("kill -9 of the holder until the waiter's grant, %d runs (race detector: %v): median %s, max %s, all %v",
		runs, raceEnabled, median, sorted[runs-1], took)
}

// holderProc is a helper process that holds a lock (TestHelperHolder).
type holderProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *ldlmtest.SyncBuffer
	exited chan struct{}
	once   sync.Once
}

// startHolder re-executes the test binary as TestHelperHolder, which takes
// lock name over its own connection with its Ldlm-Owner identity, and
// returns once it printed "locked".
func startHolder(t *testing.T, url, name string) *holderProc {
	t.Helper()
	h := &holderProc{stderr: &ldlmtest.SyncBuffer{}, exited: make(chan struct{})}
	h.cmd = exec.Command(os.Args[0], "-test.run=^TestHelperHolder$", "-test.count=1", "-test.timeout=10m")
	h.cmd.Env = cleanEnv(helperEnv+"=holder", "LDLM_E2E_URL="+url, "LDLM_E2E_LOCK="+name)
	h.cmd.Stderr = h.stderr
	var err error
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("starting the holder process: %v", err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_ = h.cmd.Wait() // after stdout is read to the end, as Wait wants
		close(h.exited)
	}()
	t.Cleanup(func() { h.kill9(t) })

	timeout := time.After(60 * time.Second)
	var seen []string
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the holder process exited before it held %q; stdout: %q, stderr:\n%s", name, seen, h.stderr)
			}
			if line == "locked" {
				return h
			}
			seen = append(seen, line)
		case <-timeout:
			t.Fatalf("the holder process did not hold %q within 60s; stdout: %q, stderr:\n%s", name, seen, h.stderr)
		}
	}
}

// kill9 kills the holder with SIGKILL and waits until it is gone.
func (h *holderProc) kill9(t testing.TB) {
	h.once.Do(func() {
		_ = h.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-h.exited:
		case <-time.After(30 * time.Second):
			t.Errorf("the holder process did not die of SIGKILL within 30s")
		}
		h.stdin.Close()
	})
}

// TestHelperHolder is not a test: TestE2EKill9ReleasesLocks runs the test
// binary as a helper process that holds a lock until it is killed.
func TestHelperHolder(t *testing.T) {
	if os.Getenv(helperEnv) != "holder" {
		t.Skip("helper process of TestE2EKill9ReleasesLocks")
	}
	if err := holdLock(os.Getenv("LDLM_E2E_URL"), os.Getenv("LDLM_E2E_LOCK")); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	// Hold the lock until killed, or until the test process closes our
	// stdin (or dies), so that no helper outlives the test run.
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// holdLock takes lock name over a connection of its own, sending the
// connection's identity as the LDLM client libraries do.
func holdLock(url, name string) error {
	nc, err := nats.Connect(url, nats.Name("ldlm-e2e-holder"))
	if err != nil {
		return err
	}
	cid, err := nc.GetClientID()
	if err != nil {
		return err
	}
	msg := nats.NewMsg(subject(subjects.OpLock, name))
	msg.Header.Set(subjects.HeaderOwner, subjects.FormatOwner(nc.ConnectedServerId(), cid))
	reply, err := nc.RequestMsg(msg, 30*time.Second)
	if err != nil {
		return err
	}
	var resp subjects.LockResponse
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return err
	}
	if !resp.Locked {
		return fmt.Errorf("not granted: %s", reply.Data)
	}
	if !resp.ExpiresAt.IsZero() {
		return fmt.Errorf("an owned lock got a lock timeout, so the timeout could free it rather than the disconnect: %s", reply.Data)
	}
	fmt.Println("locked")
	return nil
}
