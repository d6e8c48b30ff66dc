package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// Two lock services answering the same prefix on the same NATS would both
// grant the same lock. So an instance looks for others (through micro's
// $SRV.PING) before it answers, again right after it subscribed, and then
// every sweep interval (see watch); the younger of two steps down, loudly.

// ErrDuplicateInstance is why a service refuses to start or stops itself:
// another instance serves the same subject prefix.
var ErrDuplicateInstance = errors.New("another ldlm service instance serves the same subject prefix on this NATS; " +
	"two instances would grant the same locks: stop one, or give one another LDLM_SUBJECT_PREFIX")

// Metadata keys of the micro service.
const (
	metaPrefix  = "prefix"
	metaStarted = "started"
)

// pingFirstAnswer is how long to wait for any other instance to answer a
// ping; in the normal case none does, so this is paid at every start.
const pingFirstAnswer = 300 * time.Millisecond

type pingReply struct {
	ID       string            `json:"id"`
	Metadata map[string]string `json:"metadata"`
}

// yieldsTo reports whether this instance must step down for r: the older
// instance keeps serving, since clients hold its locks. An instance whose
// age cannot be read is taken to be older.
func (s *Service) yieldsTo(r pingReply) bool {
	started, err := time.Parse(time.RFC3339Nano, r.Metadata[metaStarted])
	if err != nil {
		return true
	}
	if started.Equal(s.started) {
		return r.ID < s.id
	}
	return started.Before(s.started)
}

// checkRivals steps down (returns ErrDuplicateInstance) if an older
// instance serves our prefix, and warns about younger ones.
func (s *Service) checkRivals(ctx context.Context) error {
	msgs, err := gather(ctx, s.nc, "$SRV.PING."+ServiceName, nil, pingFirstAnswer, connzQuiet)
	if err != nil {
		return fmt.Errorf("looking for other instances: %w", err)
	}
	for _, msg := range msgs {
		var r pingReply
		if json.Unmarshal(msg.Data, &r) != nil || r.ID == s.id || r.Metadata[metaPrefix] != s.cfg.Prefix {
			continue
		}
		if s.rec != nil {
			// With JetStream state, any instance that answers is the
			// active: Start makes this one a standby.
			return fmt.Errorf("%w (instance %s)", ErrDuplicateInstance, r.ID)
		}
		if s.yieldsTo(r) {
			s.log.Error("another instance serves this prefix and is older: stepping down",
				"prefix", s.cfg.Prefix, "other_instance", r.ID, "this_instance", s.id)
			return fmt.Errorf("%w (instance %s)", ErrDuplicateInstance, r.ID)
		}
		s.log.Error("another, younger instance serves this prefix; it must step down",
			"prefix", s.cfg.Prefix, "other_instance", r.ID, "this_instance", s.id)
	}
	return nil
}

// rivalCheckInterval is how often a running service looks for rivals when
// it sweeps only at start and after reconnects.
const rivalCheckInterval = 30 * time.Second

// announce tells clients that this instance started or stopped: locks
// granted by any other instance are gone (see subjects.InstanceNotice).
func (s *Service) announce(event string) {
	notice := subjects.InstanceNotice{Instance: s.instance, Event: event, Time: time.Now().UTC()}
	if err := s.nc.Publish(subjects.InstanceSubject(s.cfg.Prefix, event), mustJSON(notice)); err != nil {
		s.log.Warn("instance announcement not sent", "event", event, "err", err)
		return
	}
	if err := s.nc.FlushTimeout(2 * time.Second); err != nil {
		s.log.Warn("instance announcement not flushed", "event", event, "err", err)
	}
}
