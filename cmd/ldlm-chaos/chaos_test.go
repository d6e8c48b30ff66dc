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

// TestChaos is the short form of ldlm-chaos, once per state mode: about
// 30 s of every kind of fault against a real NATS server, the ldlm binary
// and worker processes (this test binary in worker mode) with the state in
// memory, and about 20 s for each durable mode (jetstream with two
// standbys, the single binary with a data folder, a three-member embedded
// cluster), the four in parallel. Each fails on any violation (a lock with
// more live holders than slots, tokens out of order), any lock still held
// when everyone is gone, or any unexpected exit. LDLM_CHAOS_DURATION sets
// every mode's duration, LDLM_CHAOS_FAULTS (comma separated kinds) keeps
// only those kinds (a mode left with none is skipped).
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos runs take about 30 s")
	}
	t.Parallel()
	for _, tc := range []struct {
		state       string
		duration    time.Duration
		minSections int
	}{
		{modeMemory, 30 * time.Second, 100},
		{modeJetStream, 20 * time.Second, 50},
		{modeDataDir, 20 * time.Second, 50},
		{modeCluster, 20 * time.Second, 30}, // a takeover in the cluster pauses it for seconds
	} {
		t.Run(tc.state, func(t *testing.T) {
			t.Parallel()
			duration := tc.duration
			if d, err := time.ParseDuration(os.Getenv("LDLM_CHAOS_DURATION")); err == nil {
				duration = d
			}
			faults := modeFaults[tc.state]
			if f := os.Getenv("LDLM_CHAOS_FAULTS"); f != "" {
				var kept []string
				for _, k := range strings.Split(f, ",") {
					if contains(faults, k) {
						kept = append(kept, k)
					}
				}
				if len(kept) == 0 {
					t.Skipf("none of LDLM_CHAOS_FAULTS=%s applies to state %s", f, tc.state)
				}
				faults = kept
			}
			runChaosTest(t, Config{
				State:      tc.state,
				Standbys:   2,
				Grace:      5 * time.Second,
				Duration:   duration,
				Workers:    5,
				Sessions:   2,
				Locks:      6,
				SizeK:      3,
				FaultEvery: 2 * time.Second,
				Faults:     faults,
				Sweep:      5 * time.Second,
			}, tc.minSections)
		})
	}
}

// runChaosTest runs cfg (with this test's seed, folder, binaries and log)
// and fails on anything it found, on fewer than minSections sections, and
// on a fault kind of cfg that was never injected.
func runChaosTest(t *testing.T, cfg Config, minSections int) {
	dir, err := os.MkdirTemp("", "ldlm-chaos-test-")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Seed = uint64(time.Now().UnixNano())
	cfg.Dir = dir
	cfg.LDLM = ldlmBinary(t)
	cfg.WorkerCmd = []string{os.Args[0]}
	cfg.WorkerEnv = cleanEnv(helperEnv + "=worker")
	cfg.Progress = &testLog{t: t}
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
	if sum.Sections < minSections {
		t.Errorf("only %d critical sections in %s", sum.Sections, cfg.Duration)
	}
	for _, k := range cfg.Faults {
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
	if err != nil || cfg.Duration != 10*time.Minute || cfg.Workers != 8 || !keep || cfg.State != modeMemory ||
		fmt.Sprint(cfg.Faults) != "[kick nats-restart]" {
		t.Errorf("got %+v, keep %v, err %v", cfg, keep, err)
	}
	// Each state has its own default kinds.
	for state, want := range modeFaults {
		cfg, _, err := parseConfig([]string{"-state", state}, os.Stderr)
		if err != nil || fmt.Sprint(cfg.Faults) != fmt.Sprint(want) {
			t.Errorf("-state %s: faults %v (want %v), err %v", state, cfg.Faults, want, err)
		}
	}
	for _, args := range [][]string{
		{"-faults", "meteor"},
		{"-state", "floppy"},
		{"-state", "cluster", "-faults", "kick"}, // no NATS server of ours to kick through
		{"-state", "memory", "-faults", "node-kill"},
		{"-standbys", "0"},
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
