package main

// `ldlm status`'s list of instances: every instance of the prefix answers
// PREFIX.admin.instances, the active and its standbys (which answer
// nothing else), so the command gathers answers for a short while, as
// `nats micro ping` does, and shows how far each standby is behind.

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// instancesQuiet is how long `ldlm status` waits after an instance's
// answer for another: there is no knowing how many instances there are.
// The first answer may take up to requestTimeout, all of them together
// too.
const instancesQuiet = 300 * time.Millisecond

// gatherInstances asks every instance of prefix about itself and returns
// the answers, the active first, then the standbys by id; none when no
// instance answers (or an ldlm older than this command runs).
func gatherInstances(nc *nats.Conn, prefix string) ([]subjects.InstanceInfo, error) {
	subject := subjects.AdminSubject(prefix, subjects.OpAdminInstances, "")
	sub, err := nc.SubscribeSync(nc.NewRespInbox())
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, sub.Subject, nil); err != nil {
		return nil, fmt.Errorf("request on %s: %w", subject, err)
	}
	var infos []subjects.InstanceInfo
	deadline := time.Now().Add(requestTimeout)
	for wait := requestTimeout; ; wait = instancesQuiet {
		left := min(wait, time.Until(deadline))
		if left <= 0 {
			break
		}
		m, err := sub.NextMsg(left)
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("answers on %s: %w", subject, err)
		}
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			break // no responders: nothing listens on the subject
		}
		var info subjects.InstanceInfo
		if err := json.Unmarshal(m.Data, &info); err != nil {
			return nil, fmt.Errorf("unreadable answer on %s: %.200q: %w", subject, m.Data, err)
		}
		infos = append(infos, info)
	}
	slices.SortFunc(infos, func(a, b subjects.InstanceInfo) int {
		if a.Role != b.Role {
			return cmp.Compare(rank(a.Role), rank(b.Role))
		}
		return strings.Compare(a.ID, b.ID)
	})
	return infos, nil
}

// rank orders the roles: the active first.
func rank(role string) int {
	if role == subjects.RoleActive {
		return 0
	}
	return 1
}

// instanceReport is an instance's answer and, for a standby when an
// active with JetStream state answered too, how far it is behind it: the
// records the active has written that the standby has not applied yet,
// and then how long the standby has applied nothing. Each instance
// answers at a slightly different moment, so a standby of a busy active
// may show a few records behind that it has applied since.
type instanceReport struct {
	subjects.InstanceInfo
	BehindRecords *uint64  `json:"behind_records,omitempty"`
	BehindSeconds *float64 `json:"behind_seconds,omitempty"`
}

// statusReport is what `ldlm status --json` prints: the fields of the
// active's status reply (none when it did not answer) and every instance.
type statusReport struct {
	*subjects.StatusResponse
	Instances []instanceReport `json:"instances"`
}

// reportInstances computes how far each standby is behind the active.
func reportInstances(infos []subjects.InstanceInfo) []instanceReport {
	var activeSeq uint64
	withActive := false
	for _, i := range infos {
		if i.Role == subjects.RoleActive && i.Sequence > 0 {
			withActive, activeSeq = true, max(activeSeq, i.Sequence)
		}
	}
	reports := make([]instanceReport, 0, len(infos))
	for _, i := range infos {
		r := instanceReport{InstanceInfo: i}
		if i.Role == subjects.RoleStandby && withActive {
			var records uint64
			var seconds float64
			if activeSeq > i.Sequence {
				records, seconds = activeSeq-i.Sequence, i.IdleSeconds
			}
			r.BehindRecords, r.BehindSeconds = &records, &seconds
		}
		reports = append(reports, r)
	}
	return reports
}

// printInstances writes a line that counts the instances by role, then a
// row per instance.
func printInstances(w io.Writer, reports []instanceReport) {
	actives, standbys, state := 0, 0, ""
	for _, r := range reports {
		if r.Role == subjects.RoleActive {
			actives++
		} else {
			standbys++
		}
		state = cmp.Or(state, r.State)
	}
	summary := plural(actives, "active", "actives")
	if actives == 0 {
		summary = "no active"
	}
	summary += ", " + plural(standbys, "standby", "standbys")
	switch state {
	case "memory":
		summary += " (locks in memory: no standbys possible)"
	case "jetstream":
		summary += " (locks in a JetStream stream)"
	}
	fmt.Fprintf(w, "instances:           %s\n\n", summary)

	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tID\tNATS SERVER\tIN ROLE FOR\tSTREAM SEQ\tBEHIND THE ACTIVE")
	for _, r := range reports {
		seq, behind := "-", "-"
		if r.Sequence > 0 {
			seq = strconv.FormatUint(r.Sequence, 10)
		}
		switch {
		case r.Role != subjects.RoleStandby:
		case r.BehindRecords == nil:
			behind = "unknown: no active answers"
		case *r.BehindRecords == 0:
			behind = "up to date"
		default:
			behind = fmt.Sprintf("%s (applied nothing for %s)", plural(int(*r.BehindRecords), "record", "records"),
				(time.Duration(*r.BehindSeconds * float64(time.Second))).Round(time.Millisecond))
		}
		inRole := (time.Duration(r.RoleSeconds) * time.Second).String()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Role, r.ID, cmp.Or(r.Server, "-"), inRole, seq, behind)
	}
	tw.Flush()
}

// plural is "1 thing" or "N things".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
