package main

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestBenchShort runs `ldlm bench --short` against the server it starts
// itself and checks the printed table: every expected row is there with a
// positive rate. It asserts nothing about timing.
func TestBenchShort(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "--short"}, &stdout, &stderr)
	t.Log("\n" + stdout.String())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	// system conns workers workload cycles/s …
	row := regexp.MustCompile(`(?m)^ldlm\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s`)
	rates := map[string]int{}
	for _, m := range row.FindAllStringSubmatch(stdout.String(), -1) {
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
	if strings.Contains(stdout.String(), "ERROR") {
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
