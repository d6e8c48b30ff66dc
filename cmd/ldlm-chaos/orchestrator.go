package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// Config says how long and how hard to shake the lock service.
type Config struct {
	State      string        // where the service keeps its state, and how it is deployed: modeMemory, …
	Standbys   int           // modeJetStream: instances besides the active
	Grace      time.Duration // the service's LDLM_RECONNECT_GRACE
	Duration   time.Duration // how long faults are injected
	Workers    int           // worker processes at once
	Sessions   int           // goroutines taking locks in each worker
	Locks      int           // lock names
	SizeK      int           // size of every third lock (the others have size 1)
	FaultEvery time.Duration // mean time between faults
	Faults     []string      // kinds of faults to inject (faultKinds)
	Sweep      time.Duration // the service's LDLM_SWEEP_INTERVAL
	Seed       uint64
	Dir        string   // records and logs go here
	LDLM       string   // the ldlm binary
	WorkerCmd  []string // how to run a worker: program and leading args; worker flags follow
	WorkerEnv  []string // the workers' whole environment
	Progress   io.Writer
}

// Summary is the outcome of a chaos run.
type Summary struct {
	Config       Config
	Elapsed      time.Duration
	Sections     int // critical sections (operations)
	Unchecked    int // sections whose request spanned a cut of their connection
	Faults       map[string]int
	Skipped      int            // faults that found no target (no worker connected to kick)
	Violations   []Violation    // more holders than slots, tokens out of order
	Leaks        []string       // locks still held or waited for when everyone was gone
	FreeAfter    time.Duration  // how long after the last worker stopped every lock was free
	Problems     []string       // unexpected exits, records that make no sense, …
	LockErrors   map[string]int // failed Lock calls by kind
	Lost         map[string]int // sections ended by Lock.Done, by cause
	UnlockErrors map[string]int // failed Unlocks by kind
	Unlocks      int
	Delays       map[string]*Delays
	Takeovers    map[string]*Takeover // holders through faults that keep the state, by kind
	SelfExits    int                  // durable modes: ldlm processes that exited with status 1 by themselves and were started again
	ActiveKills  int                  // node-kill: kills of the member whose instance was the active
	Instances    int                  // lock service processes run
	WorkersRun   int                  // worker processes run
	RecordsKept  string               // the directory of records and logs; "" once removed
}

// OK reports whether the run found nothing wrong.
func (s Summary) OK() bool {
	return len(s.Violations) == 0 && len(s.Leaks) == 0 && len(s.Problems) == 0
}

// orchestrator runs one chaos run. All its fields belong to the goroutine
// that calls run; the child processes' watchers only close proc.exited.
type orchestrator struct {
	cfg       Config
	rng       *rand.Rand
	nats      *natsServer // nil when the nodes embed their NATS servers
	app, sys  *nats.Conn  // the orchestrator's own connections (admin requests; kicks: nil without nats)
	nodes     []*node     // the ldlm processes (see node)
	instances []Instance  // memory mode: one per service process, for the tokens it granted

	workerURL, workerUser, workerPassword string // how workers connect
	faults                                []Fault
	workers                               map[int]*proc // running workers by id
	allWork                               map[int]*proc // every worker ever started
	nextID                                int
	killed                                map[int]Fault // workers killed by us: their open section ends at the kill
	faultPlan                             []string      // kinds still to inject in this round
	picked                                int           // faults picked so far (nextFault)
	sum                                   Summary
}

func (o *orchestrator) logf(format string, args ...any) {
	if o.cfg.Progress != nil {
		fmt.Fprintf(o.cfg.Progress, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}
}

func (o *orchestrator) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	o.sum.Problems = append(o.sum.Problems, msg)
	o.logf("PROBLEM: %s", msg)
}

// Run runs the lock service, NATS and the workers, injects faults for
// cfg.Duration, stops everyone, and checks the records. An error means the
// run itself could not be done; what the run found is in the Summary.
func Run(cfg Config) (Summary, error) {
	o := &orchestrator{
		cfg:     cfg,
		rng:     rand.New(rand.NewPCG(cfg.Seed, 0x63686173)),
		workers: map[int]*proc{},
		allWork: map[int]*proc{},
		killed:  map[int]Fault{},
		sum: Summary{Config: cfg, Faults: map[string]int{}, LockErrors: map[string]int{}, Lost: map[string]int{},
			UnlockErrors: map[string]int{}, Takeovers: map[string]*Takeover{}, RecordsKept: cfg.Dir},
	}
	start := time.Now()
	err := o.run()
	o.cleanup()
	o.sum.Elapsed = time.Since(start)
	if err != nil {
		return o.sum, err
	}
	o.check()
	return o.sum, nil
}

func (o *orchestrator) run() error {
	if err := o.setUp(); err != nil {
		return err
	}
	for range o.cfg.Workers {
		if err := o.startWorker(); err != nil {
			return err
		}
	}
	o.logf("running %s with state %s: %d workers x %d sessions on %d locks, a fault every ~%s; records in %s",
		o.cfg.Duration, o.cfg.State, o.cfg.Workers, o.cfg.Sessions, o.cfg.Locks, o.cfg.FaultEvery, o.cfg.Dir)

	deadline := time.Now().Add(o.cfg.Duration)
	for {
		// Exponential gaps: faults sometimes come in quick succession.
		gap := time.Duration(o.rng.ExpFloat64() * float64(o.cfg.FaultEvery))
		gap = min(max(gap, 100*time.Millisecond), 4*o.cfg.FaultEvery)
		// Every kind at least once (a first round), even past the
		// duration: a short run with long gaps would miss some.
		if time.Now().Add(gap).After(deadline) && o.picked >= len(o.cfg.Faults) {
			time.Sleep(time.Until(deadline))
			break
		}
		time.Sleep(gap)
		if err := o.checkProcesses(); err != nil {
			return err
		}
		if err := o.inject(o.nextFault()); err != nil {
			return err
		}
	}
	if err := o.checkProcesses(); err != nil {
		return err
	}
	o.stopWorkers()
	o.checkLeaks()
	o.stopNodes()
	return nil
}

// nextFault picks the next kind: every kind once per round, in random
// order, so that a short run still sees every kind.
func (o *orchestrator) nextFault() string {
	o.picked++
	if len(o.faultPlan) == 0 {
		o.faultPlan = slices.Clone(o.cfg.Faults)
		o.rng.Shuffle(len(o.faultPlan), func(i, j int) {
			o.faultPlan[i], o.faultPlan[j] = o.faultPlan[j], o.faultPlan[i]
		})
	}
	kind := o.faultPlan[0]
	o.faultPlan = o.faultPlan[1:]
	return kind
}

func (o *orchestrator) inject(kind string) error {
	switch kind {
	case faultKillWorker:
		return o.killWorker()
	case faultKick:
		return o.kickWorker()
	case faultNATSRestart:
		return o.restartNATS()
	case faultServiceTerm:
		return o.restartNode(o.activeNode(), syscall.SIGTERM, kind)
	case faultServiceKill, faultActiveKill, faultDataDirKill:
		return o.restartNode(o.activeNode(), syscall.SIGKILL, kind)
	case faultNodeKill:
		// Half the time the active's member (its standbys must take
		// over while JetStream elects new leaders), else another one:
		// a random pick would hit the active only a third of the time.
		active := o.activeNode()
		i := o.rng.IntN(len(o.nodes))
		if o.rng.IntN(2) == 0 && active >= 0 {
			i = active
		}
		if i == active {
			o.sum.ActiveKills++
		}
		return o.restartNode(i, syscall.SIGKILL, kind)
	}
	return fmt.Errorf("unknown fault kind %q", kind)
}

func (o *orchestrator) record(f Fault) {
	o.faults = append(o.faults, f)
	o.sum.Faults[f.Kind]++
}

// randomWorker returns the id of a running worker.
func (o *orchestrator) randomWorker() int {
	ids := make([]int, 0, len(o.workers))
	for id := range o.workers {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	return ids[o.rng.IntN(len(ids))]
}

func (o *orchestrator) killWorker() error {
	id := o.randomWorker()
	p := o.workers[id]
	at := time.Now()
	p.kill()
	f := Fault{Kind: faultKillWorker, At: at, Done: p.exitAt, Worker: id, Instance: -1}
	o.record(f)
	o.killed[id] = f
	delete(o.workers, id)
	o.logf("kill -9 worker %d", id)
	return o.startWorker()
}

func (o *orchestrator) kickWorker() error {
	// A worker may be between connections: try them all in random order.
	ids := make([]int, 0, len(o.workers))
	for id := range o.workers {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	o.rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	for _, id := range ids {
		cid, ok := o.nats.clientID(workerConnName(id))
		if !ok {
			continue
		}
		at := time.Now()
		if err := o.nats.kick(o.sys, cid); err != nil {
			o.logf("kick of worker %d failed (it may have reconnected meanwhile): %v", id, err)
			continue
		}
		o.record(Fault{Kind: faultKick, At: at, Done: time.Now(), Worker: id, Instance: -1})
		o.logf("kicked worker %d (client %d)", id, cid)
		return nil
	}
	o.sum.Skipped++
	o.logf("no worker connected to kick")
	return nil
}

func (o *orchestrator) restartNATS() error {
	at := time.Now()
	o.nats.Stop()
	// The service lives on and keeps its state; its clients' sessions
	// stay for the grace while they reconnect.
	o.record(Fault{Kind: faultNATSRestart, At: at, Done: time.Now(), Worker: -1, Instance: -1, Node: -1,
		Keeps: true, Grace: o.cfg.Grace})
	time.Sleep(time.Duration(100+o.rng.IntN(900)) * time.Millisecond)
	if err := o.nats.Start(); err != nil {
		return err
	}
	o.logf("restarted NATS")
	// The next fault waits until the service is back.
	if err := o.waitHealthy(); err != nil {
		return fmt.Errorf("after a NATS restart: %w", err)
	}
	return nil
}

// restartNode stops node i with sig, records when it died (the process was
// reaped), starts it again and waits until the service answers. In memory
// mode the state died with the process; in the others it is kept (a
// standby takes over, or the node's new process loads it).
func (o *orchestrator) restartNode(i int, sig syscall.Signal, kind string) error {
	if i < 0 {
		// A takeover is under way (the last fault's, or a self-exit's):
		// wait for it rather than hit nobody.
		if err := o.waitHealthy(); err != nil {
			return err
		}
		if i = o.activeNode(); i < 0 {
			return fmt.Errorf("%s: no node is the active one although the service answers", kind)
		}
	}
	n := o.nodes[i]
	p := n.p
	role := o.role(n)
	at := time.Now()
	if !p.signal(sig, 30*time.Second) {
		o.problem("%s did not exit within 30s of %v; killed", n.name, sig)
		p.kill()
	}
	f := Fault{Kind: kind, At: at, Done: p.exitAt, Worker: -1, Instance: -1, Node: i}
	if o.durable() {
		f.Keeps, f.Grace = true, o.cutGrace()
	} else {
		f.Instance = len(o.instances) - 1
		o.instances[f.Instance].Stopped = p.exitAt
	}
	o.record(f)
	if sig == syscall.SIGTERM && p.exitCode() != 0 {
		o.problem("%s exited with status %d after SIGTERM (66: a data race):\n%s", n.name, p.exitCode(), p.logTail())
	}
	o.logf("%s: %s (%s) stopped after %s", kind, n.name, role, p.exitAt.Sub(at).Round(time.Millisecond))
	if err := o.startNode(i); err != nil {
		return err
	}
	// The next fault waits until the service is back.
	if err := o.waitHealthy(); err != nil {
		return fmt.Errorf("after %s of %s: %w", kind, n.name, err)
	}
	return nil
}

func (o *orchestrator) startWorker() error {
	id := o.nextID
	o.nextID++
	wc := workerConfig{ID: id, URL: o.workerURL, User: o.workerUser, Password: o.workerPassword,
		Out: o.recordsPath(id), Locks: o.cfg.Locks,
		SizeK: o.cfg.SizeK, Sessions: o.cfg.Sessions, Seed: o.rng.Uint64()}
	argv := append(slices.Clone(o.cfg.WorkerCmd), wc.args()...)
	p, err := startProc(argv, o.cfg.WorkerEnv, filepath.Join(o.cfg.Dir, fmt.Sprintf("worker-%d.log", id)))
	if err != nil {
		return err
	}
	o.workers[id] = p
	o.allWork[id] = p
	o.sum.WorkersRun++
	return nil
}

// checkProcesses notes processes that exited without being asked to, and
// replaces them.
func (o *orchestrator) checkProcesses() error {
	var gone []int
	for id, p := range o.workers {
		if !p.running() {
			o.problem("worker %d exited by itself (status %d):\n%s", id, p.exitCode(), p.logTail())
			gone = append(gone, id)
		}
	}
	for _, id := range gone {
		delete(o.workers, id)
		if err := o.startWorker(); err != nil {
			return err
		}
	}
	for _, n := range o.nodes {
		if !n.p.running() {
			return o.waitHealthy() // it starts the node again
		}
	}
	return nil
}

// stopWorkers asks every worker to stop (SIGTERM: finish the section,
// unlock, close); a worker that does not within 30s is killed.
func (o *orchestrator) stopWorkers() {
	for _, p := range o.workers {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.Now().Add(30 * time.Second)
	for id, p := range o.workers {
		select {
		case <-p.exited:
			if code := p.exitCode(); code != 0 && !o.termedBeforeStart(id, p) {
				o.problem("worker %d exited with status %d after SIGTERM:\n%s", id, code, p.logTail())
			}
		case <-time.After(time.Until(deadline)):
			o.problem("worker %d did not stop within 30s of SIGTERM; killed", id)
			at := time.Now()
			p.kill()
			f := Fault{Kind: faultKillWorker, At: at, Done: p.exitAt, Worker: id, Instance: -1}
			o.faults = append(o.faults, f) // not counted as an injected fault
			o.killed[id] = f
		}
	}
	o.workers = map[int]*proc{}
}

// termedBeforeStart reports that worker id was stopped by SIGTERM before it
// set up its handler for it: it creates its records file right after, so
// it has none. It took no lock and has nothing to finish.
func (o *orchestrator) termedBeforeStart(id int, p *proc) bool {
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	_, err := os.Stat(o.recordsPath(id))
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM && errors.Is(err, fs.ErrNotExist)
}

// recordsPath is the file in which worker id records its critical sections.
func (o *orchestrator) recordsPath(id int) string {
	return filepath.Join(o.cfg.Dir, fmt.Sprintf("worker-%d.jsonl", id))
}

// checkLeaks waits until the service holds no lock and no waiter, now that
// every worker is gone. Locks of killed workers are freed by the disconnect
// advisory or, failing that, by the next sweep; the sessions of workers cut
// off by a restart are freed after the grace: the wait allows three sweeps
// and a grace.
func (o *orchestrator) checkLeaks() {
	stopped := time.Now()
	deadline := stopped.Add(3*o.cfg.Sweep + o.cfg.Grace + 15*time.Second)
	for {
		locks, err := listLocks(o.app)
		if err == nil && len(locks) == 0 {
			o.sum.FreeAfter = time.Since(stopped)
			return
		}
		if time.Now().After(deadline) {
			if err != nil {
				o.problem("cannot list the locks at the end: %v", err)
				return
			}
			for _, l := range locks {
				o.sum.Leaks = append(o.sum.Leaks, fmt.Sprintf("%s: %d holders %v, %d waiters", l.Name, len(l.Holders), l.Holders, len(l.Waiters)))
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopNodes stops every node with SIGTERM, all at once (a cluster member
// stopped alone would leave the others waiting for a quorum), and expects
// each to exit with status 0 within 30 s.
func (o *orchestrator) stopNodes() {
	for _, n := range o.nodes {
		_ = n.p.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range o.nodes {
		select {
		case <-n.p.exited:
			if code := n.p.exitCode(); code != 0 {
				o.problem("%s exited with status %d at the end (66: a data race):\n%s", n.name, code, n.p.logTail())
			}
		case <-time.After(time.Until(deadline)):
			o.problem("%s did not exit within 30s of SIGTERM at the end", n.name)
			n.p.kill()
		}
	}
	if len(o.instances) > 0 {
		o.instances[len(o.instances)-1].Stopped = o.nodes[0].p.exitAt
	}
}

// cleanup kills whatever still runs (after an error) and closes the
// orchestrator's connections and NATS server.
func (o *orchestrator) cleanup() {
	for _, p := range o.workers {
		p.kill()
	}
	for _, n := range o.nodes {
		if n.p != nil && n.p.running() {
			n.p.kill()
		}
	}
	if o.app != nil {
		o.app.Close()
	}
	if o.sys != nil {
		o.sys.Close()
	}
	if o.nats != nil {
		o.nats.Stop()
	}
}

// check reads every worker's records and checks them.
func (o *orchestrator) check() {
	var intervals []Interval
	ids := make([]int, 0, len(o.allWork))
	for id := range o.allWork {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		p := o.allWork[id]
		log, err := readWorkerLog(o.recordsPath(id), id)
		if errors.Is(err, os.ErrNotExist) {
			continue // killed before it opened its file
		}
		if err != nil {
			o.problem("worker %d: %v", id, err)
			continue
		}
		for _, pr := range log.Problems {
			o.problem("worker %d: %s", id, pr)
		}
		intervals = append(intervals, log.Intervals...)
		for _, iv := range log.Open {
			kill, wasKilled := o.killed[id]
			if !wasKilled {
				o.problem("worker %d: section %d of %s was never left, yet the worker was not killed", id, iv.Seq, iv.Lock)
				kill.At = p.exitAt
			}
			iv.Leave, iv.Why = kill.At, leaveKilled
			if iv.Leave.Before(iv.Enter) { // entered while the kill was on its way
				iv.Leave = iv.Enter
			}
			intervals = append(intervals, iv)
		}
		for k, n := range log.Errors {
			o.sum.LockErrors[k] += n
		}
		for k, n := range log.Lost {
			o.sum.Lost[k] += n
		}
		for k, n := range log.UnlockErr {
			o.sum.UnlockErrors[k] += n
		}
		o.sum.Unlocks += log.Unlocks
	}
	// For a post-mortem next to the workers' records.
	if b, err := json.MarshalIndent(struct {
		Faults    []Fault
		Instances []Instance
	}{o.faults, o.instances}, "", "  "); err == nil {
		_ = os.WriteFile(filepath.Join(o.cfg.Dir, "faults.json"), b, 0o644)
	}
	res := Check(intervals, o.faults, o.instances)
	o.sum.Sections = res.Sections
	o.sum.Unchecked = res.Unchecked
	o.sum.Violations = res.Violations
	o.sum.Delays = res.Delays
	o.sum.Takeovers = res.Takeovers
}

// Report writes the summary for people.
func (s Summary) Report(w io.Writer) {
	c := s.Config
	fmt.Fprintf(w, "ldlm-chaos: state %s, %s of faults (%s in all), %d workers x %d sessions, %d locks (size 1, and %d every third), a fault every ~%s, seed %d\n",
		c.State, c.Duration, s.Elapsed.Round(time.Second), c.Workers, c.Sessions, c.Locks, c.SizeK, c.FaultEvery, c.Seed)
	fmt.Fprintf(w, "operations (critical sections): %d  (%d not checked: their request spanned a cut of their connection)\n", s.Sections, s.Unchecked)
	fmt.Fprintf(w, "sections ended by Lock.Done: %s\n", countList(s.Lost))
	fmt.Fprintf(w, "unlocks: %d ok; failed: %s\n", s.Unlocks, countList(s.UnlockErrors))
	fmt.Fprintf(w, "failed Lock calls: %s\n", countList(s.LockErrors))
	var faults []string
	total := 0
	for _, k := range c.Faults {
		faults = append(faults, fmt.Sprintf("%s %d", k, s.Faults[k]))
		total += s.Faults[k]
	}
	fmt.Fprintf(w, "faults: %d (%s; %d skipped); service processes %d, worker processes %d\n",
		total, strings.Join(faults, ", "), s.Skipped, s.Instances, s.WorkersRun)
	if c.State == modeCluster {
		fmt.Fprintf(w, "node-kill hit the active's member %d times\n", s.ActiveKills)
	}
	if c.State != modeMemory {
		fmt.Fprintf(w, "ldlm processes that exited by themselves (status 1) and were started again: %d\n", s.SelfExits)
	}
	fmt.Fprintf(w, "violations: %d", len(s.Violations))
	if len(s.Violations) > 0 {
		after := map[string]int{}
		for _, v := range s.Violations {
			if v.After == nil {
				after["no fault"]++
			} else {
				after[v.After.Kind]++
			}
		}
		fmt.Fprintf(w, " (by the fault before them: %s)", countList(after))
	}
	fmt.Fprintln(w)
	for i, v := range s.Violations {
		if i == 10 {
			fmt.Fprintf(w, "  … and %d more\n", len(s.Violations)-10)
			break
		}
		fmt.Fprintf(w, "  %s\n", v)
	}
	fmt.Fprintf(w, "leaks: %d", len(s.Leaks))
	if len(s.Leaks) == 0 {
		fmt.Fprintf(w, " (every lock free %s after the last worker stopped)", s.FreeAfter.Round(time.Millisecond))
	}
	fmt.Fprintln(w)
	for _, l := range s.Leaks {
		fmt.Fprintf(w, "  %s\n", l)
	}
	fmt.Fprintf(w, "problems: %d\n", len(s.Problems))
	for _, p := range s.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
	lost := 0
	fmt.Fprintln(w, "holders through faults that keep the state (they keep their lock; lost is the number that lost it, goal 0):")
	for _, k := range faultKinds {
		t := s.Takeovers[k]
		if t == nil || t.Holders == 0 && !(contains(c.Faults, k) && keepsState(k, c.State)) {
			continue
		}
		lost += t.Lost
		fmt.Fprintf(w, "  %-13s holders %d, kept %d, lost %d (%s)\n", k, t.Holders, t.Kept, t.Lost, countList(t.Causes))
	}
	fmt.Fprintf(w, "holders that lost a lock because of a takeover or restart: %d\n", lost)
	fmt.Fprintln(w, "notification delay (fault → Lock.Done of the holders it cut):")
	for _, k := range faultKinds {
		d := s.Delays[k]
		if d == nil || d.Affected == 0 || k == faultKillWorker {
			continue // a killed holder has no one to notify
		}
		fmt.Fprintf(w, "  %-13s holders cut %d, notified %d (median %s, max %s), finished and unlocked before notice %d\n",
			k, d.Affected, len(d.Notified), d.Median().Round(time.Millisecond), d.Max().Round(time.Millisecond), d.Finished)
	}
	verdict := "PASS"
	if !s.OK() {
		verdict = "FAIL"
	}
	if s.RecordsKept != "" {
		verdict += " (records and logs: " + s.RecordsKept + ")"
	}
	fmt.Fprintln(w, verdict)
}

// keepsState reports whether faults of kind keep the service's state in
// that state mode (see Fault.Keeps).
func keepsState(kind, state string) bool {
	switch kind {
	case faultKillWorker, faultKick:
		return false
	case faultServiceTerm, faultServiceKill:
		return state != modeMemory
	}
	return true
}

func countList(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool { return m[keys[a]] > m[keys[b]] || (m[keys[a]] == m[keys[b]] && keys[a] < keys[b]) })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
