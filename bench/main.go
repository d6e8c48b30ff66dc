// Command bench measures LDLM side by side with two other ways to lock over
// the network, in one run on one machine, alternating between them round
// after round so that a noisy machine treats them alike:
//
//   - ldlm: the lock service on an embedded NATS server, as `ldlm` runs it
//     (the same code as `ldlm bench`), clients over TCP; with --ldlm-server,
//     also ldlm-process: an ldlm server running in its own process;
//   - redis: SET NX PX and a compare-and-delete script on a local
//     redis-server started for the run (skipped when it is not installed);
//     contended, it polls every millisecond, as Redis lock clients do;
//   - jetstream-kv: Create and Delete (with the created revision) on a
//     JetStream key-value bucket of an embedded JetStream-enabled NATS
//     server (--kv-storage, --kv-replicas: a cluster of that many embedded
//     servers); contended, it polls every millisecond too;
//   - etcd: etcd's concurrency.Mutex on etcd servers started for the run
//     (--etcd-nodes of them; skipped when etcd is not installed).
//
// Run it from this directory: go run . [--short]. See BENCHMARKS.md.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ldlm-io/ldlm/internal/bench"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// config is what the peer run measures.
type config struct {
	rounds    int
	duration  time.Duration
	warmup    time.Duration
	workers   []int
	contended []int
	timeout   time.Duration
	redisPath string
	etcdPath  string
	etcdNodes int
	kvStorage string
	kvNodes   int
	ldlmURL   string
	systems   []string
	medians   bool
}

// system is one way to lock, opened for n workers.
type system interface {
	// workloads returns the uncontended and contended workloads of n
	// workers (either may be absent) and a function that ends them.
	workloads(n int, contended bool) ([]namedWorkload, func(), error)
	close()
}

// namedWorkload is a workload with its row labels.
type namedWorkload struct {
	system, conns string
	bench.Workload
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg := config{rounds: 5, duration: time.Second, warmup: 200 * time.Millisecond, timeout: 10 * time.Second}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	short := fs.Bool("short", false, "a few seconds in all: the same rows, figures too short to quote")
	fs.IntVar(&cfg.rounds, "rounds", cfg.rounds, "rounds of alternation")
	fs.DurationVar(&cfg.duration, "duration", cfg.duration, "run time of each workload in each round")
	workers := fs.String("workers", "1,8,64", "concurrencies of the uncontended workloads")
	contended := fs.String("contended", "8,64", "concurrencies of the contended workloads (one lock)")
	fs.StringVar(&cfg.redisPath, "redis-server", "redis-server", "the redis-server binary; the Redis rows are skipped when it is not found")
	fs.StringVar(&cfg.etcdPath, "etcd-server", "etcd", "the etcd binary; the etcd rows are skipped when it is not found")
	fs.IntVar(&cfg.etcdNodes, "etcd-nodes", 1, "etcd servers in the etcd cluster")
	fs.StringVar(&cfg.kvStorage, "kv-storage", "memory", "storage of the JetStream KV bucket: memory or file")
	fs.IntVar(&cfg.kvNodes, "kv-replicas", 1, "replicas of the JetStream KV bucket; above 1, a cluster of that many embedded NATS servers")
	fs.StringVar(&cfg.ldlmURL, "ldlm-server", "", "also measure the ldlm server at this NATS URL, running in its own process (row ldlm-process); several URLs, comma-separated, measure several servers side by side (rows ldlm-process@host:port)")
	fs.BoolVar(&cfg.medians, "medians", false, "also print each row's round rates and their median")
	systems := fs.String("systems", "ldlm,redis,jetstream-kv", "systems to measure: ldlm, redis, jetstream-kv, etcd")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *short {
		cfg.rounds, cfg.duration, cfg.warmup = 2, 60*time.Millisecond, 10*time.Millisecond
	}
	var err error
	if cfg.workers, err = parseInts(*workers); err == nil {
		cfg.contended, err = parseInts(*contended)
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	for _, name := range strings.Split(*systems, ",") {
		if name != "" { // --systems '' with --ldlm-server: that server alone
			cfg.systems = append(cfg.systems, name)
		}
	}
	if cfg.ldlmURL != "" {
		cfg.systems = append(cfg.systems, "ldlm-process")
	}
	if err := measure(cfg, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	return 0
}

func measure(cfg config, out, stderr io.Writer) error {
	ldlmURLs := strings.Split(cfg.ldlmURL, ",")
	var systems []system
	defer func() {
		for _, s := range systems {
			s.close()
		}
	}()
	for _, name := range cfg.systems {
		var (
			s   system
			err error
		)
		switch name {
		case "ldlm":
			s, err = startLDLM(cfg.timeout)
		case "ldlm-process":
			for _, url := range ldlmURLs[:len(ldlmURLs)-1] {
				s, err = connectLDLM(url, len(ldlmURLs) > 1, cfg.timeout)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				systems = append(systems, s)
			}
			s, err = connectLDLM(ldlmURLs[len(ldlmURLs)-1], len(ldlmURLs) > 1, cfg.timeout)
		case "redis":
			s, err = startRedis(cfg.redisPath, cfg.timeout)
			if err == errNoRedis {
				fmt.Fprintf(stderr, "bench: %s not found: skipping the Redis rows\n", cfg.redisPath)
				continue
			}
		case "jetstream-kv":
			s, err = startJetStream(cfg.kvStorage, cfg.kvNodes, cfg.timeout)
		case "etcd":
			s, err = startEtcd(cfg.etcdPath, cfg.etcdNodes, cfg.timeout)
			if err == errNoEtcd {
				fmt.Fprintf(stderr, "bench: %s not found: skipping the etcd rows\n", cfg.etcdPath)
				continue
			}
		default:
			err = fmt.Errorf("unknown system %q", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		systems = append(systems, s)
	}

	fmt.Fprintf(out, "bench (peers): %s, %s/%s, %d CPUs, %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"),
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(out, "%d rounds of %v per workload, alternating; a cycle is lock+unlock; vs echo/2 is against the echo of the same system, else ldlm's in-process echo;\n", cfg.rounds, cfg.duration)
	fmt.Fprintf(out, "clients: in this process, for every system; servers: ldlm and jetstream-kv in this process too (with the clients: flatters serial work),\n")
	fmt.Fprintf(out, "redis-server, etcd and ldlm-process (--ldlm-server) in processes of their own, as users run them\n")
	fmt.Fprintf(out, "CPU/cycle is this process's CPU only: it includes the embedded servers (ldlm, jetstream-kv) but not redis-server, etcd or an ldlm-process server\n\n")
	table := bench.NewTable(out)
	var medians []bench.Row
	var failed error
	groups := []struct {
		contended bool
		workers   []int
	}{{false, cfg.workers}, {true, cfg.contended}}
	for _, g := range groups {
		for _, n := range g.workers {
			var (
				ws     []namedWorkload
				closes []func()
			)
			for _, s := range systems {
				w, closeFn, err := s.workloads(n, g.contended)
				if err != nil {
					for _, c := range closes {
						c()
					}
					return err
				}
				ws = append(ws, w...)
				closes = append(closes, closeFn)
			}
			plain := make([]bench.Workload, len(ws))
			for i, w := range ws {
				plain[i] = w.Workload
			}
			stats := bench.Alternate(plain, cfg.rounds, cfg.duration, cfg.warmup, 10_000_000)
			for _, c := range closes {
				c()
			}
			rows := make([]bench.Row, len(ws))
			for i, w := range ws {
				rows[i] = bench.Row{System: w.system, Conns: bench.ConnMode(w.conns), Workers: n, Workload: w.Name, Stats: stats[i]}
				if failed == nil && stats[i].Err != nil {
					failed = fmt.Errorf("%s %s %d workers: %w", w.system, w.Name, n, stats[i].Err)
				}
			}
			setRatios(rows)
			for _, r := range rows {
				table.Add(r)
				medians = append(medians, r)
			}
		}
	}
	if cfg.medians {
		// The round rates in order, and their median: on a machine that
		// other work loads unevenly, the median says more than the mean.
		fmt.Fprintf(out, "\nround rates (cycles/s), in order, and their median:\n")
		for _, r := range medians {
			rates := slices.Clone(r.Stats.RoundRates)
			fmt.Fprintf(out, "%s %s %d %s:", r.System, r.Conns, r.Workers, r.Workload)
			for _, x := range rates {
				fmt.Fprintf(out, " %.0f", x)
			}
			slices.Sort(rates)
			if n := len(rates); n > 0 {
				fmt.Fprintf(out, "  median %.0f", (rates[(n-1)/2]+rates[n/2])/2)
			}
			fmt.Fprintln(out)
		}
	}
	return failed
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// setRatios sets each row's ratio against the echo of its own system, or
// of the first system with an echo (ldlm's) when it has none.
func setRatios(rows []bench.Row) {
	echo := map[string]float64{}
	first := 0.0
	for _, r := range rows {
		if r.Workload == bench.WorkEcho && r.Rate > 0 {
			echo[r.System] = r.Rate
			if first == 0 {
				first = r.Rate
			}
		}
	}
	for i, r := range rows {
		ref, ok := echo[r.System]
		if !ok {
			ref = first
		}
		if ref > 0 {
			rows[i].Ratio = r.Rate / ref
		}
	}
}
