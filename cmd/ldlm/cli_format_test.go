package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// TestPrintLocks: the table's cases that a single-namespace server does
// not produce in the end-to-end tests: accounts, anonymous holders, names
// that need quoting, and no locks at all.
func TestPrintLocks(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		desc  string
		locks []subjects.LockInfo
		want  string
	}{
		{"none", nil, "no locks\n"},
		{
			"accounts and an anonymous holder",
			[]subjects.LockInfo{
				{Account: "A", Name: "job", Size: 2, Holders: []subjects.HolderInfo{
					{Owner: "n1:5", KeyPrefix: "abcdef…", Token: 7, AcquiredAt: now.Add(-90 * time.Second)},
					{KeyPrefix: "******", Token: 8, AcquiredAt: now.Add(-time.Second), ExpiresAt: now.Add(59 * time.Second)},
				}},
				{Account: "B", Name: "tab\there", Size: 1, Waiters: []subjects.WaiterInfo{{Owner: "n1:6", Since: now.Add(-2 * time.Second)}}},
			},
			"" +
				"ACCOUNT  LOCK         SIZE  STATE    OWNER        KEY      TOKEN  FOR    EXPIRES\n" +
				"A        job          2     held     n1:5         abcdef…  7      1m30s  -\n" +
				"A        job          2     held     (anonymous)  ******   8      1s     in 59s\n" +
				"B        \"tab\\there\"  1     waiting  n1:6         -        -      2s     -\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			var b strings.Builder
			printLocks(&b, tc.locks, now)
			if b.String() != tc.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tc.want)
			}
		})
	}
}

// TestPrintInstances: the instances part of `ldlm status`, with the cases
// that are hard to bring about in the end-to-end tests: a standby behind,
// and standbys without an active.
func TestPrintInstances(t *testing.T) {
	t.Parallel()
	active := subjects.InstanceInfo{ID: "a1", Role: subjects.RoleActive, State: "jetstream", Server: "n1", RoleSeconds: 65.4, Sequence: 2071}
	upToDate := subjects.InstanceInfo{ID: "b2", Role: subjects.RoleStandby, State: "jetstream", Server: "n2", RoleSeconds: 64, Sequence: 2071, IdleSeconds: 9}
	behind := subjects.InstanceInfo{ID: "c3", Role: subjects.RoleStandby, State: "jetstream", Server: "n3", RoleSeconds: 10, Sequence: 2040, IdleSeconds: 2.5}
	tests := []struct {
		desc      string
		instances []subjects.InstanceInfo
		want      string
	}{
		{
			"memory",
			[]subjects.InstanceInfo{{ID: "m1", Role: subjects.RoleActive, State: "memory", Server: "n1", RoleSeconds: 3}},
			"" +
				"instances:           1 active, 0 standbys (locks in memory: no standbys possible)\n\n" +
				"ROLE    ID  NATS SERVER  IN ROLE FOR  STREAM SEQ  BEHIND THE ACTIVE\n" +
				"active  m1  n1           3s           -           -\n",
		},
		{
			"a standby up to date, one behind",
			[]subjects.InstanceInfo{active, upToDate, behind},
			"" +
				"instances:           1 active, 2 standbys (locks in a JetStream stream)\n\n" +
				"ROLE     ID  NATS SERVER  IN ROLE FOR  STREAM SEQ  BEHIND THE ACTIVE\n" +
				"active   a1  n1           1m5s         2071        -\n" +
				"standby  b2  n2           1m4s         2071        up to date\n" +
				"standby  c3  n3           10s          2040        31 records (applied nothing for 2.5s)\n",
		},
		{
			"no active",
			[]subjects.InstanceInfo{behind},
			"" +
				"instances:           no active, 1 standby (locks in a JetStream stream)\n\n" +
				"ROLE     ID  NATS SERVER  IN ROLE FOR  STREAM SEQ  BEHIND THE ACTIVE\n" +
				"standby  c3  n3           10s          2040        unknown: no active answers\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			var b strings.Builder
			printInstances(&b, reportInstances(tc.instances))
			if b.String() != tc.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tc.want)
			}
		})
	}
}

// TestReportInstances: how far behind the active --json says each
// standby is, and that it says nothing without an active.
func TestReportInstances(t *testing.T) {
	t.Parallel()
	active := subjects.InstanceInfo{ID: "a", Role: subjects.RoleActive, Sequence: 100}
	standby := func(seq uint64) subjects.InstanceInfo {
		return subjects.InstanceInfo{ID: "s", Role: subjects.RoleStandby, Sequence: seq, IdleSeconds: 1.5}
	}
	tests := []struct {
		desc      string
		instances []subjects.InstanceInfo
		records   string // of the last instance: "-" for none
		seconds   float64
	}{
		{"up to date", []subjects.InstanceInfo{active, standby(100)}, "0", 0},
		{"behind", []subjects.InstanceInfo{active, standby(97)}, "3", 1.5},
		{"applied a record the active wrote after its answer", []subjects.InstanceInfo{active, standby(101)}, "0", 0},
		{"no active", []subjects.InstanceInfo{standby(97)}, "-", 0},
		{"the active", []subjects.InstanceInfo{active}, "-", 0},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			reports := reportInstances(tc.instances)
			last := reports[len(reports)-1]
			records, seconds := "-", 0.0
			if last.BehindRecords != nil {
				records, seconds = strconv.FormatUint(*last.BehindRecords, 10), *last.BehindSeconds
			}
			if records != tc.records || seconds != tc.seconds {
				t.Errorf("behind %s records, %v s; want %s, %v", records, seconds, tc.records, tc.seconds)
			}
		})
	}
}
