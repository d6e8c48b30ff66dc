package main

import (
	"bytes"
	"errors"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestBenchShort runs `ldlm bench --short`: the built binary, which starts
// its server as a child process of the same binary, and `--in-process`,
// which runs the server in the clients' process. It checks the printed
// table: the heading says where the server and the clients ran, and every
// expected row is there with a positive rate. It asserts nothing about
// timing.
func TestBenchShort(t *testing.T) {
	for _, tc := range []struct {
		name    string
		run     func(t *testing.T) (stdout, stderr string, code int)
		heading []string
	}{
		{
			name: "server process",
			run: func(t *testing.T) (string, string, int) {
				var stdout, stderr bytes.Buffer
				cmd := exec.Command(ldlmBinary(t), "bench", "--short")
				cmd.Env = cleanEnv()
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				var exit *exec.ExitError
				if err != nil && !errors.As(err, &exit) {
					t.Fatal(err)
				}
				return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
			},
			heading: []string{"\nserver:  its own process (pid ", "\nclients: in this process (pid ", "CPU/cycle is both processes"},
		},
		{
			name: "in process",
			run: func(t *testing.T) (string, string, int) {
				var stdout, stderr bytes.Buffer
				code := run([]string{"bench", "--short", "--in-process"}, &stdout, &stderr)
				return stdout.String(), stderr.String(), code
			},
			heading: []string{"\nserver:  IN THIS PROCESS with the clients", "\nclients: in the server's process", "NOT what users get"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := tc.run(t)
			t.Log("\n" + stdout)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			for _, h := range tc.heading {
				if !strings.Contains(stdout, h) {
					t.Errorf("the heading does not say %q", h)
				}
			}
			checkBenchRows(t, stdout)
		})
	}
}

// checkBenchRows checks that the table of a default `ldlm bench --short`
// has every row, each with a positive rate.
func checkBenchRows(t *testing.T, stdout string) {
	t.Helper()
	// system conns workers workload cycles/s …
	row := regexp.MustCompile(`(?m)^ldlm\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s`)
	rates := map[string]int{}
	for _, m := range row.FindAllStringSubmatch(stdout, -1) {
		rate, _ := strconv.Atoi(m[4])
		rates[m[1]+" "+m[2]+" "+m[3]] = rate
	}
	var want []string
	for _, conns := range []string{"shared", "per-worker"} {
		for _, n := range []string{"1", "8", "64"} {
			for _, w := range []string{"echo", "echo-tcp", "uncontended", "contended"} {
				want = append(want, conns+" "+n+" "+w)
			}
		}
		for _, w := range []string{"echo", "echo-tcp", "semaphore"} {
			want = append(want, conns+" 32 "+w)
		}
	}
	for _, k := range want {
		rate, ok := rates[k]
		switch {
		case !ok:
			t.Errorf("no row %q", k)
		case rate <= 0:
			t.Errorf("row %q: rate %d", k, rate)
		}
	}
	if len(rates) != len(want) {
		t.Errorf("%d rows, want %d", len(rates), len(want))
	}
	if strings.Contains(stdout, "ERROR") {
		t.Error("a row failed")
	}
}

func TestBenchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--workers", "0"},
		{"bench", "--conns", "both"},
		{"bench", "--workloads", "nap"},
		{"bench", "--server", "nats://127.0.0.1:1", "--cpuprofile", "x"},
		{"bench", "--baseline-prefix", "old"},
		{"bench", "--server", "nats://127.0.0.1:1", "--in-process"},
		{"bench", "extra"},
		{"bench", "scale", "--locks", "x"},
		{"bench", "scale", "--only", "nap"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != exitUsage {
			t.Errorf("%q: exit %d, want %d (stderr %q)", args, code, exitUsage, stderr.String())
		}
	}
}
