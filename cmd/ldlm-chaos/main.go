// Command ldlm-chaos tries hard to make the LDLM lock service grant a lock
// twice or lose one, and checks that it never does.
//
//	ldlm-chaos [run] [flags]   run a chaos test and report (exit 1 on any violation or leak)
//	ldlm-chaos worker [flags]  a worker process (started by run, not by hand)
//
// A run starts the lock service and worker processes that take locks of
// size 1 and size k with the Go client (clientlib, with sessions), some
// with lock timeouts renewed in the background, some with wait timeouts. A
// worker records every critical section in its own file as it goes: lock,
// size, fencing token, when the grant arrived and when it stopped treating
// itself as the holder (before Unlock, or when Lock.Done fired, with the
// cause).
//
// How the service runs depends on -state:
//
//   - memory (default): a real NATS server inside this process (accounts
//     APP and SYS, on a fixed port so that it can be restarted at the same
//     address) and the ldlm binary in external mode, with system account
//     credentials so it follows disconnect advisories;
//   - jetstream: the same NATS server with JetStream (file storage in the
//     run's folder) and 1 + -standbys ldlm instances with
//     LDLM_STATE=jetstream: one active, the others standbys;
//   - datadir: the single binary, ldlm with its embedded NATS server and
//     LDLM_DATA_DIR; the workers connect to that embedded server;
//   - cluster: three ldlm binaries whose embedded servers form one NATS
//     cluster with JetStream (as deploy/cluster.yml); the workers list the
//     three members.
//
// Meanwhile the run injects faults at random, the kinds its state allows:
// kill -9 of a worker (and a new one started), a kick of a worker's
// connection by the NATS server ($SYS.REQ.SERVER.<id>.KICK), a restart of
// the NATS server, SIGTERM or kill -9 of the lock service (memory), of the
// active instance (jetstream: a standby takes over, the stopped one starts
// again as a standby), of the single binary (datadir: started again on the
// same folder), or of one cluster member (cluster: started again, as a
// supervisor would). After each service fault it waits until the service
// answers again. At the end it stops the workers, checks that the service
// holds no lock any more, and checks the records: at no instant may a
// lock have more live holders than its size (see Check for when a holder
// stops being live: a fault that keeps the state ends no grant), and a
// grant requested after another grant of the lock must have a larger
// token. It counts the holders that lost their lock through a fault that
// keeps the state (the goal is none).
//
// Short runs (what `go test ./cmd/ldlm-chaos` does: 30 s in memory, 20 s
// in each durable mode):
//
//	go run ./cmd/ldlm-chaos -duration 30s
//	go run ./cmd/ldlm-chaos -state cluster -duration 30s
//
// Long run:
//
//	go run ./cmd/ldlm-chaos -duration 10m -workers 8 -sessions 3 -locks 12 -fault-every 2s
//
// The ldlm binary is built from this module unless -ldlm names one. See
// RELIABILITY.md for the figures of recorded runs.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// exitUsage is the exit status for bad flags.
const exitUsage = 2

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runChaos(args, stdout, stderr)
	case "worker":
		return runWorker(args, stderr)
	default:
		fmt.Fprintf(stderr, "ldlm-chaos: unknown command %q (want run or worker)\n", cmd)
		return exitUsage
	}
}

func runChaos(args []string, stdout, stderr io.Writer) int {
	cfg, keep, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ldlm-chaos: %v\n", err)
		return exitUsage
	}
	if cfg.Dir == "" {
		if cfg.Dir, err = os.MkdirTemp("", "ldlm-chaos-"); err != nil {
			fmt.Fprintf(stderr, "ldlm-chaos: %v\n", err)
			return 1
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		fmt.Fprintf(stderr, "ldlm-chaos: %v\n", err)
		return 1
	}
	if cfg.LDLM == "" {
		fmt.Fprintln(stderr, "building the ldlm binary…")
		if cfg.LDLM, err = buildLDLM(cfg.Dir, false); err != nil {
			fmt.Fprintf(stderr, "ldlm-chaos: %v\n", err)
			return 1
		}
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "ldlm-chaos: finding this program to run workers: %v\n", err)
		return 1
	}
	cfg.WorkerCmd = []string{self, "worker"}
	cfg.WorkerEnv = cleanEnv()
	cfg.Progress = stderr

	sum, err := Run(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "ldlm-chaos: the run could not be completed: %v (logs in %s)\n", err, cfg.Dir)
		return 1
	}
	if sum.OK() && !keep {
		os.RemoveAll(cfg.Dir)
		sum.RecordsKept = ""
	}
	sum.Report(stdout)
	if !sum.OK() {
		return 1
	}
	return 0
}

// parseConfig reads the flags of a run. keep is whether to keep the records
// of a run that passed.
func parseConfig(args []string, stderr io.Writer) (cfg Config, keep bool, err error) {
	fs := flag.NewFlagSet("ldlm-chaos run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.State, "state", modeMemory, "how the lock service keeps its state and runs: "+strings.Join(modes, ", ")+" (see the package doc)")
	fs.IntVar(&cfg.Standbys, "standbys", 2, "-state jetstream: instances besides the active")
	fs.DurationVar(&cfg.Grace, "reconnect-grace", 5*time.Second, "the lock service's LDLM_RECONNECT_GRACE")
	fs.DurationVar(&cfg.Duration, "duration", 30*time.Second, "how long to inject faults")
	fs.IntVar(&cfg.Workers, "workers", 6, "worker processes at once")
	fs.IntVar(&cfg.Sessions, "sessions", 2, "goroutines taking locks in each worker")
	fs.IntVar(&cfg.Locks, "locks", 8, "lock names; every third is a semaphore of size -size-k, the others have size 1")
	fs.IntVar(&cfg.SizeK, "size-k", 3, "size of the semaphore locks")
	fs.DurationVar(&cfg.FaultEvery, "fault-every", 2*time.Second, "mean time between faults (the fault rate)")
	faults := fs.String("faults", "", "kinds of faults to inject, comma separated; default: every kind the state allows ("+faultsHelp()+")")
	fs.DurationVar(&cfg.Sweep, "sweep-interval", 5*time.Second, "the lock service's LDLM_SWEEP_INTERVAL")
	fs.Uint64Var(&cfg.Seed, "seed", uint64(time.Now().UnixNano()), "seed of the random choices (fault kinds and gaps, what workers lock); timing still makes every run different")
	fs.StringVar(&cfg.Dir, "dir", "", "directory for records and logs; default: a new temporary directory")
	fs.StringVar(&cfg.LDLM, "ldlm", "", "the ldlm binary; default: build it from this module")
	fs.BoolVar(&keep, "keep", false, "keep the records and logs of a run that passed")
	if err := fs.Parse(args); err != nil {
		return cfg, keep, err
	}
	if fs.NArg() > 0 {
		return cfg, keep, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	allowed, ok := modeFaults[cfg.State]
	if !ok {
		return cfg, keep, fmt.Errorf("unknown -state %q (want one of %s)", cfg.State, strings.Join(modes, ", "))
	}
	if *faults == "" {
		*faults = strings.Join(allowed, ",")
	}
	for _, k := range strings.Split(*faults, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		if !contains(allowed, k) {
			return cfg, keep, fmt.Errorf("fault kind %q is not one of -state %s (%s)", k, cfg.State, strings.Join(allowed, ", "))
		}
		cfg.Faults = append(cfg.Faults, k)
	}
	switch {
	case cfg.Standbys < 1 || cfg.Grace <= 0:
		return cfg, keep, errors.New("-standbys must be at least 1 and -reconnect-grace positive")
	case cfg.Duration <= 0 || cfg.FaultEvery <= 0 || cfg.Sweep <= 0:
		return cfg, keep, errors.New("-duration, -fault-every and -sweep-interval must be positive")
	case cfg.Workers < 1 || cfg.Sessions < 1 || cfg.Locks < 1 || cfg.SizeK < 1:
		return cfg, keep, errors.New("-workers, -sessions, -locks and -size-k must be at least 1")
	case len(cfg.Faults) == 0:
		return cfg, keep, errors.New("-faults names no fault kind")
	}
	return cfg, keep, nil
}

// faultsHelp lists the fault kinds of each state, for -help.
func faultsHelp() string {
	var parts []string
	for _, m := range modes {
		parts = append(parts, m+": "+strings.Join(modeFaults[m], ","))
	}
	return strings.Join(parts, "; ")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
