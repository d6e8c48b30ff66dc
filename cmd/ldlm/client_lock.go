package main

// `ldlm lock` and `ldlm trylock`: run a command while holding a lock.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/ldlm-io/ldlm/clientlib"
)

const lockUsage = `Usage:
  ldlm lock [flags] NAME -- COMMAND [ARGS...]

Takes the lock NAME, waiting while it is held (at most --wait), runs COMMAND
while holding it, and releases it when COMMAND ends. COMMAND inherits stdin,
stdout and stderr, and finds the lock's name and fencing token in
LDLM_LOCK_NAME and LDLM_LOCK_TOKEN. SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1
and SIGUSR2 sent to ldlm are passed on to COMMAND. If the lock is lost while
COMMAND runs (released by an operator, expired, connection lost), COMMAND
gets SIGTERM, and SIGKILL after --grace.

Exit status: COMMAND's own; 128+N if COMMAND died of signal N (or ldlm got
signal N while waiting); 75 if the lock was not obtained within --wait; 76 if
the lock was lost while COMMAND ran; 126 if COMMAND could not be started; 127
if it was not found; 1 if the lock service failed; 2 for a usage error.
`

const trylockUsage = `Usage:
  ldlm trylock [flags] NAME -- COMMAND [ARGS...]

As ldlm lock, but never waits: when every slot of the lock is held, COMMAND
does not run and ldlm exits with status 75.
`

func runLock(args []string, stdout, stderr io.Writer) int {
	return runLockCommand("lock", lockUsage, args, stdout, stderr)
}

func runTryLock(args []string, stdout, stderr io.Writer) int {
	return runLockCommand("trylock", trylockUsage, args, stdout, stderr)
}

// lockRun is one run of `ldlm lock` or `ldlm trylock`.
type lockRun struct {
	command string // "ldlm lock" or "ldlm trylock", for messages
	try     bool
	name    string
	argv    []string // COMMAND and its arguments
	opts    []clientlib.LockOption
	wait    time.Duration
	grace   time.Duration
	stderr  io.Writer
}

func runLockCommand(op, usage string, args []string, stdout, stderr io.Writer) int {
	r := &lockRun{command: "ldlm " + op, try: op == "trylock", stderr: stderr}
	fs := flag.NewFlagSet(r.command, flag.ContinueOnError)
	conn := addClientFlags(fs)
	size := fs.Int("size", 1, "number of slots of the lock: up to N holders at once")
	if !r.try {
		fs.DurationVar(&r.wait, "wait", 0, "give up (exit 75) if the lock is not obtained within this time; 0: wait as long as it takes")
	}
	timeout := fs.Duration("timeout", 0, "lock timeout: the service releases the lock unless renewed within it; ldlm renews it while COMMAND runs. 0: none, the lock lives until ldlm's connection closes")
	fs.DurationVar(&r.grace, "grace", 10*time.Second, "after the lock is lost and COMMAND got SIGTERM, how long to wait before SIGKILL")
	if code, done := parseCommandFlags(fs, args, usage, stdout, stderr); done {
		return code
	}
	rest := fs.Args()
	switch {
	case len(rest) == 0:
		return usageError(stderr, r.command, "missing lock NAME")
	case len(rest) == 1 || rest[1] != "--":
		return usageError(stderr, r.command, "want -- after NAME, then COMMAND (flags go before NAME)")
	case len(rest) == 2:
		return usageError(stderr, r.command, "missing COMMAND after --")
	case rest[0] == "":
		return usageError(stderr, r.command, "the lock NAME is empty")
	case *size < 1:
		return usageError(stderr, r.command, "--size must be at least 1, got %d", *size)
	case r.wait < 0 || *timeout < 0 || r.grace < 0:
		return usageError(stderr, r.command, "--wait, --timeout and --grace must not be negative")
	}
	if err := conn.resolve(); err != nil {
		return usageError(stderr, r.command, "%v", err)
	}
	r.name, r.argv = rest[0], rest[2:]
	// A timeout of 0 is clientlib's default: none.
	r.opts = []clientlib.LockOption{clientlib.WithSize(*size), clientlib.WithWaitTimeout(r.wait), clientlib.WithLockTimeout(*timeout)}
	return r.run(conn)
}

// run takes the lock, runs COMMAND under it and releases it.
func (r *lockRun) run(conn *clientConfig) int {
	// Caught from the start: while waiting for the lock a signal ends the
	// wait; once COMMAND runs it is passed on.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwardedSignals...)
	defer signal.Stop(sigs)

	nc, err := conn.connect(r.command, r.command+" "+r.name, r.stderr)
	if err != nil {
		return failed(r.stderr, r.command, err)
	}
	// Closing the connection makes the service free whatever this
	// connection still holds, should an unlock below have failed.
	defer nc.Close()
	client, err := clientlib.New(nc, clientlib.WithPrefix(conn.prefix))
	if err != nil {
		return failed(r.stderr, r.command, err)
	}
	defer client.Close()

	l, code := r.acquire(client, sigs, conn.prefix)
	if l == nil {
		return code
	}
	return r.runHolding(l, sigs)
}

// acquire takes the lock. It returns a nil Lock and the exit status when
// the lock was not obtained.
func (r *lockRun) acquire(client *clientlib.Client, sigs <-chan os.Signal, prefix string) (*clientlib.Lock, int) {
	lock := client.Lock
	if r.try {
		lock = client.TryLock
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		l    *clientlib.Lock
		err  error
		done = make(chan struct{})
	)
	go func() {
		l, err = lock(ctx, r.name, r.opts...)
		close(done)
	}()
	select {
	case <-done:
	case sig := <-sigs:
		// Lock withdraws its request before it returns, and client.Close
		// releases a grant that won the race with the cancel.
		cancel()
		<-done
		fmt.Fprintf(r.stderr, "%s: signal %d (%v) while waiting for lock %q: gave up\n", r.command, signalNumber(sig), sig, r.name)
		return nil, exitSignalBase + signalNumber(sig)
	}
	switch {
	case err != nil:
		return nil, failed(r.stderr, r.command, withLikelyCauses(err, prefix))
	case !l.Locked() && r.try:
		fmt.Fprintf(r.stderr, "%s: lock %q not obtained: every slot is held\n", r.command, r.name)
		return nil, exitNotObtained
	case !l.Locked():
		fmt.Fprintf(r.stderr, "%s: lock %q not obtained within %s\n", r.command, r.name, r.wait)
		return nil, exitNotObtained
	}
	return l, 0
}

// The variables that tell COMMAND which lock it holds.
const (
	envLockName  = "LDLM_LOCK_NAME"
	envLockToken = "LDLM_LOCK_TOKEN"
)

// runHolding runs COMMAND while l is held, then releases l.
func (r *lockRun) runHolding(l *clientlib.Lock, sigs <-chan os.Signal) int {
	cmd := exec.Command(r.argv[0], r.argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(),
		envLockName+"="+l.Name(),
		envLockToken+"="+strconv.FormatUint(l.Token(), 10))
	cmd.SysProcAttr = commandProcAttr()
	select {
	case <-l.Done():
		// Lost between the grant and now: do not start unprotected work.
		fmt.Fprintf(r.stderr, "%s: %s before COMMAND started\n", r.command, errText(l.Err()))
		return exitLost
	default:
	}
	if err := cmd.Start(); err != nil {
		r.release(l)
		fmt.Fprintf(r.stderr, "%s: %v\n", r.command, err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			return exitNotFound
		}
		return exitCannotRun
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // its status is in cmd.ProcessState
		close(exited)
	}()

	// The one loop that reacts to everything while COMMAND runs.
	var (
		lost     error
		lockDone = l.Done()
		kill     <-chan time.Time
	)
	for running := true; running; {
		select {
		case sig := <-sigs:
			_ = signalCommand(cmd.Process, cmd.SysProcAttr, sig)
		case <-lockDone:
			lockDone = nil // fires once
			lost = l.Err()
			fmt.Fprintf(r.stderr, "%s: %s: sending SIGTERM to COMMAND (pid %d), SIGKILL in %s\n", r.command, errText(lost), cmd.Process.Pid, r.grace)
			_ = signalCommand(cmd.Process, cmd.SysProcAttr, syscall.SIGTERM)
			kill = time.After(r.grace)
		case <-kill:
			kill = nil
			fmt.Fprintf(r.stderr, "%s: COMMAND (pid %d) still ran %s after SIGTERM: sending SIGKILL\n", r.command, cmd.Process.Pid, r.grace)
			_ = signalCommand(cmd.Process, cmd.SysProcAttr, syscall.SIGKILL)
		case <-exited:
			running = false
		}
	}
	if lost != nil {
		return exitLost
	}
	if err := r.release(l); errors.Is(err, clientlib.ErrLockLost) {
		// Lost while COMMAND ended; it may have been lost while COMMAND
		// still worked, so the work may not have been protected.
		fmt.Fprintf(r.stderr, "%s: %s (noticed as COMMAND ended)\n", r.command, errText(err))
		return exitLost
	}
	return exitStatus(cmd.ProcessState)
}

// release unlocks l. A failure other than a loss only gets a warning: the
// lock is freed anyway when ldlm's connection closes, a moment later.
func (r *lockRun) release(l *clientlib.Lock) error {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	err := l.Unlock(ctx)
	if err != nil && !errors.Is(err, clientlib.ErrLockLost) {
		fmt.Fprintf(r.stderr, "%s: releasing lock %q: %s (the service frees it when ldlm's connection closes, now)\n", r.command, r.name, errText(err))
	}
	return err
}

// exitStatus is a finished process's status as a shell reports it: 128+N
// when it died of signal N.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return exitSignalBase + int(ws.Signal())
	}
	return ps.ExitCode()
}

// signalNumber is sig's number; 0 for a signal that is not a
// syscall.Signal (none of forwardedSignals).
func signalNumber(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return int(s)
	}
	return 0
}
