package bench

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

const benchUsage = `Usage:
  ldlm bench [flags]         measure the echo and lock+unlock cycles
  ldlm bench scale [flags]   measure memory and release times at scale (embedded only)

Without --server, ldlm bench starts the server as a process of its own,
this same binary, set up as ` + "`ldlm`" + ` runs it (embedded NATS, lock service
on an in-process connection), and its clients connect to it over TCP from
this process: clients and server in separate processes, as users run them.
--in-process runs the server in this process with the clients instead,
which flatters serial work; every table says where its clients ran.
See BENCHMARKS.md.

The clients are part of the measurement: they decode the replies as
clientlib does; --clientlib adds rows of the same cycles through the Go
client itself; --baseline-json-replies adds rows (system "baseline")
whose clients decode with encoding/json instead, round by round.

To compare two builds side by side, run both lock services on one NATS
server under different prefixes and name the older one with
--baseline-prefix: every lock workload then runs against both, round by
round, and the older one's rows say "baseline".

Flags:
`

// exitUsage is the exit status of a usage error, as everywhere in ldlm.
const exitUsage = 2

// Main is `ldlm bench`: args are what follows "bench", and it returns the
// exit status. The processes it starts run this same program as `PROGRAM
// bench server-process …` and `PROGRAM bench scale-client …`: a program
// that runs Main must run it for its command bench.
func Main(args []string, stdout, stderr io.Writer) int {
	useSelfCommands.Do(func() {
		if HelperCommand == nil {
			HelperCommand = func(url string, n int) *exec.Cmd {
				return benchCommand(helperCommand, url, strconv.Itoa(n))
			}
		}
		if ServerCommand == nil {
			ServerCommand = func(args []string) *exec.Cmd {
				return benchCommand(serverProcessCommand, args...)
			}
		}
	})
	if len(args) > 0 {
		switch args[0] {
		case "scale":
			return runBenchScale(args[1:], stdout, stderr)
		case helperCommand:
			return runBenchHelper(args[1:], stdout, stderr)
		case serverProcessCommand:
			return runBenchServerProcess(args[1:], stdout, stderr)
		}
	}
	cfg := DefaultConfig()
	fs := benchFlags("ldlm bench", stderr)
	server := fs.String("server", "", "NATS URL of a running lock service to measure (external); empty: start one in a process of its own")
	inProcess := fs.Bool("in-process", false, "run the server in this process with the clients (flatters serial work: not what users get)")
	prefix := fs.String("prefix", subjects.DefaultPrefix, "subject prefix of the external lock service")
	baseline := fs.String("baseline-prefix", "", "subject prefix of a second lock service on the same server to compare with, round by round (needs --server)")
	jsonBaseline := fs.Bool("baseline-json-replies", false, "add baseline rows whose clients decode replies with encoding/json (the client decoder before subjects.DecodeLockResponse); against the service under test unless --baseline-prefix names another")
	withClientlib := fs.Bool("clientlib", false, "add rows (system \"clientlib\") of the uncontended and contended workloads run through the Go client, on the same connections, round by round")
	short := fs.Bool("short", false, "a few seconds in all (for CI): same rows, figures too short to quote")
	rounds := fs.Int("rounds", cfg.Rounds, "rounds of alternation per group")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "run time of each workload in each round")
	workers := fs.String("workers", "1,8,64", "concurrencies, comma separated")
	conns := fs.String("conns", "shared,per-worker", "connection modes, comma separated: shared, per-worker")
	workloads := fs.String("workloads", "uncontended,contended,semaphore", "lock workloads, comma separated; the echoes run first in each group unless echo or echo-tcp is named here")
	fs.IntVar(&cfg.SemaphoreWorkers, "semaphore-workers", cfg.SemaphoreWorkers, "workers of the semaphore workload (size 8)")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "timeout of every request")
	fs.BoolVar(&cfg.NoEcho, "no-echo", false, "leave out the echo workloads (to profile a lock workload alone)")
	serviceOverTCP := fs.Bool("embedded-service-tcp", false, "experiment: connect the embedded lock service over TCP instead of in-process")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the server process to this file (--in-process: of this process, clients included); not with --server")
	memProfile := fs.String("memprofile", "", "write an allocation profile of the server process to this file (--in-process: of this process); not with --server")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if *short {
		s := ShortConfig()
		cfg.Rounds, cfg.Duration, cfg.Warmup = s.Rounds, s.Duration, s.Warmup
	} else {
		cfg.Rounds = *rounds
	}
	var err error
	if cfg.Workers, err = parseInts(*workers); err == nil {
		if cfg.Workloads, err = parseWorkloads(*workloads); err == nil {
			cfg.Conns, err = parseConns(*conns)
		}
	}
	switch {
	case err != nil:
	case fs.NArg() > 0:
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case cfg.Rounds < 1 || cfg.Duration <= 0 || cfg.Timeout <= 0 || cfg.SemaphoreWorkers < 1:
		err = errors.New("rounds, duration, timeout and semaphore workers must be positive")
	case *server != "" && (*cpuProfile != "" || *memProfile != ""):
		err = errors.New("profiles are of a server that ldlm bench starts: use them without --server")
	case *server != "" && *inProcess:
		err = errors.New("--in-process starts a server: use it without --server")
	case *server == "" && *baseline != "":
		err = errors.New("--baseline-prefix compares two services on one NATS server: give its URL with --server")
	}
	if err != nil {
		fmt.Fprintf(stderr, "ldlm bench: %v\n", err)
		return exitUsage
	}

	var t *Target
	// Profiles are this process's with --in-process, else the server
	// process's, which writes them when it stops.
	ownCPUProfile, ownMemProfile := *cpuProfile, *memProfile
	switch {
	case *server == "" && *inProcess:
		t, err = NewEmbeddedTarget(*serviceOverTCP)
	case *server == "":
		opts := ProcessOptions{ServiceOverTCP: *serviceOverTCP}
		if opts.CPUProfile, err = absPath(*cpuProfile); err == nil {
			opts.MemProfile, err = absPath(*memProfile)
		}
		ownCPUProfile, ownMemProfile = "", ""
		if err == nil {
			t, err = NewProcessTarget(opts)
		}
	default:
		t, err = NewExternalTarget(*server, *prefix)
		if err == nil && *baseline != "" {
			if err = t.SetBaseline(*baseline); err != nil {
				t.Close()
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "ldlm bench: %v\n", err)
		return 1
	}
	if *jsonBaseline {
		t.SetJSONBaseline()
	}
	if *withClientlib {
		t.SetClientlib()
	}

	err = profiled(ownCPUProfile, ownMemProfile, func() error {
		_, err := Run(t, cfg, stdout)
		return err
	})
	if err = cmp.Or(err, t.Close()); err != nil {
		fmt.Fprintf(stderr, "ldlm bench: %v\n", err)
		return 1
	}
	return 0
}

// benchFlags is the flag set of an `ldlm bench` command: its usage is
// benchUsage, then the flags.
func benchFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, benchUsage)
		fs.PrintDefaults()
	}
	return fs
}

// parseExit is the exit status after fs.Parse failed with err: 0 for
// --help, which printed the usage.
func parseExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return exitUsage
}

// runBenchScale is `ldlm bench scale`.
func runBenchScale(args []string, stdout, stderr io.Writer) int {
	cfg := DefaultScaleConfig()
	fs := benchFlags("ldlm bench scale", stderr)
	short := fs.Bool("short", false, "small sizes, a few seconds in all (for CI)")
	figures := fs.String("only", "", "run only these figures, comma separated: "+strings.Join(ScaleFigures, ","))
	serviceLocks := fs.String("locks", ints(cfg.ServiceLocks), "held locks through the service, for memory per lock")
	fs.IntVar(&cfg.EngineLocks, "engine-locks", cfg.EngineLocks, "held locks in the engine alone, for memory per lock")
	fs.IntVar(&cfg.Waiters, "waiters", cfg.Waiters, "waiters parked on one lock")
	fs.IntVar(&cfg.Conns, "conns", cfg.Conns, "client connections holding one lock each, then all closing")
	ownerLocks := fs.String("owner-locks", ints(cfg.OwnerLocks), "locks of one owner released at once")
	sweepConns := fs.String("sweep-conns", ints(cfg.SweepConns), "connections for the cost of a sweep")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	memProfile := fs.String("memprofile", "", "write an allocation profile of the whole run to this file")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if *short {
		cfg = ShortScaleConfig()
	} else {
		var err error
		if cfg.ServiceLocks, err = parseInts(*serviceLocks); err == nil {
			if cfg.OwnerLocks, err = parseInts(*ownerLocks); err == nil {
				cfg.SweepConns, err = parseInts(*sweepConns)
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "ldlm bench scale: %v\n", err)
			return exitUsage
		}
	}
	cfg.Only = splitList(*figures)
	for _, f := range cfg.Only {
		if !slices.Contains(ScaleFigures, f) {
			fmt.Fprintf(stderr, "ldlm bench scale: unknown figure %q\n", f)
			return exitUsage
		}
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ldlm bench scale: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	err := profiled(*cpuProfile, *memProfile, func() error { return RunScale(cfg, stdout) })
	if err != nil {
		fmt.Fprintf(stderr, "ldlm bench scale: %v\n", err)
		return 1
	}
	return 0
}

// The hidden subcommands of `ldlm bench`: scale-client holds connections
// for `ldlm bench scale` in a process of its own, server-process runs the
// measured server in a process of its own.
const (
	helperCommand        = "scale-client"
	serverProcessCommand = "server-process"
)

// useSelfCommands makes the first Main set HelperCommand and ServerCommand
// to this program, unless a test has set them.
var useSelfCommands sync.Once

// benchCommand runs this binary as `ldlm bench sub args...`.
func benchCommand(sub string, args ...string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe, append([]string{"bench", sub}, args...)...)
	cmd.Stderr = os.Stderr
	return cmd
}

// runBenchServerProcess is `ldlm bench server-process`: the server of
// `ldlm bench`, serving until its standard input ends.
func runBenchServerProcess(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ldlm bench "+serverProcessCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	overTCP := fs.Bool("embedded-service-tcp", false, "connect the lock service over TCP")
	cpuProfile := fs.String("cpuprofile", "", "CPU profile file")
	memProfile := fs.String("memprofile", "", "allocation profile file")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "ldlm bench server-process: started by ldlm bench, not by hand")
		return exitUsage
	}
	err := profiled(*cpuProfile, *memProfile, func() error { return ServeProcess(os.Stdin, stdout, *overTCP) })
	if err != nil {
		fmt.Fprintf(stderr, "ldlm bench server-process: %v\n", err)
		return 1
	}
	return 0
}

// absPath makes a file name given to ldlm bench absolute, so that the
// server process writes where it was asked whatever its directory.
func absPath(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	return filepath.Abs(p)
}

// runBenchHelper is `ldlm bench scale-client URL N`.
func runBenchHelper(args []string, stdout, stderr io.Writer) int {
	n := 0
	if len(args) == 2 {
		n, _ = strconv.Atoi(args[1])
	}
	if n < 1 {
		fmt.Fprintln(stderr, "ldlm bench scale-client: want URL N")
		return exitUsage
	}
	if err := ScaleClient(args[0], n, 10*time.Minute, os.Stdin, stdout); err != nil {
		fmt.Fprintln(stdout, "error:", err)
		return 1
	}
	return 0
}

// profiled runs run, writing a CPU profile of it to cpuPath and then an
// allocation profile to memPath when they are not empty, and returns the
// first error.
func profiled(cpuPath, memPath string, run func() error) error {
	var cpu *os.File
	if cpuPath != "" {
		f, err := os.Create(cpuPath)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		cpu = f
	}
	err := run()
	if cpu != nil {
		pprof.StopCPUProfile()
		err = cmp.Or(err, cpu.Close())
	}
	if memPath != "" {
		f, ferr := os.Create(memPath)
		if ferr == nil {
			runtime.GC()
			ferr = cmp.Or(pprof.Lookup("allocs").WriteTo(f, 0), f.Close())
		}
		err = cmp.Or(err, ferr)
	}
	return err
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("an empty list of numbers")
	}
	return out, nil
}

func ints(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func parseWorkloads(s string) ([]string, error) {
	known := []string{WorkEcho, WorkEchoTCP, WorkUncontended, WorkContended, WorkSemaphore}
	names := splitList(s)
	for _, n := range names {
		if !slices.Contains(known, n) {
			return nil, fmt.Errorf("unknown workload %q (workloads: %s)", n, strings.Join(known, ", "))
		}
	}
	return names, nil
}

func parseConns(s string) ([]ConnMode, error) {
	var out []ConnMode
	for _, f := range splitList(s) {
		m := ConnMode(f)
		if m != SharedConn && m != ConnPerWorker {
			return nil, fmt.Errorf("connection mode %q: want shared or per-worker", f)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, errors.New("no connection mode")
	}
	return out, nil
}
