package main

// Tests of the client commands (lock, trylock, list, unlock, status): the
// real binary against a real `ldlm` server (startLDLM), with COMMANDs that
// are small sh scripts. A COMMAND tells the test where it is by printing a
// line ("running NAME TOKEN"), and waits for the test by reading stdin, so
// that no test guesses how long anything takes.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// cliWait bounds every wait of these tests. It only turns a hang into a
// failure.
const cliWait = 60 * time.Second

// holdScript runs until the test writes a line to its stdin, then exits 7.
// It first prints "running NAME TOKEN" from the variables ldlm sets.
const holdScript = `echo "running $LDLM_LOCK_NAME $LDLM_LOCK_TOKEN"; read line; exit 7`

// trapScript exits 9 on signal $1 (after printing its name) and otherwise
// runs until killed.
const trapScript = `trap "echo got $1; exit 9" $1; echo "running $LDLM_LOCK_NAME $LDLM_LOCK_TOKEN"; while :; do sleep 0.05; done`

// deafScript ignores SIGTERM: only SIGKILL ends it.
const deafScript = `trap "" TERM; echo "running $LDLM_LOCK_NAME $LDLM_LOCK_TOKEN"; while :; do sleep 0.05; done`

// lockProc is a running `ldlm lock` or `ldlm trylock`.
type lockProc struct {
	cmd    *exec.Cmd
	stdin  *os.File             // the write end of COMMAND's stdin
	lines  chan string          // stdout lines of COMMAND; closed at EOF
	stderr *ldlmtest.SyncBuffer // ldlm's and COMMAND's stderr
	exited chan struct{}        // closed when ldlm exited
	seen   []string             // lines read so far, for messages
	once   sync.Once            // closes stdin once
	server *ldlmServer          // the server it talks to
	args   []string             // ldlm's arguments
}

// startLockProc starts ldlm with args against s. COMMAND's stdin and
// stdout are pipes of their own (not exec's copying goroutines), so that
// ldlm's exit can be awaited even while an orphaned COMMAND still holds
// them.
func startLockProc(t *testing.T, s *ldlmServer, args ...string) *lockProc {
	t.Helper()
	p := &lockProc{lines: make(chan string, 64), stderr: &ldlmtest.SyncBuffer{}, exited: make(chan struct{}), server: s, args: args}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = inW
	p.cmd = exec.Command(ldlmBinary(t), args...)
	p.cmd.Env = cleanEnv("NATS_URL=" + s.url)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = inR, outW, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting ldlm %q: %v", args, err)
	}
	inR.Close()
	outW.Close()
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		outR.Close()
	}()
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.closeStdin()
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("ldlm %q stderr:\n%s", args, p.stderr)
		}
	})
	return p
}

// closeStdin ends a holdScript (read fails, exit 7) and every COMMAND that
// reads stdin.
func (p *lockProc) closeStdin() { p.once.Do(func() { p.stdin.Close() }) }

// finish lets a holdScript end: it reads one line and exits 7.
func (p *lockProc) finish(t *testing.T) {
	t.Helper()
	if _, err := p.stdin.WriteString("done\n"); err != nil {
		t.Fatalf("writing to COMMAND's stdin: %v", err)
	}
}

// waitLine waits for a stdout line starting with prefix and returns it.
func (p *lockProc) waitLine(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(cliWait)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("ldlm %q: stdout ended before a line %q; lines: %q\nstderr:\n%s", p.args, prefix, p.seen, p.stderr)
			}
			p.seen = append(p.seen, line)
			if strings.HasPrefix(line, prefix) {
				return line
			}
		case <-timeout:
			t.Fatalf("ldlm %q: no line %q within %s; lines: %q\nstderr:\n%s", p.args, prefix, cliWait, p.seen, p.stderr)
		}
	}
}

// waitRunning waits until COMMAND printed "running NAME TOKEN" and returns
// the token.
func (p *lockProc) waitRunning(t *testing.T, name string) uint64 {
	t.Helper()
	line := p.waitLine(t, "running ")
	gotName, tokenText, _ := strings.Cut(strings.TrimPrefix(line, "running "+name+" "), " ")
	if !strings.HasPrefix(line, "running "+name+" ") || gotName == "" || tokenText != "" {
		t.Fatalf("COMMAND printed %q, want \"running %s TOKEN\" (LDLM_LOCK_NAME, LDLM_LOCK_TOKEN)", line, name)
	}
	token, err := strconv.ParseUint(gotName, 10, 64)
	if err != nil || token == 0 {
		t.Fatalf("LDLM_LOCK_TOKEN is %q, want a fencing token above 0", gotName)
	}
	return token
}

// wait waits for ldlm to exit and returns its exit status.
func (p *lockProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(cliWait):
		t.Fatalf("ldlm %q did not exit within %s; stderr:\n%s", p.args, cliWait, p.stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

// cli runs one client command against s to completion.
func (s *ldlmServer) cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	code, stdout, stderr, _ = runLDLM(t, []string{"NATS_URL=" + s.url}, args...)
	return code, stdout, stderr
}

// listLocks returns `ldlm list --json`, decoded strictly.
func (s *ldlmServer) listLocks(t *testing.T) []subjects.LockInfo {
	t.Helper()
	code, stdout, stderr := s.cli(t, "list", "--json")
	if code != 0 {
		t.Fatalf("ldlm list --json: exit %d, stderr: %s", code, stderr)
	}
	var resp subjects.ListResponse
	strictJSON(t, stdout, &resp)
	return resp.Locks
}

// strictJSON decodes the one JSON value in out into v, refusing unknown
// fields.
func strictJSON(t *testing.T, out string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("output is not a %T: %v\n%s", v, err, out)
	}
	if dec.More() {
		t.Fatalf("output has more than one JSON value:\n%s", out)
	}
}

// waitLock polls `ldlm list --json` until the lock name is in the state
// that ok accepts (ok gets nil when the lock does not exist), and returns
// it.
func (s *ldlmServer) waitLock(t *testing.T, name, what string, ok func(*subjects.LockInfo) bool) *subjects.LockInfo {
	t.Helper()
	deadline := time.Now().Add(cliWait)
	for {
		var found *subjects.LockInfo
		locks := s.listLocks(t)
		for i := range locks {
			if locks[i].Name == name {
				found = &locks[i]
			}
		}
		if ok(found) {
			return found
		}
		if time.Now().After(deadline) {
			t.Fatalf("lock %q: not %s within %s; last list: %+v", name, what, cliWait, found)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// held accepts a lock with exactly holders holders and waiters waiters.
func held(holders, waiters int) func(*subjects.LockInfo) bool {
	return func(l *subjects.LockInfo) bool {
		if holders == 0 && waiters == 0 {
			return l == nil
		}
		return l != nil && len(l.Holders) == holders && len(l.Waiters) == waiters
	}
}

// wantNotObtained checks that a lock or trylock gave the not-obtained
// status, said so in one line, and did not run COMMAND.
func wantNotObtained(t *testing.T, code int, stdout, stderr, name string) {
	t.Helper()
	if code != exitNotObtained || stdout != "" {
		t.Errorf("exit %d, stdout %q; want exit %d and COMMAND not run", code, stdout, exitNotObtained)
	}
	if lines := strings.Split(strings.TrimSpace(stderr), "\n"); len(lines) != 1 || !strings.Contains(lines[0], strconv.Quote(name)) || !strings.Contains(lines[0], "not obtained") {
		t.Errorf("stderr: want one line saying %q was not obtained, got:\n%s", name, stderr)
	}
}

// TestCLIHelp: `ldlm --help` and `ldlm help` list every command, and every
// command has --help (also as `ldlm help COMMAND`).
func TestCLIHelp(t *testing.T) {
	t.Parallel()
	commands := []string{"server", "lock", "trylock", "list", "unlock", "status", "version", "bench", "help"}
	for _, args := range [][]string{{"--help"}, {"help"}} {
		code, stdout, _, _ := runLDLM(t, nil, args...)
		if code != 0 || !strings.HasPrefix(stdout, "Usage:") {
			t.Errorf("ldlm %s: exit %d, stdout %q; want 0 and the usage", args[0], code, stdout)
		}
		for _, c := range commands {
			if !strings.Contains(stdout, "\n  ldlm "+c+" ") && !strings.Contains(stdout, "\n  ldlm ["+c+"]") {
				t.Errorf("ldlm %s does not list the command %s:\n%s", args[0], c, stdout)
			}
		}
	}
	// The NATS_* variables are the flags' defaults, but help must not show
	// secrets.
	const secret = "s3cret-in-env"
	env := []string{"NATS_URL=nats://me:" + secret + "@127.0.0.1:1", "NATS_PASSWORD=" + secret, "NATS_TOKEN=" + secret}
	for _, c := range []string{"lock", "trylock", "list", "unlock", "status"} {
		for _, args := range [][]string{{c, "--help"}, {c, "-h"}, {"help", c}} {
			code, stdout, stderr, _ := runLDLM(t, env, args...)
			if code != 0 || !strings.HasPrefix(stdout, "Usage:\n  ldlm "+c+" ") || !strings.Contains(stdout, "-server") || stderr != "" {
				t.Errorf("ldlm %s: exit %d, stdout %q, stderr %q; want 0 and the usage of %s with its flags", strings.Join(args, " "), code, stdout, stderr, c)
			}
			if strings.Contains(stdout, secret) {
				t.Errorf("ldlm %s shows a secret from the environment:\n%s", strings.Join(args, " "), stdout)
			}
		}
	}
}

// TestCLIUsageErrors: a usage mistake exits 2 with one line on stderr that
// names the command and the mistake, before anything is sent (no server
// runs here).
func TestCLIUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string // in the one line
	}{
		{[]string{"lock"}, "missing lock NAME"},
		{[]string{"lock", "job"}, "want -- after NAME"},
		{[]string{"lock", "job", "true"}, "want -- after NAME"},
		{[]string{"lock", "job", "--wait", "1s", "--", "true"}, "flags go before NAME"},
		{[]string{"lock", "job", "--"}, "missing COMMAND"},
		{[]string{"lock", "--wait", "-1s", "job", "--", "true"}, "negative"},
		{[]string{"lock", "--wait", "soon", "job", "--", "true"}, "soon"},
		{[]string{"lock", "--size", "0", "job", "--", "true"}, "--size"},
		{[]string{"lock", "--tlscert", "c.pem", "job", "--", "true"}, "--tlskey"},
		{[]string{"lock", "--prefix", "a.*", "job", "--", "true"}, "--prefix"},
		{[]string{"trylock", "--wait", "1s", "job", "--", "true"}, "wait"},
		{[]string{"trylock", "job"}, "want -- after NAME"},
		{[]string{"unlock", "job"}, "--force"},
		{[]string{"unlock", "--force"}, "missing lock NAME"},
		{[]string{"unlock", "--force", "a", "b"}, "one lock NAME"},
		{[]string{"unlock", "--force", "--key", "k", "--fencing-token", "3", "job"}, "not both"},
		{[]string{"list", "extra"}, `"extra"`},
		{[]string{"status", "--bogus"}, "bogus"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr, _ := runLDLM(t, nil, tc.args...)
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if code != exitUsage || stdout != "" || len(lines) != 1 ||
				!strings.HasPrefix(lines[0], "ldlm "+tc.args[0]+": ") || !strings.Contains(lines[0], tc.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and one line \"ldlm %s: …\" that mentions %s",
					code, stdout, stderr, exitUsage, tc.args[0], tc.want)
			}
		})
	}
}

// TestCLILockExitStatus: ldlm lock exits with COMMAND's status, 128+N when
// COMMAND died of signal N, 127 and 126 when it cannot run; in every case
// the lock is free afterwards.
func TestCLILockExitStatus(t *testing.T) {
	t.Parallel()
	s := startLDLM(t, nil)
	notExec := filepath.Join(t.TempDir(), "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc    string
		command []string
		code    int
	}{
		{"exit 0", []string{"true"}, 0},
		{"exit 7", []string{"sh", "-c", "exit 7"}, 7},
		{"killed by SIGTERM", []string{"sh", "-c", "kill -TERM $$"}, 128 + int(syscall.SIGTERM)},
		{"not found", []string{"ldlm-no-such-command"}, exitNotFound},
		{"not executable", []string{notExec}, exitCannotRun},
	}
	for i, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			name := fmt.Sprintf("exit-%d", i)
			for _, op := range []string{"lock", "trylock"} {
				code, _, stderr := s.cli(t, append([]string{op, name, "--"}, tc.command...)...)
				if code != tc.code {
					t.Errorf("ldlm %s %s -- %q: exit %d, want %d; stderr: %s", op, name, tc.command, code, tc.code, stderr)
				}
				s.waitLock(t, name, "free", held(0, 0))
			}
		})
	}
}

// TestCLILockHeldWhileRunning: while COMMAND runs the lock is held (the
// list shows COMMAND's token, trylock and lock --wait get status 75 without
// running their COMMAND); after it ends, ldlm exits with its status and the
// lock is free.
func TestCLILockHeldWhileRunning(t *testing.T) {
	t.Parallel()
	s := startLDLM(t, nil)
	const name = "held-while-running"
	p := startLockProc(t, s, "lock", name, "--", "sh", "-c", holdScript)
	token := p.waitRunning(t, name)

	l := s.waitLock(t, name, "held by COMMAND", held(1, 0))
	if l.Holders[0].Token != token || l.Size != 1 || l.Holders[0].Owner == "" {
		t.Errorf("list shows %+v; want one holder with COMMAND's token %d and an owner", l, token)
	}
	code, stdout, stderr := s.cli(t, "trylock", name, "--", "sh", "-c", "echo ran")
	wantNotObtained(t, code, stdout, stderr, name)
	code, stdout, stderr = s.cli(t, "lock", "--wait", "300ms", name, "--", "sh", "-c", "echo ran")
	wantNotObtained(t, code, stdout, stderr, name)

	p.finish(t)
	if code := p.wait(t); code != 7 {
		t.Errorf("ldlm lock exited %d, want COMMAND's 7; stderr:\n%s", code, p.stderr)
	}
	s.waitLock(t, name, "free", held(0, 0))
	if code, _, stderr := s.cli(t, "trylock", name, "--", "true"); code != 0 {
		t.Errorf("trylock after COMMAND ended: exit %d; stderr: %s", code, stderr)
	}
}

// TestCLIKill9FreesLock: `kill -9` of ldlm lock closes its connection, so
// the service frees the lock; COMMAND is sent SIGTERM by the kernel (on
// Linux), so it does not work on unprotected.
func TestCLIKill9FreesLock(t *testing.T) {
	t.Parallel()
	s := startLDLM(t, []string{"LDLM_SWEEP_INTERVAL=-1s"}) // only the disconnect advisory can free it
	const name = "kill9"
	p := startLockProc(t, s, "lock", name, "--", "sh", "-c", holdScript)
	p.waitRunning(t, name)
	s.waitLock(t, name, "held", held(1, 0))

	killed := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t)
	s.waitLock(t, name, "freed after kill -9", held(0, 0))
	// A figure, not a check: it includes starting `ldlm list` to look.
	t.Logf("kill -9 until ldlm list showed the lock free: %s", time.Since(killed).Round(time.Millisecond))

	// COMMAND read stdin, which the test keeps open: only a signal ends it,
	// and with it the last writer of its stdout.
	timeout := time.After(cliWait)
	for open := true; open; {
		select {
		case _, open = <-p.lines:
		case <-timeout:
			t.Fatalf("COMMAND still runs %s after ldlm was killed", cliWait)
		}
	}
}

// TestCLIListAndStatus: list shows holders and waiters (table and JSON),
// status counts them, and the waiter gets the lock when the holder ends.
func TestCLIListAndStatus(t *testing.T) {
	t.Parallel()
	s := startLDLM(t, nil)
	const name = "listed lock" // a space: shown quoted in the table
	holder := startLockProc(t, s, "lock", "--timeout", "1m", name, "--", "sh", "-c", holdScript)
	token := holder.waitRunning(t, name)
	waiter := startLockProc(t, s, "lock", "--wait", "5m", name, "--", "sh", "-c", holdScript)
	l := s.waitLock(t, name, "held with one waiter", held(1, 1))

	h, w := l.Holders[0], l.Waiters[0]
	if h.Token != token || h.Owner == "" || w.Owner == "" || h.Owner == w.Owner || h.ExpiresAt.IsZero() || w.Deadline.IsZero() {
		t.Errorf("list --json: holder %+v, waiter %+v; want token %d, two different owners, an expiry and a deadline", h, w, token)
	}

	code, table, stderr := s.cli(t, "list")
	if code != 0 {
		t.Fatalf("ldlm list: exit %d; stderr: %s", code, stderr)
	}
	rows := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	header := strings.Fields(rows[0])
	if !slices.Equal(header, []string{"LOCK", "SIZE", "STATE", "OWNER", "KEY", "TOKEN", "FOR", "EXPIRES"}) {
		t.Errorf("ldlm list: header %q", rows[0])
	}
	wantRows := []*regexp.Regexp{
		regexp.MustCompile(`^"listed lock" +1 +held +` + regexp.QuoteMeta(h.Owner) + ` +` + regexp.QuoteMeta(h.KeyPrefix) + ` +` + strconv.FormatUint(token, 10) + ` +\S+ +in \S+$`),
		regexp.MustCompile(`^"listed lock" +1 +waiting +` + regexp.QuoteMeta(w.Owner) + ` +- +- +\S+ +in \S+$`),
	}
	if len(rows) != 1+len(wantRows) {
		t.Fatalf("ldlm list: want a header and %d rows, got:\n%s", len(wantRows), table)
	}
	for i, re := range wantRows {
		if !re.MatchString(rows[1+i]) {
			t.Errorf("ldlm list: row %d is %q, want it to match %s\n%s", i+1, rows[1+i], re, table)
		}
	}

	code, out, stderr := s.cli(t, "status")
	if code != 0 {
		t.Fatalf("ldlm status: exit %d; stderr: %s", code, stderr)
	}
	for _, re := range []string{`(?m)^locks: +1$`, `(?m)^holders: +1$`, `(?m)^waiters: +1$`, `(?m)^connections: +2 `, `(?m)^liveness: +advisories\+sweep$`, `(?m)^version: +\S+$`, `(?m)^last sweep: +\S+ ago`,
		`(?m)^instances: +1 active, 0 standbys \(locks in memory`, `(?m)^active +[0-9a-f]{16} +\S+ +\S+ +- +-$`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("ldlm status: no line matching %s:\n%s", re, out)
		}
	}
	code, out, stderr = s.cli(t, "status", "--json")
	if code != 0 {
		t.Fatalf("ldlm status --json: exit %d; stderr: %s", code, stderr)
	}
	var st struct {
		subjects.StatusResponse
		Instances []subjects.InstanceInfo `json:"instances"`
	}
	strictJSON(t, out, &st)
	if st.Locks != 1 || st.Holders != 1 || st.Waiters != 1 || st.Owners != 2 || st.Version == "" || st.Prefix != "ldlm" {
		t.Errorf("ldlm status --json: %+v; want 1 lock, 1 holder, 1 waiter, 2 connections", st)
	}
	if len(st.Instances) != 1 || st.Instances[0].Role != subjects.RoleActive || st.Instances[0].State != "memory" {
		t.Errorf("ldlm status --json: instances %+v; want the one active, in memory", st.Instances)
	}

	holder.finish(t)
	if code := holder.wait(t); code != 7 {
		t.Errorf("holder: exit %d, want 7", code)
	}
	if next := waiter.waitRunning(t, name); next <= token {
		t.Errorf("the waiter got token %d, want one above the first holder's %d", next, token)
	}
	waiter.finish(t)
	if code := waiter.wait(t); code != 7 {
		t.Errorf("waiter: exit %d, want 7", code)
	}
	if code, out, _ := s.cli(t, "list"); code != 0 || out != "no locks\n" {
		t.Errorf("ldlm list at the end: exit %d, %q; want \"no locks\"", code, out)
	}
}

// TestCLIForceUnlock: unlock --force releases the holder and prints its
// token; the running ldlm lock sees the loss, sends its COMMAND SIGTERM
// (SIGKILL after --grace if that is not enough) and exits 76.
//
// "lost notice" depends on clientlib hearing the service's lost-lock
// notice; "renewal refused" (a lock timeout) learns it when renewing.
func TestCLIForceUnlock(t *testing.T) {
	t.Parallel()
	s := startLDLM(t, nil)
	tests := []struct {
		desc      string
		flags     []string
		script    string
		wantLine  string // COMMAND printed it after the loss
		wantKill  bool   // ldlm had to send SIGKILL
		unlockArg func(token uint64) []string
	}{
		{"lost notice", nil, trapScript, "got TERM", false, func(uint64) []string { return nil }},
		{"renewal refused", []string{"--timeout", "3s"}, trapScript, "got TERM", false,
			func(token uint64) []string { return []string{"--fencing-token", strconv.FormatUint(token, 10)} }},
		{"SIGTERM ignored", []string{"--timeout", "3s", "--grace", "500ms"}, deafScript, "", true,
			func(uint64) []string { return nil }},
	}
	for i, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			name := fmt.Sprintf("force-%d", i)
			args := append(append([]string{"lock"}, tc.flags...), name, "--", "sh", "-c", tc.script, "sh", "TERM")
			p := startLockProc(t, s, args...)
			token := p.waitRunning(t, name)
			s.waitLock(t, name, "held", held(1, 0))

			start := time.Now()
			code, out, stderr := s.cli(t, append(append([]string{"unlock", "--force"}, tc.unlockArg(token)...), name)...)
			want := fmt.Sprintf("released lock %s: 1 grant, fencing token %d\n", name, token)
			if code != 0 || out != want {
				t.Fatalf("ldlm unlock --force: exit %d, stdout %q, stderr %q; want 0 and %q", code, out, stderr, want)
			}
			if tc.wantLine != "" {
				p.waitLine(t, tc.wantLine)
			}
			if code := p.wait(t); code != exitLost {
				t.Errorf("ldlm lock: exit %d, want %d (lock lost); stderr:\n%s", code, exitLost, p.stderr)
			}
			// A figure, not a check: it includes starting `ldlm unlock`.
			t.Logf("from starting ldlm unlock --force to ldlm lock's exit: %s", time.Since(start).Round(time.Millisecond))
			if got := strings.Contains(p.stderr.String(), "SIGKILL\n"); got != tc.wantKill {
				t.Errorf("ldlm lock sent SIGKILL: %v, want %v; stderr:\n%s", got, tc.wantKill, p.stderr)
			}
		})
	}

	// Nothing to release: one line, status 1.
	code, out, stderr := s.cli(t, "unlock", "--force", "no-such-lock")
	if code != exitFailed || out != "" || !strings.Contains(stderr, string(subjects.CodeLockDoesNotExist)) || strings.Count(stderr, "\n") != 1 {
		t.Errorf("unlock --force of a free lock: exit %d, stdout %q, stderr %q; want 1 and one line with %s", code, out, stderr, subjects.CodeLockDoesNotExist)
	}
}

// TestCLISignals: signals sent to ldlm lock reach COMMAND; a signal while
// ldlm still waits for the lock ends the wait (status 128+N) and leaves no
// waiter behind.
func TestCLISignals(t *testing.T) {
	t.Parallel()
	s := startLDLM(t, nil)
	signals := map[string]syscall.Signal{
		"TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP,
		"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
	}
	for sigName, sig := range signals {
		t.Run(sigName, func(t *testing.T) {
			t.Parallel()
			name := "signal-" + sigName
			p := startLockProc(t, s, "lock", name, "--", "sh", "-c", trapScript, "sh", sigName)
			p.waitRunning(t, name)
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			p.waitLine(t, "got "+sigName)
			if code := p.wait(t); code != 9 {
				t.Errorf("exit %d, want COMMAND's 9; stderr:\n%s", code, p.stderr)
			}
			s.waitLock(t, name, "free", held(0, 0))
		})
	}

	t.Run("while waiting", func(t *testing.T) {
		t.Parallel()
		const name = "signal-while-waiting"
		holder := startLockProc(t, s, "lock", name, "--", "sh", "-c", holdScript)
		holder.waitRunning(t, name)
		waiter := startLockProc(t, s, "lock", name, "--", "sh", "-c", "echo ran")
		s.waitLock(t, name, "waited for", held(1, 1))
		if err := waiter.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := waiter.wait(t); code != 128+int(syscall.SIGTERM) {
			t.Errorf("waiter: exit %d, want %d; stderr:\n%s", code, 128+int(syscall.SIGTERM), waiter.stderr)
		}
		s.waitLock(t, name, "without the waiter", held(1, 0))
		holder.finish(t)
		holder.wait(t)
		if line, ok := <-waiter.lines; ok {
			t.Errorf("the waiter's COMMAND ran: %q", line)
		}
	})
}

// TestCLIServiceErrors: no server, or no service with that prefix: status
// 1 and one line that says what to check.
func TestCLIServiceErrors(t *testing.T) {
	t.Parallel()
	s := startLDLM(t, nil)
	nowhere := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"status", "--server", nowhere}, "connecting to NATS"},
		{[]string{"lock", "--server", nowhere, "job", "--", "true"}, "connecting to NATS"},
		{[]string{"list", "--prefix", "other"}, "no lock service answers"},
		{[]string{"status", "--prefix", "other"}, "no lock service answers"},
		{[]string{"unlock", "--force", "--prefix", "other", "job"}, "no lock service answers"},
		{[]string{"trylock", "--prefix", "other", "job", "--", "true"}, "no lock service answers"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := s.cli(t, tc.args...)
			if code != exitFailed || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 1 and one line that mentions %q", code, stdout, stderr, tc.want)
			}
			// Issue 11, D3: a request nobody answered names the likely
			// causes, most likely first.
			if causes := "likely causes, most likely first: ldlm is not running"; tc.want != "connecting to NATS" && !strings.Contains(stderr, causes) {
				t.Errorf("stderr %q does not name the likely causes (%q)", stderr, causes)
			}
		})
	}
}
