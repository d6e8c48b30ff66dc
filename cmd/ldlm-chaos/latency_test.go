package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
)

// runHolder is the helper process "holder": it takes one lock with the Go
// client, prints "locked", and holds it until its stdin closes or it is
// killed.
func runHolder(args []string) int {
	fs := flag.NewFlagSet("holder", flag.ContinueOnError)
	url := fs.String("url", "", "NATS URL")
	user := fs.String("user", "", "NATS user")
	password := fs.String("password", "", "NATS password")
	name := fs.String("lock", "", "lock name")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	nc, err := nats.Connect(*url, nats.UserInfo(*user, *password), nats.Name("ldlm-chaos-holder"))
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	c, err := clientlib.New(nc)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := c.Lock(ctx, *name)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("locked", l.Token())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// holder is a running holder process.
type holder struct {
	p     *proc
	stdin io.Closer
}

// startHolder starts a holder of lock name and returns once it holds it.
func startHolder(t *testing.T, n *natsServer, dir, name string) *holder {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-url", n.URL(), "-user", userApp, "-password", n.Passwords[userApp], "-lock", name)
	cmd.Env = cleanEnv(helperEnv + "=holder")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{p: &proc{cmd: cmd, logPath: filepath.Join(dir, "none"), exited: make(chan struct{})}, stdin: stdin}
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		err := cmd.Wait()
		h.p.exitAt, h.p.exitErr = time.Now(), err
		close(h.p.exited)
	}()
	t.Cleanup(func() {
		if h.p.running() {
			h.p.kill()
		}
		stdin.Close()
	})
	select {
	case line := <-lines:
		if len(line) < 6 || line[:6] != "locked" {
			t.Fatalf("the holder of %s says %q", name, line)
		}
	case <-time.After(time.Minute):
		t.Fatalf("the holder of %s did not take it within a minute", name)
	}
	return h
}

// waitForWaiter polls the service until lock name has a waiter.
func waitForWaiter(t *testing.T, nc *nats.Conn, name string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		locks, err := listLocks(nc)
		if err != nil {
			continue
		}
		for _, l := range locks {
			if l.Name == name && len(l.Waiters) > 0 {
				return
			}
		}
	}
	t.Fatalf("no waiter parked on %s within 30s", name)
}

// TestReleaseLatency measures how long a lock stays held after its holder
// dies, on a real NATS server (ping interval 1 s, 2 pings out) with the
// ldlm binary, the periodic sweep off (only the server's disconnect
// advisory frees a lock):
//
//   - kill -9 of the holder process: its socket closes, the advisory
//     follows at once (20 runs);
//   - SIGSTOP of the holder: the connection stays open and silent, until
//     the NATS server's pings go unanswered (5 runs).
//
// The figures are logged (go test -run TestReleaseLatency -v); the test
// fails only if a lock is not released at all within 30 s, which with the
// NATS default (2 minutes x 2 pings) a stopped holder would not be.
func TestReleaseLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("about 20 s")
	}
	t.Parallel()
	dir := t.TempDir()
	n, err := newNATSServer()
	if err != nil {
		t.Fatal(err)
	}
	n.PingInterval, n.MaxPingsOut = time.Second, 2
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	nc, err := n.Connect(userApp, "latency-waiter")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	svc, err := startProc([]string{ldlmBinary(t)}, serviceEnv(n, "LDLM_SWEEP_INTERVAL=-1s"), filepath.Join(dir, "service.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if svc.running() {
			svc.kill()
		}
	})
	if _, err := waitServiceReady(nc, svc, time.Minute); err != nil {
		t.Fatal(err)
	}
	c, err := clientlib.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	// release measures, over runs, the time from sig to the waiter's grant.
	release := func(sig syscall.Signal, runs int) []time.Duration {
		var took []time.Duration
		for i := range runs {
			name := fmt.Sprintf("latency-%s-%d", sig, i)
			h := startHolder(t, n, dir, name)
			type result struct {
				l   *clientlib.Lock
				err error
				at  time.Time
			}
			got := make(chan result, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			go func() {
				l, err := c.Lock(ctx, name)
				got <- result{l, err, time.Now()}
			}()
			waitForWaiter(t, nc, name)
			at := time.Now()
			_ = h.p.cmd.Process.Signal(sig)
			r := <-got
			cancel()
			if r.err != nil {
				t.Fatalf("%v run %d: the lock was not released within 30s of the holder's %v: %v", sig, i, sig, r.err)
			}
			took = append(took, r.at.Sub(at))
			if err := r.l.Unlock(context.Background()); err != nil {
				t.Fatalf("unlock: %v", err)
			}
			h.p.kill() // a stopped process dies of SIGKILL too
		}
		return took
	}
	summary := func(what string, took []time.Duration) {
		sorted := slices.Clone(took)
		slices.Sort(sorted)
		t.Logf("%s, %d runs (race detector: %v): median %s, max %s, min %s; all %v", what, len(sorted), raceEnabled,
			sorted[len(sorted)/2].Round(100*time.Microsecond), sorted[len(sorted)-1].Round(100*time.Microsecond),
			sorted[0].Round(100*time.Microsecond), took)
	}
	summary("kill -9 of the holder until the waiter's grant", release(syscall.SIGKILL, 20))
	summary("SIGSTOP of the holder until the waiter's grant (NATS ping_interval 1s, ping_max 2)", release(syscall.SIGSTOP, 5))
}
