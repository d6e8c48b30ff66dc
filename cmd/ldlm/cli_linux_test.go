package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCLILossReachesCommandsChildren: when the lock is lost, the SIGTERM
// goes to everything COMMAND started, not only to COMMAND: a shell killed
// by it must not leave its child working without the lock. (Linux, where
// ldlm gives COMMAND a process group of its own when it is not on a
// terminal, as here: the test gives it a pipe.)
func TestCLILossReachesCommandsChildren(t *testing.T) {
	t.Parallel()
	s := startLDLM(t, nil)
	const name = "children"
	script := `sleep 300 & echo "child $!"; echo "running $LDLM_LOCK_NAME $LDLM_LOCK_TOKEN"; wait`
	p := startLockProc(t, s, "lock", name, "--", "sh", "-c", script)
	child, err := strconv.Atoi(strings.TrimPrefix(p.waitLine(t, "child "), "child "))
	if err != nil {
		t.Fatalf("child pid: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
	p.waitRunning(t, name)

	if code, out, stderr := s.cli(t, "unlock", "--force", name); code != 0 {
		t.Fatalf("ldlm unlock --force: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code := p.wait(t); code != exitLost {
		t.Fatalf("ldlm lock: exit %d, want %d (lock lost); stderr:\n%s", code, exitLost, p.stderr)
	}
	deadline := time.Now().Add(cliWait)
	for processAlive(child) {
		if time.Now().After(deadline) {
			t.Fatalf("COMMAND's child (pid %d) still runs %s after ldlm lock exited on the loss", child, cliWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processAlive reports whether pid runs: it exists and is not a zombie
// waiting to be reaped by whoever inherited it.
func processAlive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
	return !strings.HasPrefix(strings.TrimSpace(rest), "Z")
}
