package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// serverProcessEnv, when set, makes the test binary a server process
// (ServeProcess) instead of a test run: what `ldlm bench server-process`
// is to `ldlm bench`.
const serverProcessEnv = "LDLM_BENCH_TEST_SERVER_PROCESS"

func TestMain(m *testing.M) {
	if os.Getenv(serverProcessEnv) != "" {
		if err := ServeProcess(os.Stdin, os.Stdout, os.Getenv(serverProcessEnv) == "tcp"); err != nil {
			fmt.Fprintln(os.Stderr, "server process:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// useTestServerCommand makes ServerCommand start this test binary as the
// server process.
func useTestServerCommand(t *testing.T) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	prev := ServerCommand
	ServerCommand = func(args []string) *exec.Cmd {
		cmd := exec.Command(exe, "-test.run=^$")
		mode := "in-process"
		for _, a := range args {
			if a == "--embedded-service-tcp" {
				mode = "tcp"
			}
		}
		cmd.Env = append(os.Environ(), serverProcessEnv+"="+mode)
		cmd.Stderr = os.Stderr
		return cmd
	}
	t.Cleanup(func() { ServerCommand = prev })
}

// TestProcessTarget: the server runs in a process of its own, the
// clients here; every row is there, the CPU per cycle covers both
// processes (so it is known), the heading says where each ran, and the
// server process exits cleanly with nothing left locked.
func TestProcessTarget(t *testing.T) {
	useTestServerCommand(t)
	target, err := NewProcessTarget(ProcessOptions{})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = target.Close()
		}
	}()
	if target.Process == nil || target.Embedded != nil || target.Process.PID == os.Getpid() {
		t.Fatalf("not a server process: %+v", target)
	}
	cfg := ShortConfig()
	cfg.Workers = []int{1, 8}
	cfg.Conns = []ConnMode{SharedConn}
	var out bytes.Buffer
	rows, err := Run(target, cfg, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if want := 2*4 + 3; len(rows) != want { // 1 and 8 workers × 4, semaphore group × 3
		t.Errorf("%d rows, want %d", len(rows), want)
	}
	for _, r := range rows {
		if r.Err != nil || r.Rate <= 0 || r.CPUPerCycle <= 0 {
			t.Errorf("%s %s %d: rate %v, CPU/cycle %v, %v", r.Workload, r.Conns, r.Workers, r.Rate, r.CPUPerCycle, r.Err)
		}
	}
	for _, want := range []string{
		fmt.Sprintf("server:  its own process (pid %d", target.Process.PID),
		fmt.Sprintf("clients: in this process (pid %d)", os.Getpid()),
		"CPU/cycle is both processes",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the heading does not say %q", want)
		}
	}
	closed = true
	if err := target.Close(); err != nil {
		t.Errorf("server process: %v", err)
	}
}

// TestInProcessTargetSaysSo: a server in the clients' process is named as
// such in the heading.
func TestInProcessTargetSaysSo(t *testing.T) {
	target, err := NewEmbeddedTarget(false)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	server, clients := target.Where()
	if !strings.Contains(server, "IN THIS PROCESS") || !strings.Contains(clients, "NOT what users get") {
		t.Errorf("in-process target described as %q / %q", server, clients)
	}
}
