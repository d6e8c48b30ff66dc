package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ldlm-io/ldlm/internal/bench"
)

// jsPoll is how often a contended JetStream KV client retries.
const jsPoll = time.Millisecond

// jetStreamSystem is embedded JetStream-enabled NATS servers (one, or a
// cluster of replicas servers) with a key-value bucket in memory (LDLM's
// memory mode keeps its locks in memory too) or in files, with that many
// replicas.
type jetStreamSystem struct {
	servers  []*server.Server
	dir      string
	storage  jetstream.StorageType
	replicas int
	timeout  time.Duration
	runID    string
}

func startJetStream(storage string, replicas int, timeout time.Duration) (*jetStreamSystem, error) {
	s := &jetStreamSystem{replicas: max(replicas, 1), timeout: timeout, runID: strconv.FormatInt(time.Now().UnixNano(), 36)}
	switch storage {
	case "memory":
		s.storage = jetstream.MemoryStorage
	case "file":
		s.storage = jetstream.FileStorage
	default:
		return nil, fmt.Errorf("--kv-storage must be memory or file, not %q", storage)
	}
	dir, err := os.MkdirTemp("", "ldlm-bench-js-")
	if err != nil {
		return nil, err
	}
	s.dir = dir
	var routes []*url.URL
	var ports []int
	for range s.replicas {
		port, err := freePort()
		if err != nil {
			s.close()
			return nil, err
		}
		ports = append(ports, port)
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: "127.0.0.1:" + strconv.Itoa(port)})
	}
	for i := range s.replicas {
		opts := &server.Options{ServerName: "kv" + strconv.Itoa(i), Host: "127.0.0.1", Port: server.RANDOM_PORT,
			JetStream: true, StoreDir: filepath.Join(dir, strconv.Itoa(i)), NoSigs: true}
		if s.replicas > 1 {
			opts.Cluster = server.ClusterOpts{Name: "kv", Host: "127.0.0.1", Port: ports[i]}
			opts.Routes = routes
		}
		ns, err := server.NewServer(opts)
		if err != nil {
			s.close()
			return nil, err
		}
		go ns.Start()
		s.servers = append(s.servers, ns)
	}
	for _, ns := range s.servers {
		if !ns.ReadyForConnections(10 * time.Second) {
			s.close()
			return nil, errors.New("JetStream server not ready")
		}
	}
	return s, nil
}

func (s *jetStreamSystem) close() {
	for _, ns := range s.servers {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
	os.RemoveAll(s.dir)
}

// bucket opens the bucket, waiting up to 30 s for a JetStream cluster to
// elect its meta leader.
func (s *jetStreamSystem) bucket(js jetstream.JetStream) (jetstream.KeyValue, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "locks", Storage: s.storage, Replicas: s.replicas, History: 1})
		cancel()
		if err == nil || time.Now().After(deadline) {
			return kv, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// workloads: each worker creates its key (failing if it exists) and
// deletes it with the revision it created, over one shared connection.
// Create of a key whose last entry is a delete marker is three round trips
// in nats.go (the create fails, a get finds the marker, an update with
// its revision), so a cycle after the first is four.
func (s *jetStreamSystem) workloads(n int, contended bool) ([]namedWorkload, func(), error) {
	nc, err := nats.Connect(s.servers[0].ClientURL(), nats.NoReconnect())
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	kv, err := s.bucket(js)
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
	system := "jetstream-kv"
	if s.storage == jetstream.FileStorage {
		system += "-file"
	}
	if s.replicas > 1 {
		system += "-r" + strconv.Itoa(s.replicas)
	}
	return []namedWorkload{{system: system, conns: "shared", Workload: bench.Workload{Name: kind, Workers: workers}}},
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
			if !poll || !taken(err) {
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

// taken reports an error of Create that means another worker holds the
// key: it exists, or (the create of a key with a delete marker is an update
// of the marker's revision) another worker's write came first.
func taken(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		errors.As(err, &apiErr) && apiErr.Description == "wrong last sequence"
}
