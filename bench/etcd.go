package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/ldlm-io/ldlm/internal/bench"
)

var errNoEtcd = errors.New("etcd not found")

// etcdSystem is a cluster of etcd servers started for the run, each a
// process of its own on loopback with its data in a temporary folder
// (etcd writes every change to its write-ahead log and fsyncs it, as a
// durable lock service must). Its locks are etcd's own recipe,
// concurrency.Mutex: a key under the lock's prefix per waiter, granted to
// the oldest, on a session (a lease kept alive) per worker.
type etcdSystem struct {
	cmds      []*exec.Cmd
	endpoints []string
	dir       string
	timeout   time.Duration
	runID     string
}

func startEtcd(path string, nodes int, timeout time.Duration) (*etcdSystem, error) {
	bin, err := exec.LookPath(path)
	if err != nil {
		return nil, errNoEtcd
	}
	dir, err := os.MkdirTemp("", "ldlm-bench-etcd-")
	if err != nil {
		return nil, err
	}
	s := &etcdSystem{dir: dir, timeout: timeout, runID: strconv.FormatInt(time.Now().UnixNano(), 36)}
	var peers, clients []string
	for i := range nodes {
		pp, err1 := freePort()
		cp, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			s.close()
			return nil, err
		}
		peers = append(peers, fmt.Sprintf("e%d=http://127.0.0.1:%d", i, pp))
		clients = append(clients, "http://127.0.0.1:"+strconv.Itoa(cp))
	}
	for i := range nodes {
		peerURL := strings.SplitN(peers[i], "=", 2)[1]
		cmd := exec.Command(bin, "--name", fmt.Sprintf("e%d", i), "--data-dir", filepath.Join(dir, strconv.Itoa(i)),
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--listen-client-urls", clients[i], "--advertise-client-urls", clients[i],
			"--initial-cluster", strings.Join(peers, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "ldlm-bench-"+s.runID, "--log-level", "error")
		if err := cmd.Start(); err != nil {
			s.close()
			return nil, err
		}
		s.cmds = append(s.cmds, cmd)
	}
	s.endpoints = clients
	// Wait until a write goes through, at most 30 s (a cluster elects a
	// leader first).
	c, err := s.client()
	if err != nil {
		s.close()
		return nil, err
	}
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Put(ctx, "ldlm-bench-ready", "1")
		cancel()
		if err == nil {
			return s, nil
		}
		if time.Now().After(deadline) {
			s.close()
			return nil, fmt.Errorf("etcd on %v does not answer: %w", s.endpoints, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *etcdSystem) client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: s.endpoints, DialTimeout: 5 * time.Second})
}

func (s *etcdSystem) close() {
	for _, cmd := range s.cmds {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	os.RemoveAll(s.dir)
}

// workloads: each worker locks and unlocks a concurrency.Mutex (its own
// prefix, or one shared prefix when contended) on a session of its own,
// over one shared client connection.
func (s *etcdSystem) workloads(n int, contended bool) ([]namedWorkload, func(), error) {
	c, err := s.client()
	if err != nil {
		return nil, nil, err
	}
	var sessions []*concurrency.Session
	closeAll := func() {
		for _, se := range sessions {
			_ = se.Close()
		}
		_ = c.Close()
	}
	workers := make([]bench.Cycle, n)
	kind := bench.WorkContended
	if !contended {
		kind = bench.WorkUncontended
	}
	for i := range workers {
		se, err := concurrency.NewSession(c, concurrency.WithTTL(60))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		sessions = append(sessions, se)
		prefix := "/locks/c-" + s.runID
		if !contended {
			prefix = "/locks/u-" + s.runID + "-" + strconv.Itoa(i)
		}
		m := concurrency.NewMutex(se, prefix)
		workers[i] = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			defer cancel()
			if err := m.Lock(ctx); err != nil {
				return fmt.Errorf("lock %s: %w", prefix, err)
			}
			if err := m.Unlock(ctx); err != nil {
				return fmt.Errorf("unlock %s: %w", prefix, err)
			}
			return nil
		}
	}
	system := "etcd"
	if len(s.endpoints) > 1 {
		system = "etcd-" + strconv.Itoa(len(s.endpoints))
	}
	return []namedWorkload{{system: system, conns: "shared", Workload: bench.Workload{Name: kind, Workers: workers}}}, closeAll, nil
}
