package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

var base = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)

// ms is base plus n milliseconds.
func ms(n int) time.Time { return base.Add(time.Duration(n) * time.Millisecond) }

// iv is a section of worker w on lock (size 1 unless size > 0), requested
// at sent, held from enter to leave.
func iv(w int, lock string, size int, token uint64, sent, enter, leave int, why string) Interval {
	if size == 0 {
		size = 1
	}
	return Interval{Worker: w, Lock: lock, Size: size, Token: token, Sent: ms(sent), Enter: ms(enter), Leave: ms(leave), Why: why}
}

// Two instances of the service: tokens 1000… from the first, 2000… from
// the second, which started after the first stopped at 500 ms.
var twoInstances = []Instance{{FirstToken: 1000, Stopped: ms(500)}, {FirstToken: 2000}}

func TestCheck(t *testing.T) {
	one := []Instance{{FirstToken: 1}}
	tests := []struct {
		desc       string
		intervals  []Interval
		faults     []Fault
		instances  []Instance
		violations []string // substrings, one per expected violation
		unchecked  int
	}{
		{
			desc: "one after the other",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 20, leaveUnlock),
				iv(2, "a", 0, 2, 5, 30, 40, leaveUnlock),
			},
			instances: one,
		},
		{
			desc: "hand-over at one instant",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 20, leaveUnlock),
				iv(2, "a", 0, 2, 5, 20, 40, leaveUnlock),
			},
			instances: one,
		},
		{
			desc: "two holders of a lock of size 1",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 30, leaveUnlock),
				iv(2, "a", 0, 2, 5, 20, 40, leaveUnlock),
			},
			instances:  one,
			violations: []string{"2 live holders of a lock of size 1"},
		},
		{
			desc: "different locks may overlap",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 30, leaveUnlock),
				iv(2, "b", 0, 2, 5, 20, 40, leaveUnlock),
			},
			instances: one,
		},
		{
			desc: "three holders of a semaphore of size 3",
			intervals: []Interval{
				iv(1, "s", 3, 1, 0, 10, 50, leaveUnlock),
				iv(2, "s", 3, 2, 0, 11, 50, leaveUnlock),
				iv(3, "s", 3, 3, 0, 12, 50, leaveUnlock),
			},
			instances: one,
		},
		{
			desc: "four holders of a semaphore of size 3",
			intervals: []Interval{
				iv(1, "s", 3, 1, 0, 10, 50, leaveUnlock),
				iv(2, "s", 3, 2, 0, 11, 50, leaveUnlock),
				iv(3, "s", 3, 3, 0, 12, 50, leaveUnlock),
				iv(4, "s", 3, 4, 0, 13, 50, leaveUnlock),
			},
			instances:  one,
			violations: []string{"4 live holders of a lock of size 3"},
		},
		{
			desc: "a killed holder is not live after the kill",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 100, leaveKilled),
				iv(2, "a", 0, 2, 5, 30, 40, leaveUnlock),
			},
			faults:    []Fault{{Kind: faultKillWorker, At: ms(20), Done: ms(21), Worker: 1, Instance: -1}},
			instances: one,
		},
		{
			desc: "a kick ends the holder of that worker only",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 100, leaveLost),
				iv(2, "a", 0, 2, 5, 30, 40, leaveUnlock),
			},
			faults:     []Fault{{Kind: faultKick, At: ms(20), Done: ms(21), Worker: 3, Instance: -1}},
			instances:  one,
			violations: []string{"2 live holders"},
		},
		{
			desc: "a kicked holder learning late is a delay, not a second holder",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 100, leaveLost),
				iv(2, "a", 0, 2, 5, 30, 40, leaveUnlock),
			},
			faults:    []Fault{{Kind: faultKick, At: ms(20), Done: ms(21), Worker: 1, Instance: -1}},
			instances: one,
		},
		{
			desc: "a NATS restart cuts every holder",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 100, leaveUnlock),
				iv(2, "a", 0, 2, 25, 30, 40, leaveUnlock),
			},
			faults:    []Fault{{Kind: faultNATSRestart, At: ms(20), Done: ms(22), Worker: -1, Instance: -1}},
			instances: one,
		},
		{
			desc: "a grant requested before a cut ended may be on the cut connection: not checked",
			intervals: []Interval{
				iv(1, "a", 0, 1, 15, 21, 100, leaveUnlock), // asked at 15, cut 20..22
				iv(2, "a", 0, 2, 25, 30, 40, leaveUnlock),
			},
			faults:    []Fault{{Kind: faultNATSRestart, At: ms(20), Done: ms(22), Worker: -1, Instance: -1}},
			instances: one,
			unchecked: 1,
		},
		{
			desc: "a grant requested after the cut is live",
			intervals: []Interval{
				iv(1, "a", 0, 1, 23, 24, 100, leaveUnlock),
				iv(2, "a", 0, 2, 25, 30, 40, leaveUnlock),
			},
			faults:     []Fault{{Kind: faultNATSRestart, At: ms(20), Done: ms(22), Worker: -1, Instance: -1}},
			instances:  one,
			violations: []string{"2 live holders"},
		},
		{
			desc: "with sessions a NATS restart keeps the holders live for the grace",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 100, leaveUnlock),
				iv(2, "a", 0, 2, 25, 30, 40, leaveUnlock),
			},
			faults:     []Fault{{Kind: faultNATSRestart, At: ms(20), Done: ms(22), Worker: -1, Instance: -1, Keeps: true, Grace: 50 * time.Millisecond}},
			instances:  one,
			violations: []string{"2 live holders"},
		},
		{
			desc: "a holder cut off for longer than the grace may have lost its lock",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 100, leaveUnlock),
				iv(2, "a", 0, 2, 25, 80, 90, leaveUnlock),
			},
			faults:    []Fault{{Kind: faultDataDirKill, At: ms(20), Done: ms(22), Worker: -1, Instance: -1, Keeps: true, Grace: 50 * time.Millisecond}},
			instances: one,
		},
		{
			desc: "a takeover that keeps the state ends no grant",
			intervals: []Interval{
				iv(1, "a", 0, 1, 0, 10, 900, leaveUnlock),
				iv(2, "a", 0, 2, 600, 610, 700, leaveUnlock),
			},
			faults:     []Fault{{Kind: faultActiveKill, At: ms(499), Done: ms(500), Worker: -1, Instance: -1, Keeps: true}},
			instances:  one,
			violations: []string{"2 live holders"},
		},
		{
			desc: "the grants of a stopped service instance end with it",
			intervals: []Interval{
				iv(1, "a", 0, 1000, 0, 10, 900, leaveUnlock), // the client never learned
				iv(2, "a", 0, 2000, 600, 610, 700, leaveUnlock),
			},
			faults:    []Fault{{Kind: faultServiceKill, At: ms(499), Done: ms(500), Worker: -1, Instance: 0}},
			instances: twoInstances,
		},
		{
			desc: "a grant of the new instance is not ended by the old one's stop",
			intervals: []Interval{
				iv(1, "a", 0, 2001, 600, 605, 900, leaveUnlock),
				iv(2, "a", 0, 2002, 600, 610, 700, leaveUnlock),
			},
			faults:     []Fault{{Kind: faultServiceKill, At: ms(499), Done: ms(500), Worker: -1, Instance: 0}},
			instances:  twoInstances,
			violations: []string{"2 live holders"},
		},
		{
			desc: "a later grant with a smaller token",
			intervals: []Interval{
				iv(1, "a", 0, 5, 0, 10, 20, leaveUnlock),
				iv(2, "a", 0, 4, 15, 30, 40, leaveUnlock),
			},
			instances:  one,
			violations: []string{"token 4 granted after token 5"},
		},
		{
			desc: "grants racing for a semaphore may arrive out of token order",
			intervals: []Interval{
				iv(1, "s", 3, 5, 0, 11, 20, leaveUnlock),
				iv(2, "s", 3, 4, 0, 10, 20, leaveUnlock),
				iv(3, "s", 3, 6, 1, 12, 20, leaveUnlock),
			},
			instances: one,
		},
		{
			desc: "one token twice",
			intervals: []Interval{
				iv(1, "a", 0, 7, 0, 10, 20, leaveUnlock),
				iv(2, "b", 0, 7, 0, 10, 20, leaveUnlock),
			},
			instances:  one,
			violations: []string{"token 7 granted twice"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			res := Check(tc.intervals, tc.faults, tc.instances)
			if len(res.Violations) != len(tc.violations) {
				t.Fatalf("%d violations, want %d: %v", len(res.Violations), len(tc.violations), res.Violations)
			}
			for i, want := range tc.violations {
				if !strings.Contains(res.Violations[i].What, want) {
					t.Errorf("violation %d: %q, want it to say %q", i, res.Violations[i].What, want)
				}
			}
			if res.Unchecked != tc.unchecked {
				t.Errorf("%d unchecked, want %d", res.Unchecked, tc.unchecked)
			}
			if res.Sections != len(tc.intervals) {
				t.Errorf("%d sections, want %d", res.Sections, len(tc.intervals))
			}
		})
	}
}

// TestCheckDelays: the holders a fault cut are counted, and the delay of
// those that learned it (Lock.Done) is measured from the fault.
func TestCheckDelays(t *testing.T) {
	intervals := []Interval{
		iv(1, "a", 0, 1000, 0, 10, 800, leaveLost),    // learned 300 ms after the kill
		iv(2, "b", 0, 1001, 0, 10, 600, leaveLost),    // learned 100 ms after
		iv(3, "c", 0, 1002, 0, 10, 900, leaveUnlock),  // never learned; unlocked after its work
		iv(4, "d", 0, 1003, 0, 10, 400, leaveUnlock),  // done before the fault
		iv(5, "e", 0, 2000, 600, 610, 700, leaveLost), // granted by the new instance
	}
	faults := []Fault{{Kind: faultServiceKill, At: ms(500), Done: ms(500), Worker: -1, Instance: 0}}
	res := Check(intervals, faults, twoInstances)
	d := res.Delays[faultServiceKill]
	if d.Affected != 3 || len(d.Notified) != 2 || d.Finished != 1 {
		t.Fatalf("affected %d, notified %d, finished %d; want 3, 2, 1", d.Affected, len(d.Notified), d.Finished)
	}
	if d.Max() != 300*time.Millisecond || d.Notified[0] != 100*time.Millisecond {
		t.Errorf("delays %v, want [100ms 300ms]", d.Notified)
	}
	if len(res.Violations) != 0 {
		t.Errorf("violations: %v", res.Violations)
	}
}

// TestReadWorkerLog: records become intervals; a section left open by a
// kill is reported open; records that make no sense are problems.
// TestCheckTakeovers: the holders in their section when a fault that keeps
// the state began are counted as kept or lost (by cause); those that a
// fault ending grants hit first, and killed ones, are not.
func TestCheckTakeovers(t *testing.T) {
	takeover := Fault{Kind: faultActiveKill, At: ms(20), Done: ms(21), Worker: -1, Instance: -1, Keeps: true}
	kick := Fault{Kind: faultKick, At: ms(15), Done: ms(16), Worker: 3, Instance: -1}
	lost := iv(2, "b", 0, 2, 0, 10, 60, leaveLost)
	lost.Cause = "expired"
	intervals := []Interval{
		iv(1, "a", 0, 1, 0, 10, 50, leaveUnlock), // kept
		lost,                                     // lost
		iv(3, "c", 0, 3, 0, 10, 50, leaveLost),   // kicked before the takeover: not counted
		iv(4, "d", 0, 4, 0, 10, 50, leaveKilled), // killed: not counted
		iv(5, "e", 0, 5, 0, 25, 50, leaveUnlock), // entered after the takeover: not counted
		iv(6, "f", 0, 6, 0, 5, 10, leaveUnlock),  // left before: not counted
	}
	res := Check(intervals, []Fault{kick, takeover}, []Instance{{FirstToken: 1}})
	got := res.Takeovers[faultActiveKill]
	if got.Holders != 2 || got.Kept != 1 || got.Lost != 1 || got.Causes["expired"] != 1 {
		t.Errorf("takeovers %+v, want 2 holders, 1 kept, 1 lost by expiry", got)
	}
	if d := res.Delays[faultKick]; d.Affected != 1 || len(d.Notified) != 1 {
		t.Errorf("kick delays %+v, want the kicked holder notified", d)
	}
}

func TestReadWorkerLog(t *testing.T) {
	path := t.TempDir() + "/w.jsonl"
	lines := `{"k":"enter","s":1,"lock":"a","size":1,"token":5,"sent":100,"at":200}
{"k":"leave","s":1,"at":300,"why":"unlock"}
{"k":"unlock","s":1,"at":310}
{"k":"error","at":320,"err":"no service"}
{"k":"leave","s":9,"at":330,"why":"unlock"}
{"k":"enter","s":2,"lock":"b","size":0,"token":0,"sent":400,"at":500}
{"k":"enter","s":3,"lock":"a","size":1,"token":6,"sent":600,"at":700}
{"k":"leave","s":3,"at":800,"wh`
	if err := os.WriteFile(path, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := readWorkerLog(path, 7)
	if err != nil {
		t.Fatal(err)
	}
	if len(log.Intervals) != 1 || log.Intervals[0].Token != 5 || log.Intervals[0].Worker != 7 ||
		!log.Intervals[0].Leave.Equal(time.Unix(0, 300)) {
		t.Errorf("intervals: %+v", log.Intervals)
	}
	if len(log.Open) != 2 || log.Open[0].Seq != 2 || log.Open[1].Seq != 3 {
		t.Errorf("open: %+v", log.Open)
	}
	if log.Unlocks != 1 || log.Errors["no service"] != 1 {
		t.Errorf("unlocks %d, errors %v", log.Unlocks, log.Errors)
	}
	if len(log.Problems) != 2 || !strings.Contains(log.Problems[0], "never entered") || !strings.Contains(log.Problems[1], "without a grant") {
		t.Errorf("problems: %q", log.Problems)
	}
}

// TestViolationNamesTheFaultBefore: a violation points at the last fault
// that began before it, as a hint at its cause.
func TestViolationNamesTheFaultBefore(t *testing.T) {
	intervals := []Interval{
		iv(1, "a", 0, 1, 23, 24, 100, leaveUnlock),
		iv(2, "a", 0, 2, 25, 30, 40, leaveUnlock),
	}
	faults := []Fault{
		{Kind: faultKick, At: ms(5), Done: ms(6), Worker: 9, Instance: -1},
		{Kind: faultNATSRestart, At: ms(20), Done: ms(22), Worker: -1, Instance: -1},
		{Kind: faultKick, At: ms(50), Done: ms(51), Worker: 9, Instance: -1},
	}
	res := Check(intervals, faults, []Instance{{FirstToken: 1}})
	if len(res.Violations) != 1 {
		t.Fatalf("violations: %v", res.Violations)
	}
	v := res.Violations[0]
	if v.After == nil || v.After.Kind != faultNATSRestart || !strings.Contains(v.String(), "10ms after the nats-restart") {
		t.Errorf("violation %s, want it to name the NATS restart 10 ms before", v)
	}
}
