package main

import (
	"fmt"
	"slices"
	"sort"
	"time"
)

// Interval is one critical section of a worker: from the moment the grant
// reply arrived (Enter) to the moment the worker stopped treating itself as
// the holder (Leave): before it sent Unlock, or when Lock.Done fired.
type Interval struct {
	Worker int
	Seq    int // per worker, in the order the sections were entered
	Lock   string
	Size   int
	Token  uint64
	Sent   time.Time // the Lock call started: the request may have left from then on
	Enter  time.Time
	Leave  time.Time
	Why    string // how it ended: leaveUnlock, leaveLost, leaveStop or leaveKilled
	Cause  string // leaveLost: why Lock.Done fired (errClass of Lock.Err)
}

// How an interval ended.
const (
	leaveUnlock = "unlock" // the work was done; Unlock followed
	leaveLost   = "lost"   // Lock.Done fired while working
	leaveStop   = "stop"   // the worker was asked to stop; Unlock followed
	leaveKilled = "killed" // the process was killed (closed by the orchestrator)
)

// Kinds of faults.
const (
	faultKillWorker  = "kill-worker"  // kill -9 of a worker process
	faultKick        = "kick"         // the NATS server closes a worker's connection
	faultNATSRestart = "nats-restart" // the NATS server stops and starts again
	faultServiceTerm = "service-term" // SIGTERM to the lock service, then a new one
	faultServiceKill = "service-kill" // kill -9 of the lock service, then a new one
	faultActiveKill  = "active-kill"  // -state jetstream: kill -9 of the active instance; a standby takes over, the killed one starts again as a standby
	faultDataDirKill = "datadir-kill" // -state datadir: kill -9 of the single binary (its embedded NATS server dies with it), started again on the same folder
	faultNodeKill    = "node-kill"    // -state cluster: kill -9 of one member of the embedded cluster, started again as a supervisor would
	faultSelfExit    = "self-exit"    // durable modes, not injected: an ldlm process exited by itself and was started again
)

var faultKinds = []string{faultKillWorker, faultKick, faultNATSRestart, faultServiceTerm, faultServiceKill,
	faultActiveKill, faultDataDirKill, faultNodeKill, faultSelfExit}

// Fault is one injected fault. The cut it makes happened between At and
// Done: the orchestrator takes At just before it acts, and Done once the
// cut is certain (the process reaped, the kick answered, the server shut
// down).
//
// A fault that Keeps the state (a takeover or restart with durable state,
// a NATS restart under a service that lives on) ends no grant by itself:
// the holders of before stay live holders until they leave. If it cut the
// clients' connections too, the service keeps their sessions' locks for
// Grace after the cut (LDLM_RECONNECT_GRACE): a holder cut off for longer
// may lose its lock before it can learn it, so it is live until At+Grace at
// most. The service cannot release before then: it learns of the cut at
// At or later, and a restored session's grace starts when it is restored.
type Fault struct {
	Kind     string
	At, Done time.Time
	Worker   int           // kill-worker, kick: the worker hit
	Instance int           // memory service faults: index of the stopped instance in the instance list
	Node     int           // service faults: the node (ldlm process slot) hit
	Keeps    bool          // the state survives the fault
	Grace    time.Duration // Keeps and the clients' connections were cut: how long their sessions stay
}

// Instance is one run of the lock service process. Its fencing tokens start
// at FirstToken (the service starts them from its start time in
// microseconds), so a token tells which instance granted it.
type Instance struct {
	FirstToken uint64
	Stopped    time.Time // when the process was reaped; zero while it runs
}

// Violation is an instant at which a lock had more live holders than
// slots, or a token rule that was broken.
type Violation struct {
	Lock    string
	At      time.Time
	What    string
	Holders []Interval
	After   *Fault // the last fault that began before At, a hint at the cause; nil if none
}

func (v Violation) String() string {
	s := fmt.Sprintf("%s at %s: %s", v.Lock, v.At.Format("15:04:05.000000"), v.What)
	if v.After != nil {
		s += fmt.Sprintf(" (%s after the %s)", v.At.Sub(v.After.At).Round(time.Millisecond), v.After.Kind)
	}
	for _, h := range v.Holders {
		s += fmt.Sprintf("\n    worker %d section %d token %d live %s..%s (left: %s)",
			h.Worker, h.Seq, h.Token, h.Enter.Format("15:04:05.000000"), h.Leave.Format("15:04:05.000000"), h.Why)
	}
	return s
}

// Delays summarises how long the holders cut off by faults of one kind
// took to learn it (Lock.Done fired).
type Delays struct {
	Affected int             // holders live when a fault of this kind cut them
	Notified []time.Duration // from the fault to Done, one per notified holder, sorted
	Finished int             // holders that finished their work and unlocked before Done fired
}

// Median returns the median notification delay; 0 with none.
func (d Delays) Median() time.Duration {
	if len(d.Notified) == 0 {
		return 0
	}
	return d.Notified[len(d.Notified)/2]
}

// Max returns the longest notification delay; 0 with none.
func (d Delays) Max() time.Duration {
	if len(d.Notified) == 0 {
		return 0
	}
	return d.Notified[len(d.Notified)-1]
}

// Takeover summarises the holders that were in their section when a fault
// that keeps the state began (see Fault.Keeps): they should keep their lock.
type Takeover struct {
	Holders int            // holders in their section when a fault of this kind began
	Kept    int            // of them: left by themselves (unlock, or asked to stop)
	Lost    int            // of them: Lock.Done fired; the goal is 0
	Causes  map[string]int // Lost by the cause Lock.Err gave
}

// Result is what Check finds.
type Result struct {
	Sections   int                  // intervals checked
	Unchecked  int                  // intervals whose lock request spanned a cut of their connection (see liveEnd)
	Violations []Violation          // must be empty
	Delays     map[string]*Delays   // by fault kind, for the faults that end grants
	Takeovers  map[string]*Takeover // by fault kind, for the faults that keep the state
}

// liveEnd returns when interval iv stopped being a live holder as the
// service sees it, and the fault that ended it early (nil if none): the
// earliest of its Leave; the kill of its process or the kick of its
// connection; the stop of the service instance that granted it, whose
// state died with it (the client learning that later is a notification
// delay, not a second grant); and the end of the grace of a cut that
// kept the state (Fault.Keeps).
//
// A lock request sent before a cut finished may have been granted over the
// connection that was cut, even if the grant reply arrived after the cut
// began: the service then releases it with that connection. Such an
// interval ends at the cut too, which makes it empty when it was entered
// after the cut began (Check counts those as unchecked).
func liveEnd(iv Interval, faults []Fault, instances []Instance) (time.Time, *Fault) {
	end := iv.Leave
	var by *Fault
	for i := range faults {
		f := &faults[i]
		if !applies(*f, iv, instances) {
			continue
		}
		at := f.At.Add(f.Grace)
		if !f.Keeps && (f.Kind == faultServiceTerm || f.Kind == faultServiceKill) {
			at = instances[f.Instance].Stopped
		}
		if at.Before(end) {
			end, by = at, f
		}
	}
	return end, by
}

// applies reports whether fault f cuts iv off: it killed iv's process, cut
// its connection (kick; or any cut of a fault that keeps the state, for its
// grace) while the grant may have been on it, or stopped the service
// instance that granted it, whose state died with it.
func applies(f Fault, iv Interval, instances []Instance) bool {
	switch {
	case f.Kind == faultKillWorker || f.Kind == faultKick:
		return f.Worker == iv.Worker && iv.Sent.Before(f.Done)
	case f.Keeps:
		return f.Grace > 0 && iv.Sent.Before(f.Done)
	case f.Kind == faultNATSRestart: // without sessions
		return iv.Sent.Before(f.Done)
	case f.Kind == faultServiceTerm || f.Kind == faultServiceKill:
		return f.Instance == instanceOf(iv.Token, instances)
	}
	return false
}

// firstHit returns the earliest fault that began while iv was in its
// section and that ends its grant (not one that keeps the state); nil if
// none. The holder may learn of it before the cut is complete (a service
// stopping on SIGTERM announces it).
func firstHit(iv Interval, faults []Fault, instances []Instance) *Fault {
	var first *Fault
	for i := range faults {
		f := &faults[i]
		if !f.Keeps && iv.Enter.Before(f.At) && f.At.Before(iv.Leave) && applies(*f, iv, instances) &&
			(first == nil || f.At.Before(first.At)) {
			first = &faults[i]
		}
	}
	return first
}

// firstKept returns the earliest fault that keeps the state and began while
// iv was in its section, unless a fault that ends grants hit iv before it;
// nil if none.
func firstKept(iv Interval, faults []Fault, hit *Fault) *Fault {
	var first *Fault
	for i := range faults {
		f := &faults[i]
		if f.Keeps && iv.Enter.Before(f.At) && f.At.Before(iv.Leave) && (first == nil || f.At.Before(first.At)) {
			first = f
		}
	}
	if first != nil && hit != nil && !first.At.Before(hit.At) {
		return nil
	}
	return first
}

// instanceOf returns the index of the instance that granted token: the
// last one whose first token is not above it; -1 if none.
func instanceOf(token uint64, instances []Instance) int {
	found := -1
	for i, in := range instances {
		if in.FirstToken <= token && (found < 0 || in.FirstToken >= instances[found].FirstToken) {
			found = i
		}
	}
	return found
}

// Check finds every instant at which a lock had more live holders than its
// size, every token granted twice, and every grant whose token is not
// larger than that of a grant of the same lock that happened before it.
// It also measures the notification delays of the faults. It is a pure
// function of its arguments.
func Check(intervals []Interval, faults []Fault, instances []Instance) Result {
	res := Result{Sections: len(intervals), Delays: map[string]*Delays{}, Takeovers: map[string]*Takeover{}}
	for _, k := range faultKinds {
		res.Delays[k] = &Delays{}
		res.Takeovers[k] = &Takeover{Causes: map[string]int{}}
	}

	type live struct {
		iv       Interval
		from, to time.Time
	}
	byLock := map[string][]live{}
	for _, iv := range intervals {
		end, by := liveEnd(iv, faults, instances)
		if !end.After(iv.Enter) {
			if by != nil && iv.Enter.After(by.At) {
				res.Unchecked++
			}
		}
		hit := firstHit(iv, faults, instances)
		if hit != nil && iv.Why != leaveKilled && iv.Why != leaveStop {
			d := res.Delays[hit.Kind]
			d.Affected++
			if iv.Why == leaveLost {
				d.Notified = append(d.Notified, iv.Leave.Sub(hit.At))
			} else {
				d.Finished++
			}
		}
		if f := firstKept(iv, faults, hit); f != nil && iv.Why != leaveKilled {
			t := res.Takeovers[f.Kind]
			t.Holders++
			if iv.Why == leaveLost {
				t.Lost++
				t.Causes[iv.Cause]++
			} else {
				t.Kept++
			}
		}
		byLock[iv.Lock] = append(byLock[iv.Lock], live{iv, iv.Enter, end})
	}
	for _, d := range res.Delays {
		slices.Sort(d.Notified)
	}

	locks := make([]string, 0, len(byLock))
	for name := range byLock {
		locks = append(locks, name)
	}
	sort.Strings(locks)
	seenToken := map[uint64]Interval{}
	for _, name := range locks {
		ls := byLock[name]
		// Sweep over the live intervals in time order; at equal times an
		// end comes before a start, so that a hand-over at one instant is
		// not two holders.
		type edge struct {
			at    time.Time
			start bool
			i     int
		}
		var edges []edge
		for i, l := range ls {
			if l.to.After(l.from) {
				edges = append(edges, edge{l.from, true, i}, edge{l.to, false, i})
			}
		}
		sort.Slice(edges, func(a, b int) bool {
			if !edges[a].at.Equal(edges[b].at) {
				return edges[a].at.Before(edges[b].at)
			}
			return !edges[a].start && edges[b].start
		})
		holding := map[int]bool{}
		reported := false // one violation per overlap episode, not per edge
		for _, e := range edges {
			if !e.start {
				delete(holding, e.i)
				if len(holding) <= ls[e.i].iv.Size {
					reported = false
				}
				continue
			}
			holding[e.i] = true
			size := ls[e.i].iv.Size
			if len(holding) > size && !reported {
				reported = true
				v := Violation{Lock: name, At: e.at,
					What: fmt.Sprintf("%d live holders of a lock of size %d", len(holding), size)}
				for i := range holding {
					v.Holders = append(v.Holders, ls[i].iv)
				}
				sort.Slice(v.Holders, func(a, b int) bool { return v.Holders[a].Enter.Before(v.Holders[b].Enter) })
				res.Violations = append(res.Violations, v)
			}
		}

		// Fencing: a grant requested after another grant of the lock
		// arrived must carry a larger token.
		byEnter := make([]Interval, len(ls))
		for i, l := range ls {
			byEnter[i] = l.iv
		}
		sort.Slice(byEnter, func(a, b int) bool { return byEnter[a].Enter.Before(byEnter[b].Enter) })
		bySent := slices.Clone(byEnter)
		sort.Slice(bySent, func(a, b int) bool { return bySent[a].Sent.Before(bySent[b].Sent) })
		next := 0
		var maxSeen Interval
		for _, b := range bySent {
			for next < len(byEnter) && byEnter[next].Enter.Before(b.Sent) {
				if byEnter[next].Token > maxSeen.Token {
					maxSeen = byEnter[next]
				}
				next++
			}
			if maxSeen.Token != 0 && b.Token <= maxSeen.Token {
				res.Violations = append(res.Violations, Violation{Lock: name, At: b.Enter,
					What:    fmt.Sprintf("token %d granted after token %d of the same lock", b.Token, maxSeen.Token),
					Holders: []Interval{maxSeen, b}})
			}
		}

		for _, l := range ls {
			if other, dup := seenToken[l.iv.Token]; dup {
				res.Violations = append(res.Violations, Violation{Lock: name, At: l.iv.Enter,
					What: fmt.Sprintf("token %d granted twice", l.iv.Token), Holders: []Interval{other, l.iv}})
			}
			seenToken[l.iv.Token] = l.iv
		}
	}
	for i := range res.Violations {
		res.Violations[i].After = lastFaultBefore(res.Violations[i].At, faults)
	}
	return res
}

// lastFaultBefore returns the fault that began last at or before t.
func lastFaultBefore(t time.Time, faults []Fault) *Fault {
	var last *Fault
	for i := range faults {
		if !faults[i].At.After(t) && (last == nil || faults[i].At.After(last.At)) {
			last = &faults[i]
		}
	}
	return last
}
