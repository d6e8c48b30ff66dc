package main

import (
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
