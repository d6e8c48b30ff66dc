package service

import (
	"bytes"

	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/subjects"
)

// This file answers what sessions (subjects.HeaderSession) need of the
// request handler: the owner of a request that names a session, and
// PREFIX.attach.

// sessionOwner is the owner of a request that carries session header v:
// the session, which the request binds to its connection conn (see
// sessionTable.bind). A session needs a connection to be bound to, so the
// request must name its connection too (Ldlm-Owner, or Nats-Request-Info
// with tenants).
func (s *Service) sessionOwner(v string, conn subjects.Owner) (subjects.Owner, error) {
	session, err := subjects.ParseSession(v)
	if err != nil {
		return subjects.Owner{}, err
	}
	if conn.IsZero() {
		return subjects.Owner{}, subjects.Errorf(subjects.CodeBadRequest,
			"a request with the %s header must name its connection in the %s header too (SERVER_ID:CLIENT_ID)", subjects.HeaderSession, subjects.HeaderOwner)
	}
	s.live.sessions.bind(session, conn)
	return subjects.Owner{Session: session}, nil
}

// attach answers PREFIX.attach: it binds the request's session to its
// connection and lists what the session holds and waits for. A client
// sends it after a reconnect. It runs in handle, so it is ordered with the
// connection's other requests. A subject with more tokens is not ours
// (another service may serve the prefix PREFIX.attach): no reply.
func (s *Service) attach(req micro.Request, tail string, counts *opCounts) {
	if tail != "" {
		return
	}
	counts.requests.Add(1)
	var resp subjects.AttachResponse
	err := s.attachTo(req, &resp)
	if err != nil {
		counts.errors.Add(1)
		e := toWireError(err)
		s.replyError(req, e, subjects.AttachResponse{Error: e})
		return
	}
	s.respond(req, resp)
}

func (s *Service) attachTo(req micro.Request, resp *subjects.AttachResponse) error {
	if body := bytes.TrimSpace(req.Data()); len(body) > 0 && string(body) != "{}" {
		return subjects.Errorf(subjects.CodeBadRequest, "attach takes an empty body (or {}), got %d bytes", len(req.Data()))
	}
	v := req.Headers().Get(subjects.HeaderSession)
	if v == "" {
		return subjects.Errorf(subjects.CodeBadRequest, "attach needs the %s header: the session to attach", subjects.HeaderSession)
	}
	conn, account, err := s.identify(req.Headers())
	if err != nil {
		return err
	}
	session, err := subjects.ParseSession(v)
	if err != nil {
		return err
	}
	if conn.IsZero() {
		return subjects.Errorf(subjects.CodeBadRequest, "attach needs the %s header: the connection to attach the session to (SERVER_ID:CLIENT_ID)", subjects.HeaderOwner)
	}
	if s.cfg.NoClearOnDisconnect {
		// Nothing is released on a disconnect: the session is not followed.
		resp.Resumed = true
	} else {
		resp.Resumed = s.live.sessions.bind(session, conn)
	}
	resp.Attached = true
	held, waiting := s.engine.OwnerEntries(subjects.Owner{Session: session})
	resp.Held = make([]subjects.AttachedLock, 0, len(held))
	resp.Waiting = make([]subjects.AttachedLock, 0, len(waiting))
	for _, en := range held {
		if acc, name := splitEngineName(en.Name); acc == account {
			resp.Held = append(resp.Held, subjects.AttachedLock{Name: name, Key: en.Key, Token: en.Token})
		}
	}
	for _, en := range waiting {
		if acc, name := splitEngineName(en.Name); acc == account {
			resp.Waiting = append(resp.Waiting, subjects.AttachedLock{Name: name, Key: en.Key})
		}
	}
	return nil
}
