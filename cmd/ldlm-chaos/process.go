package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// proc is a child process whose output goes to a log file.
type proc struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once the process is reaped
	exitAt  time.Time     // when it was reaped; read after exited is closed
	exitErr error         // what Wait returned; read after exited is closed
}

// startProc starts argv with env (the whole environment), its stdout and
// stderr appended to logPath.
func startProc(argv, env []string, logPath string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	p := &proc{cmd: exec.Command(argv[0], argv[1:]...), logPath: logPath, exited: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", filepath.Base(argv[0]), err)
	}
	go func() {
		err := p.cmd.Wait()
		p.exitAt, p.exitErr = time.Now(), err
		close(p.exited)
	}()
	return p, nil
}

// running reports whether the process has not exited yet.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// signal sends sig and waits at most d for the process to exit. It reports
// whether it exited.
func (p *proc) signal(sig syscall.Signal, d time.Duration) bool {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// kill kills the process with SIGKILL and waits until it is reaped.
func (p *proc) kill() {
	if !p.signal(syscall.SIGKILL, time.Minute) {
		panic("a process survived SIGKILL for a minute: " + p.logPath)
	}
}

// exitCode is the exit status, -1 when killed by a signal.
func (p *proc) exitCode() int { return p.cmd.ProcessState.ExitCode() }

// logTail returns the last lines of the process's log, for error messages.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// cleanEnv is this process's environment without LDLM_* and NATS_*
// variables, so that settings of the developer's shell do not reach the
// processes under test, plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LDLM_") && !strings.HasPrefix(kv, "NATS_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// serviceEnv is the environment of the ldlm binary in external mode on n.
func serviceEnv(n *natsServer, extra ...string) []string {
	return cleanEnv(append([]string{
		"LDLM_NATS_URL=" + n.URL(),
		"LDLM_NATS_USER=" + userService,
		"LDLM_NATS_PASSWORD=" + n.Passwords[userService],
		"LDLM_SYSTEM_USER=" + userSystem,
		"LDLM_SYSTEM_PASSWORD=" + n.Passwords[userSystem],
	}, extra...)...)
}

// waitServiceReady asks the service for its status until it answers, and
// returns the answer. It gives up when p exits or after d.
func waitServiceReady(nc *nats.Conn, p *proc, d time.Duration) (subjects.StatusResponse, error) {
	var st subjects.StatusResponse
	for deadline := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		if !p.running() {
			return st, fmt.Errorf("the lock service exited while starting:\n%s", p.logTail())
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("the lock service did not answer %s within %s:\n%s", subjects.OpAdminStatus, d, p.logTail())
		}
		reply, err := nc.Request(subjects.AdminSubject(subjects.DefaultPrefix, subjects.OpAdminStatus, ""), nil, time.Second)
		if err != nil {
			continue
		}
		if json.Unmarshal(reply.Data, &st) == nil && st.Error == nil && !st.Started.IsZero() {
			return st, nil
		}
	}
}

// listLocks asks the service for every lock it holds or has waiters for.
func listLocks(nc *nats.Conn) ([]subjects.LockInfo, error) {
	reply, err := nc.Request(subjects.AdminSubject(subjects.DefaultPrefix, subjects.OpAdminList, ""), nil, 5*time.Second)
	if err != nil {
		return nil, err
	}
	var resp subjects.ListResponse
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, fmt.Errorf("unreadable %s reply: %w", subjects.OpAdminList, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("%s: %s", subjects.OpAdminList, resp.Error.Message)
	}
	return resp.Locks, nil
}

// buildLDLM builds the ldlm binary from this module into dir, with the race
// detector if race is set, and returns its path.
func buildLDLM(dir string, race bool) (string, error) {
	path := filepath.Join(dir, "ldlm")
	args := []string{"build", "-o", path}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "github.com/ldlm-io/ldlm/cmd/ldlm")
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go %s (run it inside the ldlm module, or pass -ldlm PATH): %v\n%s", strings.Join(args, " "), err, out)
	}
	return path, nil
}
