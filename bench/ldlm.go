package main

import (
	"strings"
	"time"

	"github.com/ldlm-io/ldlm/internal/bench"
	"github.com/ldlm-io/ldlm/subjects"
)

// ldlmSystem is LDLM as `ldlm bench` measures it: embedded in this process
// ("ldlm"), or a server running in another process ("ldlm-process").
type ldlmSystem struct {
	label   string
	t       *bench.Target
	timeout time.Duration
}

func startLDLM(timeout time.Duration) (*ldlmSystem, error) {
	t, err := bench.NewEmbeddedTarget(false)
	if err != nil {
		return nil, err
	}
	return &ldlmSystem{label: "ldlm", t: t, timeout: timeout}, nil
}

// connectLDLM measures the ldlm server at url, running in its own process
// as Redis does; named labels its rows with the server's address, to tell
// several such servers apart.
func connectLDLM(url string, named bool, timeout time.Duration) (*ldlmSystem, error) {
	t, err := bench.NewExternalTarget(url, subjects.DefaultPrefix)
	if err != nil {
		return nil, err
	}
	label := "ldlm-process"
	if named {
		label += "@" + strings.TrimPrefix(url, "nats://")
	}
	return &ldlmSystem{label: label, t: t, timeout: timeout}, nil
}

func (s *ldlmSystem) workloads(n int, contended bool) ([]namedWorkload, func(), error) {
	var ws []namedWorkload
	var closes []func()
	closeAll := func() {
		for _, c := range closes {
			c()
		}
	}
	for _, mode := range []bench.ConnMode{bench.SharedConn, bench.ConnPerWorker} {
		names := []string{bench.WorkEcho, bench.WorkUncontended}
		if contended {
			names = []string{bench.WorkContended}
		}
		if mode == bench.ConnPerWorker {
			names = names[len(names)-1:] // one echo is enough as the reference
		}
		got, closeFn, err := s.t.Open(names, n, mode, s.timeout)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		closes = append(closes, closeFn)
		for _, w := range got {
			ws = append(ws, namedWorkload{system: s.label, conns: string(mode), Workload: w})
		}
	}
	return ws, closeAll, nil
}

func (s *ldlmSystem) close() { s.t.Close() }
