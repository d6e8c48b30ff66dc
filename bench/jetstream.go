package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ldlm-io/ldlm/internal/bench"
)

// jsPoll is how often a contended JetStream KV client retries.
const jsPoll = time.Millisecond

// jetStreamSystem is an embedded JetStream-enabled NATS server with a
// key-value bucket in memory (LDLM keeps its locks in memory too), one
// replica.
type jetStreamSystem struct {
	ns      *server.Server
	dir     string
	timeout time.Duration
	runID   string
}

func startJetStream(timeout time.Duration) (*jetStreamSystem, error) {
	dir, err := os.MkdirTemp("", "ldlm-bench-js-")
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoSigs: true})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		os.RemoveAll(dir)
		return nil, errors.New("JetStream server not ready")
	}
	return &jetStreamSystem{ns: ns, dir: dir, timeout: timeout, runID: strconv.FormatInt(time.Now().UnixNano(), 36)}, nil
}

func (s *jetStreamSystem) close() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	os.RemoveAll(s.dir)
}

// workloads: each worker creates its key (failing if it exists) and
// deletes it with the revision it created, over one shared connection.
// Create of a key whose last entry is a delete marker is three round trips
// in nats.go (the create fails, a get finds the marker, an update with
// its revision), so a cycle after the first is four.
func (s *jetStreamSystem) workloads(n int, contended bool) ([]namedWorkload, func(), error) {
	nc, err := nats.Connect(s.ns.ClientURL(), nats.NoReconnect())
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "locks", Storage: jetstream.MemoryStorage, History: 1})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	workers := make([]bench.Cycle, n)
	kind := bench.WorkContended
	if !contended {
		kind = bench.WorkUncontended
	}
	for i := range workers {
		key := "c-" + s.runID
		if !contended {
			key = "u-" + s.runID + "-" + strconv.Itoa(i)
		}
		workers[i] = s.cycle(kv, key, contended)
	}
	return []namedWorkload{{system: "jetstream-kv", conns: "shared", Workload: bench.Workload{Name: kind, Workers: workers}}},
		nc.Close, nil
}

var lockValue = []byte("locked")

func (s *jetStreamSystem) cycle(kv jetstream.KeyValue, key string, poll bool) bench.Cycle {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		var rev uint64
		for {
			var err error
			rev, err = kv.Create(ctx, key, lockValue)
			if err == nil {
				break
			}
			if !poll || !errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("create %s: %w", key, err)
			}
			select {
			case <-time.After(jsPoll):
			case <-ctx.Done():
				return fmt.Errorf("lock %s: %w", key, ctx.Err())
			}
		}
		if err := kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
		return nil
	}
}
