package service

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/subjects"
)

// adminList answers one page of the lock list. The page ends at the
// request's limit, or before its JSON would pass subjects.MaxListPageBytes,
// so that the reply always fits in a NATS message.
func (s *Service) adminList(req micro.Request) {
	var r subjects.ListRequest
	if len(req.Data()) > 0 {
		if err := json.Unmarshal(req.Data(), &r); err != nil {
			e := subjects.Errorf(subjects.CodeBadRequest, `body must be {"after":…,"limit":…,"prefix":…} or empty: %v`, err)
			s.replyError(req, e, subjects.ListResponse{Locks: []subjects.LockInfo{}, Error: e})
			return
		}
	}
	switch {
	case r.Limit == 0:
		r.Limit = subjects.DefaultListLimit
	case r.Limit < 1 || r.Limit > subjects.MaxListLimit:
		e := subjects.Errorf(subjects.CodeBadRequest, "limit must be 1 to %d, got %d", subjects.MaxListLimit, r.Limit)
		s.replyError(req, e, subjects.ListResponse{Locks: []subjects.LockInfo{}, Error: e})
		return
	}
	var match func(string) bool
	if r.Prefix != "" {
		match = func(n string) bool {
			_, name := splitEngineName(n)
			return strings.HasPrefix(name, r.Prefix)
		}
	}
	page, more := s.engine.Page(r.After, r.Limit, match, subjects.MaxListEntries)

	body := append(make([]byte, 0, 4096), `{"locks":[`...)
	next := ""
	for i, l := range page {
		b := mustJSON(lockInfo(l))
		// The closing part takes at most the next cursor (an engine name,
		// at most 6 bytes per byte once escaped) and a few bytes.
		if i > 0 && len(body)+len(b)+6*len(l.Name)+64 > subjects.MaxListPageBytes {
			more = true
			break
		}
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, b...)
		next = l.Name
	}
	body = append(body, ']')
	if more && next != "" {
		body = append(body, `,"next":`...)
		body = append(body, mustJSON(next)...)
	}
	body = append(body, '}')
	if err := req.Respond(body); err != nil {
		s.log.Debug("reply not sent", "subject", req.Subject(), "err", err)
	}
}

func lockInfo(l engine.LockInfo) subjects.LockInfo {
	account, name := splitEngineName(l.Name)
	info := subjects.LockInfo{Account: account, Name: name, Size: l.Size, Holders: make([]subjects.HolderInfo, 0, len(l.Holders)),
		HoldersTotal: l.HeldTotal, WaitersTotal: l.WaitingTotal}
	for _, h := range l.Holders {
		info.Holders = append(info.Holders, subjects.HolderInfo{
			Owner:      h.Owner.String(),
			KeyPrefix:  subjects.KeyPrefix(h.Key),
			Token:      h.Token,
			AcquiredAt: h.AcquiredAt.UTC(),
			ExpiresAt:  h.ExpiresAt.UTC(),
		})
	}
	for _, w := range l.Waiters {
		info.Waiters = append(info.Waiters, subjects.WaiterInfo{Owner: w.Owner.String(), Since: w.Since.UTC(), Deadline: w.Deadline.UTC()})
	}
	return info
}

func (s *Service) adminStatus(req micro.Request) {
	st := s.engine.Stats()
	s.respond(req, subjects.StatusResponse{
		Version:           s.cfg.Version,
		Started:           s.started.UTC(),
		Uptime:            time.Since(s.started).Seconds(),
		Prefix:            s.cfg.Prefix,
		Locks:             st.Locks,
		Holders:           st.Holders,
		Waiters:           st.Waiters,
		Owners:            st.Owners,
		Liveness:          s.live.source(),
		LastSweep:         s.live.LastSweep().UTC(),
		ClearOnDisconnect: !s.cfg.NoClearOnDisconnect,
		Tenants:           s.cfg.Tenants,
	})
}

func (s *Service) adminUnlock(req micro.Request) {
	name, err := subjects.NameFromSubject(s.cfg.Prefix, subjects.OpAdminUnlock, req.Subject(), s.cfg.MaxNameLength)
	if err != nil {
		s.adminUnlockFailed(req, "", err)
		return
	}
	var r subjects.ForceUnlockRequest
	if len(req.Data()) > 0 {
		if err := json.Unmarshal(req.Data(), &r); err != nil {
			s.adminUnlockFailed(req, name, subjects.Errorf(subjects.CodeBadRequest, "body must be {\"key\":…} or {\"token\":…} or empty: %v", err))
			return
		}
	}
	ename := s.engineName(r.Account, name)
	released, err := s.engine.ForceUnlock(ename, r.Key, r.Token)
	if err != nil {
		s.adminUnlockFailed(req, name, err)
		return
	}
	s.log.Info("operator force-released a lock", "lock", name, "tokens", released)
	resp := subjects.ForceUnlockResponse{Unlocked: true, Name: name, Released: released}
	if s.rec != nil {
		s.respondAfterWrite(req, ename, resp)
		return
	}
	s.respond(req, resp)
}

func (s *Service) adminUnlockFailed(req micro.Request, name string, err error) {
	e := toWireError(err)
	s.replyError(req, e, subjects.ForceUnlockResponse{Name: name, Error: e})
}

// onEvent runs for every event of the engine, outside its mutex, on the
// goroutine that caused it. It tells holders about lost grants and, when
// configured, publishes the event.
func (s *Service) onEvent(ev engine.Event) {
	if s.rec != nil {
		s.rec.mark(ev.Name)
	}
	account, name := splitEngineName(ev.Name)
	if ev.Kind.Lost() && !ev.Owner.IsZero() {
		s.tellLost(account, ev.Owner, subjects.LostNotice{Name: name, Token: ev.Token, Reason: ev.Kind.String()})
	}
	if s.cfg.Events {
		msg := subjects.Event{
			Kind:            ev.Kind.String(),
			Account:         account,
			Name:            name,
			Token:           ev.Token,
			Owner:           ev.Owner.String(),
			Time:            time.Now().UTC(),
			DurationSeconds: ev.Duration.Seconds(),
		}
		subject := s.cfg.Prefix + "." + subjects.EventsToken + "." + msg.Kind + "." + subjects.EncodeName(name)
		if err := s.nc.Publish(subject, mustJSON(msg)); err != nil {
			s.log.Debug("event not published", "subject", subject, "err", err)
		}
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer(ev)
	}
}

// tellLost publishes a lost notice to owner's subject, PREFIX.lost.OWNER
// (for a session, that of the connection it is bound to)
// (with tenants PREFIX.lost.ACCOUNT.OWNER, which each account imports as
// the former, see subjects.TenantLostSubject). A client that named its
// server by name, as clients did before the server id, listens on the
// subject of that name: when the server has a name of its own, the notice
// goes there too.
func (s *Service) tellLost(account string, owner subjects.Owner, notice subjects.LostNotice) {
	if owner.Session != "" {
		// A session's client listens on its connection's subject.
		if owner = s.live.sessions.connOf(owner.Session); owner.IsZero() {
			return // bound to no connection: nobody to tell
		}
	}
	body := mustJSON(notice)
	owners := []string{owner.String()}
	if name := s.live.nameOf(owner.ServerID); name != "" && name != owner.ServerID {
		owners = append(owners, subjects.FormatOwner(name, owner.ClientID))
	}
	for _, o := range owners {
		subject := subjects.LostSubject(s.cfg.Prefix, o)
		if s.cfg.Tenants {
			subject = subjects.TenantLostSubject(s.cfg.Prefix, account, o)
		}
		if err := s.nc.Publish(subject, body); err != nil {
			s.log.Debug("lost notice not sent", "owner", o, "err", err)
		}
	}
}
