package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// helperEnv, when set, makes the test binary a helper process instead of
// running tests: "worker" is a chaos worker (flags as runWorker takes
// them), "holder" holds one lock (see runHolder).
const helperEnv = "LDLM_CHAOS_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "worker":
		os.Exit(runWorker(os.Args[1:], os.Stderr))
	case "holder":
		os.Exit(runHolder(os.Args[1:]))
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	ldlmPath  string
	buildErr  error
	buildDir  string
)

// ldlmBinary builds the ldlm binary once per test run (with -race when the
// tests run with it).
func ldlmBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "ldlm-chaos-bin-"); buildErr == nil {
			ldlmPath, buildErr = buildLDLM(buildDir, raceEnabled)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return ldlmPath
}

// testLog is an io.Writer that passes whole lines to t.Log.
type testLog struct {
	t  *testing.T
	mu sync.Mutex
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestChaos is the short form of ldlm-chaos: about 30 s of every kind of
// fault against a real NATS server, the ldlm binary and worker processes
// (this test binary in worker mode). It fails on any violation (a lock with
// more live holders than slots, tokens out of order), any lock still held
// when everyone is gone, or any unexpected exit. LDLM_CHAOS_DURATION and
// LDLM_CHAOS_FAULTS (comma separated kinds) change the run.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos run takes about 30 s")
	}
	t.Parallel()
	duration := 30 * time.Second
	if d, err := time.ParseDuration(os.Getenv("LDLM_CHAOS_DURATION")); err == nil {
		duration = d
	}
	faults := faultKinds
	if f := os.Getenv("LDLM_CHAOS_FAULTS"); f != "" {
		faults = strings.Split(f, ",")
	}
	dir, err := os.MkdirTemp("", "ldlm-chaos-test-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Duration:   duration,
		Workers:    5,
		Sessions:   2,
		Locks:      6,
		SizeK:      3,
		FaultEvery: 2 * time.Second,
		Faults:     faults,
		Sweep:      5 * time.Second,
		Seed:       uint64(time.Now().UnixNano()),
		Dir:        dir,
		LDLM:       ldlmBinary(t),
		WorkerCmd:  []string{os.Args[0]},
		WorkerEnv:  cleanEnv(helperEnv + "=worker"),
		Progress:   &testLog{t: t},
	}
	sum, err := Run(cfg)
	var report bytes.Buffer
	sum.Report(&report)
	t.Logf("\n%s", report.String())
	if err != nil {
		t.Fatalf("the chaos run could not be completed: %v (records and logs kept in %s)", err, dir)
	}
	if !sum.OK() {
		t.Fatalf("the chaos run found %d violations, %d leaks and %d problems (records and logs kept in %s)",
			len(sum.Violations), len(sum.Leaks), len(sum.Problems), dir)
	}
	// A run that did nothing proves nothing.
	if sum.Sections < 100 {
		t.Errorf("only %d critical sections in %s", sum.Sections, duration)
	}
	for _, k := range faults {
		if sum.Faults[k] == 0 && !(k == faultKick && sum.Skipped > 0) {
			t.Errorf("no fault of kind %s was injected", k)
		}
	}
	if !t.Failed() {
		os.RemoveAll(dir)
	}
}

// TestRunFlags: the flags of a run, and the errors for bad ones.
func TestRunFlags(t *testing.T) {
	cfg, keep, err := parseConfig([]string{"-duration", "10m", "-workers", "8", "-faults", "kick,nats-restart", "-keep"}, os.Stderr)
	if err != nil || cfg.Duration != 10*time.Minute || cfg.Workers != 8 || !keep ||
		fmt.Sprint(cfg.Faults) != "[kick nats-restart]" {
		t.Errorf("got %+v, keep %v, err %v", cfg, keep, err)
	}
	for _, args := range [][]string{
		{"-faults", "meteor"},
		{"-workers", "0"},
		{"-duration", "-1s"},
		{"-faults", ","},
		{"extra"},
	} {
		if _, _, err := parseConfig(args, &bytes.Buffer{}); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}
