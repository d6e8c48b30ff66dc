package bench

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config says what Run measures and for how long.
type Config struct {
	// Rounds of the A B A B alternation; each round runs every workload
	// of a group once, for Duration.
	Rounds   int
	Duration time.Duration
	// Warmup is an uncounted run of each workload before the rounds.
	Warmup time.Duration
	// Workers are the concurrencies of the echo, uncontended and contended
	// workloads.
	Workers []int
	// Conns are the connection modes to run each concurrency with.
	Conns []ConnMode
	// Workloads are the lock workloads. The echoes come first in every
	// group unless Workloads names one of them itself.
	Workloads []string
	// NoEcho leaves out the echo workloads (and so the ratios), for
	// profiling a lock workload alone.
	NoEcho bool
	// SemaphoreWorkers is the concurrency of the semaphore workload.
	SemaphoreWorkers int
	// Timeout bounds every request.
	Timeout time.Duration
	// MaxCycles bounds the cycles of one worker in one run.
	MaxCycles int
}

// DefaultConfig is the full run recorded in BENCHMARKS.md: about two
// minutes.
func DefaultConfig() Config {
	return Config{
		Rounds:           5,
		Duration:         time.Second,
		Warmup:           200 * time.Millisecond,
		Workers:          []int{1, 8, 64},
		Conns:            []ConnMode{SharedConn, ConnPerWorker},
		Workloads:        []string{WorkUncontended, WorkContended, WorkSemaphore},
		SemaphoreWorkers: 32,
		Timeout:          10 * time.Second,
		MaxCycles:        10_000_000,
	}
}

// ShortConfig is DefaultConfig cut down to a few seconds, for CI: the same
// rows, with figures too short to quote.
func ShortConfig() Config {
	c := DefaultConfig()
	c.Rounds = 2
	c.Duration = 60 * time.Millisecond
	c.Warmup = 10 * time.Millisecond
	return c
}

// Row is one line of the results table.
type Row struct {
	System   string // "ldlm", or a peer: "redis", "jetstream-kv"
	Conns    ConnMode
	Workers  int
	Workload string
	Stats
	// Ratio is Rate divided by the rate of the echo of the same group (two
	// echo round trips a cycle, so this is cycles/s over echo/2). 0 when
	// the group has no echo.
	Ratio float64
	// RatioTCP is the same against the echo-tcp of the group, if any.
	RatioTCP float64
}

// Group is the workloads run alternately with one set of connections.
type Group struct {
	Conns     ConnMode
	Workers   int
	Workloads []string // echoes first
}

// Groups lists the groups cfg asks for, in run order, with the echo
// workloads given first in each.
func (cfg Config) Groups(echoes []string) []Group {
	var lockWork []string
	semaphore := false
	for _, w := range cfg.Workloads {
		if w == WorkSemaphore {
			semaphore = true
			continue
		}
		lockWork = append(lockWork, w)
	}
	var gs []Group
	for _, mode := range cfg.Conns {
		for _, n := range cfg.Workers {
			gs = append(gs, Group{Conns: mode, Workers: n, Workloads: append(slices.Clone(echoes), lockWork...)})
		}
		if semaphore {
			gs = append(gs, Group{Conns: mode, Workers: cfg.SemaphoreWorkers, Workloads: append(slices.Clone(echoes), WorkSemaphore)})
		}
	}
	return gs
}

// Run measures every group of cfg against t and prints the table to out,
// each group as it completes, then the derived figures.
func Run(t *Target, cfg Config, out io.Writer) ([]Row, error) {
	server, clients := t.Where()
	fmt.Fprintf(out, "ldlm bench, %s, %s/%s, %d CPUs, GOMAXPROCS %d, %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"),
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintf(out, "server:  %s\n", server)
	fmt.Fprintf(out, "clients: %s\n", clients)
	fmt.Fprintf(out, "%d rounds of %v per workload, alternating within each group; a cycle is lock+unlock, or two echo round trips\n",
		cfg.Rounds, cfg.Duration)
	if b := t.baselineDescription(); b != "" {
		fmt.Fprintf(out, "baseline: %s\n", b)
	}
	fmt.Fprintln(out)

	var rows []Row
	tw := NewTable(out)
	echoes := t.Echoes()
	if cfg.NoEcho || slices.Contains(cfg.Workloads, WorkEcho) || slices.Contains(cfg.Workloads, WorkEchoTCP) {
		echoes = nil // none, or the ones asked for
	}
	for _, g := range cfg.Groups(echoes) {
		// A baseline's workloads follow the ones under test, in the same
		// alternation.
		lockWork := g.Workloads[len(g.Workloads)-countLock(g.Workloads):]
		g.Workloads = append(g.Workloads, append(t.clientlibOf(lockWork), t.baselineOf(lockWork)...)...)
		ws, closeConns, err := t.Open(g.Workloads, g.Workers, g.Conns, cfg.Timeout)
		if err != nil {
			return rows, err
		}
		stats := Alternate(ws, cfg.Rounds, cfg.Duration, cfg.Warmup, cfg.MaxCycles)
		closeConns()
		group := make([]Row, len(stats))
		for i, st := range stats {
			system, workload := splitSystem(g.Workloads[i])
			group[i] = Row{System: system, Conns: g.Conns, Workers: g.Workers, Workload: workload, Stats: st}
		}
		SetRatios(group, WorkEcho, WorkEchoTCP)
		for _, r := range group {
			tw.Add(r)
		}
		rows = append(rows, group...)
	}
	fmt.Fprintln(out)
	PrintDerived(out, rows)
	for _, r := range rows {
		if r.Err != nil {
			return rows, fmt.Errorf("%s %s %d workers: %w", r.Workload, r.Conns, r.Workers, r.Err)
		}
	}
	return rows, nil
}

// countLock counts the lock workloads (not echoes) in ws.
func countLock(ws []string) int {
	n := 0
	for _, w := range ws {
		if w != WorkEcho && w != WorkEchoTCP {
			n++
		}
	}
	return n
}

// SetRatios sets the Ratio of every row to its rate over the rate of the
// row whose workload is ref, and RatioTCP likewise against refTCP.
func SetRatios(group []Row, ref, refTCP string) {
	for _, r := range group {
		if r.Rate <= 0 {
			continue
		}
		for i := range group {
			switch r.Workload {
			case ref:
				group[i].Ratio = group[i].Rate / r.Rate
			case refTCP:
				group[i].RatioTCP = group[i].Rate / r.Rate
			}
		}
	}
}

// Table prints rows in fixed columns, header first, so that rows printed
// as their group completes line up.
type Table struct {
	out    io.Writer
	header bool
}

// NewTable returns a table printing to out.
func NewTable(out io.Writer) *Table { return &Table{out: out} }

const tableFormat = "%-12s  %-10s  %7s  %-11s  %9s  %8s  %8s  %8s  %9s  %13s  %9s  %s\n"

// Add prints a row.
func (t *Table) Add(r Row) {
	if !t.header {
		fmt.Fprintf(t.out, tableFormat, "system", "conns", "workers", "workload", "cycles/s", "p50", "p99", "p99.9", "vs echo/2", "vs tcp echo/2", "CPU/cycle", "round rates min-max")
		t.header = true
	}
	ratio, ratioTCP := "-", "-"
	if r.Ratio > 0 {
		ratio = fmt.Sprintf("%.2f", r.Ratio)
	}
	if r.RatioTCP > 0 {
		ratioTCP = fmt.Sprintf("%.2f", r.RatioTCP)
	}
	spread := "-"
	if len(r.RoundRates) > 0 {
		spread = fmt.Sprintf("%.0f-%.0f", slices.Min(r.RoundRates), slices.Max(r.RoundRates))
	}
	if r.Err != nil {
		spread += "  ERROR: " + r.Err.Error()
	}
	cpu := "-"
	if r.CPUPerCycle >= 0 {
		cpu = Dur(r.CPUPerCycle)
	}
	fmt.Fprintf(t.out, tableFormat, r.System, r.Conns, strconv.Itoa(r.Workers), r.Workload,
		fmt.Sprintf("%.0f", r.Rate), Dur(r.P50), Dur(r.P99), Dur(r.P999), ratio, ratioTCP, cpu, spread)
}

// Dur prints a latency in microseconds, or milliseconds from 10 ms.
func Dur(d time.Duration) string {
	if d >= 10*time.Millisecond {
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
}

// PrintDerived prints what the contended rows say about hand-overs: a
// contended cycle rate is the rate of hand-overs, each of which costs one
// round trip (the grant's reply to the waiter, its unlock back to the
// service), and a FIFO queue of n workers makes each one wait about n
// hand-overs.
func PrintDerived(out io.Writer, rows []Row) {
	var lines []string
	for _, r := range rows {
		if r.Workload != WorkContended || r.Rate <= 0 || r.Workers < 2 {
			continue
		}
		rtt := time.Duration(0)
		for _, e := range rows {
			// The baseline shares the echo of the service under test.
			sameSystem := e.System == r.System || (r.System != "ldlm" && e.System == "ldlm")
			if sameSystem && e.Workload == WorkEcho && e.Conns == r.Conns && e.Workers == 1 {
				rtt = e.P50 / 2 // an echo cycle is two round trips
			}
		}
		handover := time.Duration(float64(time.Second) / r.Rate)
		line := fmt.Sprintf("contended %s %d workers: hand-over %s", r.Conns, r.Workers, Dur(handover))
		if r.System != "ldlm" {
			line = r.System + " " + line
		}
		if rtt > 0 {
			line += fmt.Sprintf(" = %.2f round trips (echo p50 round trip at 1 worker %s)", float64(handover)/float64(rtt), Dur(rtt))
		}
		queue := time.Duration(r.Workers) * handover
		line += fmt.Sprintf("; a FIFO turn of %d workers is %s: mean cycle %.2f x that, p99 %.2f x",
			r.Workers, Dur(queue), float64(r.Mean)/float64(queue), float64(r.P99)/float64(queue))
		lines = append(lines, line)
	}
	if len(lines) > 0 {
		fmt.Fprintln(out, strings.Join(lines, "\n"))
	}
}
