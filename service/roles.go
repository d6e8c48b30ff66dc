package service

import (
	crand "crypto/rand"
	"encoding/hex"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file answers PREFIX.admin.instances (`ldlm status`): every instance
// of the prefix, the active and each standby, says what it is and how far
// it has followed the state stream. Standbys register no micro service
// (they must not answer lock requests, nor be found by `nats micro ping`),
// so the subject is a plain subscription of every instance, without a
// queue group: each answers. Nothing here is on the request path.

// role is what the instance is now. Who owns what: it is replaced whole
// (Service.role), never changed, so the answer reads one consistent value.
type role struct {
	name     string // subjects.RoleActive or subjects.RoleStandby
	since    time.Time
	microID  string // the micro service's id; only the active has one
	instance string // Service.instance, read here without a race
}

// applied is how far a standby has read the state stream, replaced whole
// (Service.applied).
type applied struct {
	seq uint64    // the last stream sequence applied
	at  time.Time // when seq last grew
}

// newInstanceID names this process's instance in PREFIX.admin.instances.
func newInstanceID() string {
	var id [8]byte
	crand.Read(id[:])
	return hex.EncodeToString(id[:])
}

// setRole records that the instance took role name now.
func (s *Service) setRole(name string) {
	s.role.Store(&role{name: name, since: time.Now(), microID: s.id, instance: s.instance})
}

// noteApplied records that a standby has applied the state stream up to
// sequence seq (its loop calls it for every record, and with what it read
// whole before it follows).
func (s *Service) noteApplied(seq uint64) {
	if a := s.applied.Load(); a != nil && a.seq == seq {
		return
	}
	s.applied.Store(&applied{seq: seq, at: time.Now()})
}

// answerInstances is PREFIX.admin.instances. In memory mode the single
// instance answers as the active, without a sequence.
func (s *Service) answerInstances(m *nats.Msg) {
	r := s.role.Load()
	now := time.Now()
	info := subjects.InstanceInfo{
		ID:          s.procID,
		MicroID:     r.microID,
		Instance:    r.instance,
		Role:        r.name,
		State:       s.cfg.State,
		Version:     s.cfg.Version,
		Server:      s.nc.ConnectedServerName(),
		Since:       r.since.UTC(),
		RoleSeconds: now.Sub(r.since).Seconds(),
	}
	switch {
	case s.rec != nil && r.name == subjects.RoleActive:
		// The role was stored after the takeover set the recorder's
		// writer: reading the role first makes reading w safe.
		info.Sequence = s.rec.w.Acked()
	case r.name == subjects.RoleStandby:
		if a := s.applied.Load(); a != nil {
			info.Sequence = a.seq
			info.IdleSeconds = now.Sub(a.at).Seconds()
		}
	}
	if err := m.Respond(mustJSON(info)); err != nil {
		s.log.Debug("instances answer not sent", "err", err)
	}
}

// subscribeInstances subscribes answerInstances; stopMicro ends it, with
// the rest of what the instance answers. Call it once the role is set,
// before any goroutine that may call stopMicro starts. A failure only
// keeps this instance out of `ldlm status`: it is logged.
func (s *Service) subscribeInstances() {
	subject := subjects.AdminSubject(s.cfg.Prefix, subjects.OpAdminInstances, "")
	sub, err := s.nc.Subscribe(subject, s.answerInstances)
	if err != nil {
		s.log.Warn("this instance will not answer "+subject+" (ldlm status)", "err", err)
		return
	}
	s.instancesSub = sub
}
