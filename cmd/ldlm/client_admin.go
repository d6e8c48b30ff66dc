package main

// The operator commands: `ldlm list`, `ldlm unlock --force`, `ldlm status`.
// They send the service's admin requests (PREFIX.admin.>), which NATS
// permissions may keep applications from sending.

import (
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

const listUsage = `Usage:
  ldlm list [flags]

Lists every lock with its size, its holders (connection, key prefix, fencing
token, time held, expiry) and its waiters, one row each; --name-prefix lists
only the locks whose names start with it. The service answers a page of
locks at a time; ldlm asks for every page. A lock with more than 100
holders or waiters shows the first 100 and how many more there are. --json
prints the locks as one JSON object {"locks":[…]}.
`

const unlockUsage = `Usage:
  ldlm unlock --force [flags] NAME

Releases lock NAME for its holders, as an operator: every holder, or only
the one with --key or --fencing-token. The holders' clients are told that
they lost the lock; the next waiters are granted. Prints the fencing tokens
of the released grants.
`

const statusUsage = `Usage:
  ldlm status [flags]

Prints the lock service's version, uptime, counts of locks, holders,
waiters and connections, how it learns of closed connections (liveness)
and when it last compared lock owners with the live connections.

Then every instance of the service on this prefix, one row each: the
active, which answers the lock requests, and the standbys, which follow
its state (LDLM_STATE=jetstream, LDLM_DATA_DIR or an embedded cluster) to
take over when it goes. STREAM SEQ is the sequence number of the last
record of the lock state stream that the active wrote or the standby
applied; BEHIND THE ACTIVE is how many records a standby has yet to apply,
and how long it has applied nothing. ldlm waits for the instances' answers
until none comes for 0.3 s.

--json prints one JSON object: the status fields and "instances".
`

func runList(args []string, stdout, stderr io.Writer) int {
	const command = "ldlm list"
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	conn := addClientFlags(fs)
	asJSON := fs.Bool("json", false, "print the locks as JSON")
	namePrefix := fs.String("name-prefix", "", "list only the locks whose names start with this")
	nc, code := adminConnect(fs, conn, args, listUsage, stdout, stderr, nil)
	if nc == nil {
		return code
	}
	defer nc.Close()
	all := subjects.ListResponse{Locks: []subjects.LockInfo{}}
	req := subjects.ListRequest{Prefix: *namePrefix}
	for {
		var page subjects.ListResponse
		if _, err := adminRequest(nc, conn.prefix, subjects.OpAdminList, "", req, &page); err != nil {
			return failed(stderr, command, err)
		}
		all.Locks = append(all.Locks, page.Locks...)
		if page.Next == "" {
			break
		}
		req.After = page.Next
	}
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(all); err != nil {
			return failed(stderr, command, err)
		}
		return 0
	}
	printLocks(stdout, all.Locks, time.Now())
	return 0
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	const command = "ldlm status"
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	conn := addClientFlags(fs)
	asJSON := fs.Bool("json", false, "print the status and the instances as one JSON object")
	nc, code := adminConnect(fs, conn, args, statusUsage, stdout, stderr, nil)
	if nc == nil {
		return code
	}
	defer nc.Close()
	// Both questions at once: gathering the instances' answers ends with a
	// quiet time.
	type gathered struct {
		infos []subjects.InstanceInfo
		err   error
	}
	instances := make(chan gathered, 1)
	go func() {
		infos, err := gatherInstances(nc, conn.prefix)
		instances <- gathered{infos, err}
	}()
	var st subjects.StatusResponse
	_, statusErr := adminRequest(nc, conn.prefix, subjects.OpAdminStatus, "", nil, &st)
	g := <-instances
	if statusErr != nil && len(g.infos) == 0 {
		return failed(stderr, command, statusErr)
	}
	report := statusReport{Instances: reportInstances(g.infos)}
	if statusErr == nil {
		report.StatusResponse = &st
	}
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(report); err != nil {
			return failed(stderr, command, err)
		}
	} else {
		if statusErr == nil {
			printStatus(stdout, st)
		}
		if len(report.Instances) > 0 {
			printInstances(stdout, report.Instances)
		}
	}
	switch {
	case statusErr != nil && !slices.ContainsFunc(g.infos, func(i subjects.InstanceInfo) bool { return i.Role == subjects.RoleActive }):
		return failed(stderr, command, fmt.Errorf("no active instance answers on %s, only standbys: one of them takes over by itself within seconds "+
			"once it finds no active (if none does, see the standbys' logs); ask again", subjects.AdminSubject(conn.prefix, subjects.OpAdminStatus, "")))
	case statusErr != nil:
		return failed(stderr, command, statusErr)
	case g.err != nil:
		return failed(stderr, command, g.err)
	}
	return 0
}

// adminConnect parses the flags of an admin command, fs named after the
// command, checks its arguments with check (nil: it takes none) and
// connects to NATS. When nc is nil the command is over, with exit status
// code.
func adminConnect(fs *flag.FlagSet, conn *clientConfig, args []string, usage string, stdout, stderr io.Writer, check func() error) (nc *nats.Conn, code int) {
	if code, done := parseCommandFlags(fs, args, usage, stdout, stderr); done {
		return nil, code
	}
	if check == nil && fs.NArg() > 0 {
		return nil, usageError(stderr, fs.Name(), "unexpected argument %q", fs.Arg(0))
	}
	if check != nil {
		if err := check(); err != nil {
			return nil, usageError(stderr, fs.Name(), "%v", err)
		}
	}
	if err := conn.resolve(); err != nil {
		return nil, usageError(stderr, fs.Name(), "%v", err)
	}
	nc, err := conn.connect(fs.Name(), fs.Name(), stderr)
	if err != nil {
		return nil, failed(stderr, fs.Name(), err)
	}
	return nc, 0
}

// printLocks writes locks as a table: a row per holder and per waiter.
// Times are shown relative to now, as read on this machine.
func printLocks(w io.Writer, locks []subjects.LockInfo, now time.Time) {
	if len(locks) == 0 {
		fmt.Fprintln(w, "no locks")
		return
	}
	withAccount := false
	for _, l := range locks {
		withAccount = withAccount || l.Account != ""
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	row := func(l subjects.LockInfo, cells ...string) {
		if withAccount {
			cells = append([]string{cmp.Or(l.Account, "-")}, cells...)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	header := []string{"LOCK", "SIZE", "STATE", "OWNER", "KEY", "TOKEN", "FOR", "EXPIRES"}
	if withAccount {
		header = append([]string{"ACCOUNT"}, header...)
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, l := range locks {
		name, size := showName(l.Name), strconv.Itoa(l.Size)
		for _, h := range l.Holders {
			row(l, name, size, "held", showOwner(h.Owner), h.KeyPrefix, strconv.FormatUint(h.Token, 10),
				since(now, h.AcquiredAt), until(now, h.ExpiresAt))
		}
		if more := l.HoldersTotal - len(l.Holders); more > 0 {
			row(l, name, size, fmt.Sprintf("(%d more held)", more), "-", "-", "-", "-", "-")
		}
		for _, wt := range l.Waiters {
			row(l, name, size, "waiting", showOwner(wt.Owner), "-", "-", since(now, wt.Since), until(now, wt.Deadline))
		}
		if more := l.WaitersTotal - len(l.Waiters); more > 0 {
			row(l, name, size, fmt.Sprintf("(%d more waiting)", more), "-", "-", "-", "-", "-")
		}
		if len(l.Holders) == 0 && len(l.Waiters) == 0 {
			row(l, name, size, "free", "-", "-", "-", "-", "-")
		}
	}
	tw.Flush()
}

// showName quotes a lock name that would break the table's columns.
func showName(name string) string {
	if name == "" || strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(name)
	}
	return name
}

// showOwner names the connection of a grant; a lock taken without one
// (a plain `nats req`) is anonymous.
func showOwner(owner string) string { return cmp.Or(owner, "(anonymous)") }

// since is how long ago t was, in whole seconds.
func since(now, t time.Time) string {
	return max(now.Sub(t), 0).Round(time.Second).String()
}

// until is when t comes, relative to now; "-" for none.
func until(now, t time.Time) string {
	switch {
	case t.IsZero():
		return "-"
	case !t.After(now):
		return "now"
	}
	return "in " + t.Sub(now).Round(time.Second).String()
}

func runUnlock(args []string, stdout, stderr io.Writer) int {
	const command = "ldlm unlock"
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	conn := addClientFlags(fs)
	force := fs.Bool("force", false, "required: releases a lock that other programs hold")
	var req subjects.ForceUnlockRequest
	fs.StringVar(&req.Key, "key", "", "release only the grant with this key")
	fs.Uint64Var(&req.Token, "fencing-token", 0, "release only the grant with this fencing token (as ldlm list shows it)")
	fs.StringVar(&req.Account, "account", "", "the lock's account, when the service keeps one lock namespace per account")
	asJSON := fs.Bool("json", false, "print the service's JSON reply")
	nc, code := adminConnect(fs, conn, args, unlockUsage, stdout, stderr, func() error {
		switch {
		case fs.NArg() == 0:
			return errors.New("missing lock NAME")
		case fs.NArg() > 1:
			return fmt.Errorf("want one lock NAME, got %d arguments (flags go before NAME)", fs.NArg())
		case !*force:
			return errors.New("this releases a lock that others hold: add --force to do it")
		case req.Key != "" && req.Token != 0:
			return errors.New("give --key or --fencing-token, not both")
		}
		return nil
	})
	if nc == nil {
		return code
	}
	defer nc.Close()
	name := fs.Arg(0)
	var resp subjects.ForceUnlockResponse
	raw, err := adminRequest(nc, conn.prefix, subjects.OpAdminUnlock, name, req, &resp)
	if err != nil {
		return failed(stderr, command, fmt.Errorf("lock %q: %w", name, err))
	}
	if *asJSON {
		fmt.Fprintln(stdout, strings.TrimSpace(string(raw)))
		return 0
	}
	tokens := make([]string, len(resp.Released))
	for i, t := range resp.Released {
		tokens[i] = strconv.FormatUint(t, 10)
	}
	what := "grant"
	if len(tokens) != 1 {
		what = "grants"
	}
	fmt.Fprintf(stdout, "released lock %s: %d %s, fencing token %s\n", showName(resp.Name), len(tokens), what, strings.Join(tokens, ", "))
	return 0
}

// printStatus writes the status as "field: value" lines. The time of the
// last sweep is shown relative to the server's clock (started + uptime),
// so that a clock difference between the machines does not skew it.
func printStatus(w io.Writer, st subjects.StatusResponse) {
	uptime := time.Duration(st.Uptime * float64(time.Second))
	serverNow := st.Started.Add(uptime)
	lastSweep := "never"
	if !st.LastSweep.IsZero() {
		lastSweep = since(serverNow, st.LastSweep) + " ago (" + st.LastSweep.Format(time.RFC3339) + ")"
	}
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	for _, line := range [][2]string{
		{"version", st.Version},
		{"uptime", uptime.Round(time.Second).String() + " (since " + st.Started.Format(time.RFC3339) + ")"},
		{"prefix", st.Prefix},
		{"locks", strconv.Itoa(st.Locks)},
		{"holders", strconv.Itoa(st.Holders)},
		{"waiters", strconv.Itoa(st.Waiters)},
		{"connections", strconv.Itoa(st.Owners) + " (holding or waiting)"},
		{"liveness", st.Liveness},
		{"last sweep", lastSweep},
		{"clear on disconnect", strconv.FormatBool(st.ClearOnDisconnect)},
		{"tenants", strconv.FormatBool(st.Tenants)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", line[0], line[1])
	}
	tw.Flush()
}
