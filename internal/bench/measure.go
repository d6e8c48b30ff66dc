// Package bench measures LDLM: the NATS transport limit (a plain
// request-reply echo), lock and unlock cycles through the lock service, and
// scale figures (memory per lock and per waiter, release on disconnect,
// connection sweeps). `ldlm bench` is its command line; the peers (Redis,
// JetStream KV) live in the separate module in bench/ and reuse the
// measuring code here.
package bench

import (
	"slices"
	"sync"
	"time"
)

// Cycle runs one cycle of one worker (for a lock: lock, then unlock) and
// reports whether it failed. A worker stops at its first error.
type Cycle func() error

// Sample is what one timed run of a set of workers produced.
type Sample struct {
	Cycles  int
	Elapsed time.Duration
	// Latencies holds the duration of every cycle, in no order.
	Latencies []time.Duration
	// CPU is the user and system CPU time spent meanwhile by the process,
	// or by the processes its CPU function reads (see Workload.CPU); -1
	// when it could not be read.
	CPU time.Duration
	Err error // the first error of any worker
}

// Measure runs every worker in its own goroutine, each cycle after cycle,
// until d has passed or the worker has run maxCycles cycles; a cycle that
// has begun is always finished (an unlock always follows its lock). Elapsed
// runs from the common start until the last worker stopped.
func Measure(workers []Cycle, d time.Duration, maxCycles int) Sample {
	return measure(workers, d, maxCycles, ownCPU)
}

// ownCPU is processCPU as a CPU function of a Workload.
func ownCPU() (time.Duration, error) { return processCPU(), nil }

// measure is Measure with the CPU time read from cpu.
func measure(workers []Cycle, d time.Duration, maxCycles int, cpu func() (time.Duration, error)) Sample {
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		lats  = make([][]time.Duration, len(workers))
		errs  = make([]error, len(workers))
	)
	var deadline time.Time
	for i, cycle := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			own := make([]time.Duration, 0, 1024)
			<-start
			for n := 0; n < maxCycles; n++ {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				if err := cycle(); err != nil {
					errs[i] = err
					break
				}
				own = append(own, time.Since(t0))
			}
			lats[i] = own
		}()
	}
	cpu0, cpuErr := cpu()
	t0 := time.Now()
	deadline = t0.Add(d) // written before the workers read it: they wait on start
	close(start)
	wg.Wait()
	s := Sample{Elapsed: time.Since(t0), CPU: -1}
	if cpu1, err := cpu(); err == nil && cpuErr == nil {
		s.CPU = cpu1 - cpu0
	}
	for i := range workers {
		s.Cycles += len(lats[i])
		s.Latencies = append(s.Latencies, lats[i]...)
		if s.Err == nil && errs[i] != nil {
			s.Err = errs[i]
		}
	}
	return s
}

// Stats summarises the samples of one workload over all its rounds.
type Stats struct {
	Cycles  int
	Elapsed time.Duration
	Rate    float64 // cycles per second over all rounds
	// RoundRates is the rate of each round, to show the spread.
	RoundRates          []float64
	P50, P99, P999, Max time.Duration
	Mean                time.Duration
	// CPUPerCycle is the CPU time per cycle of the process, or of the
	// processes the workload's CPU function reads; -1 when unknown.
	CPUPerCycle time.Duration
	Err         error
}

// Summarise merges the samples of the rounds of one workload.
func Summarise(samples []Sample) Stats {
	var st Stats
	var all []time.Duration
	var cpu time.Duration
	cpuKnown := true
	for _, s := range samples {
		cpu += s.CPU
		cpuKnown = cpuKnown && s.CPU >= 0
		st.Cycles += s.Cycles
		st.Elapsed += s.Elapsed
		all = append(all, s.Latencies...)
		if s.Elapsed > 0 {
			st.RoundRates = append(st.RoundRates, float64(s.Cycles)/s.Elapsed.Seconds())
		}
		if st.Err == nil {
			st.Err = s.Err
		}
	}
	if st.Elapsed > 0 {
		st.Rate = float64(st.Cycles) / st.Elapsed.Seconds()
	}
	switch {
	case !cpuKnown:
		st.CPUPerCycle = -1
	case st.Cycles > 0:
		st.CPUPerCycle = cpu / time.Duration(st.Cycles)
	}
	if len(all) == 0 {
		return st
	}
	slices.Sort(all)
	var sum time.Duration
	for _, d := range all {
		sum += d
	}
	st.Mean = sum / time.Duration(len(all))
	st.P50 = quantile(all, 0.50)
	st.P99 = quantile(all, 0.99)
	st.P999 = quantile(all, 0.999)
	st.Max = all[len(all)-1]
	return st
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// Workload is a named set of workers that can run several rounds.
type Workload struct {
	Name    string
	Workers []Cycle
	// CPU reads the CPU time of the processes that the workload's CPU per
	// cycle covers; nil: this process's.
	CPU func() (time.Duration, error)
}

// Alternate runs the workloads one after the other, round after round (A B
// C A B C …), so that a slow phase of a noisy machine hits every workload
// alike and the ratios between them hold. Each run lasts d (plus the time
// to finish the cycles under way); warm-up runs of warm each are made first
// and not counted. It returns one summary per workload, in order.
func Alternate(workloads []Workload, rounds int, d, warm time.Duration, maxCycles int) []Stats {
	samples := make([][]Sample, len(workloads))
	if warm > 0 {
		for _, w := range workloads {
			Measure(w.Workers, warm, maxCycles)
		}
	}
	for range rounds {
		for i, w := range workloads {
			cpu := w.CPU
			if cpu == nil {
				cpu = ownCPU
			}
			samples[i] = append(samples[i], measure(w.Workers, d, maxCycles, cpu))
		}
	}
	stats := make([]Stats, len(workloads))
	for i := range workloads {
		stats[i] = Summarise(samples[i])
	}
	return stats
}
