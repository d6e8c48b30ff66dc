package service

import (
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/subjects"
)

// RequestsEndpoint is the name of the micro endpoint of the four lock
// operations, on PREFIX.> (`nats micro info ldlm`).
const RequestsEndpoint = "requests"

// handle answers every lock operation, PREFIX.OP.NAME. It is the handler of
// one subscription to PREFIX.>, so it reads one connection's requests in
// the order that connection sent them: an unlock that gives up a wait is
// never read before the lock request it cancels. It never blocks: a lock
// that must wait is parked in the engine and answered later from whichever
// goroutine frees the slot.
//
// The subscription also receives admin requests, notices and events: only
// the four operations and attach are answered. Anything else gets no word, not even an
// error: another service may serve a longer prefix under ours
// (PREFIX.team.lock.x), and its requesters take the first reply.
func (s *Service) handle(req micro.Request) {
	// The subscription guarantees the PREFIX. in front.
	op, tail, _ := strings.Cut(req.Subject()[len(s.cfg.Prefix)+1:], ".")
	counts := s.opStats[op]
	if counts == nil {
		return
	}
	if op == subjects.OpAttach {
		s.attach(req, tail, counts)
		return
	}
	counts.requests.Add(1)
	r, err := s.decode(req, op, tail)
	if err != nil {
		s.fail(req, r, err)
		return
	}
	switch op {
	case subjects.OpLock, subjects.OpTryLock:
		s.lock(req, r)
	case subjects.OpUnlock:
		name := s.engineName(r.Account, r.Name)
		if _, err := s.engine.Unlock(name, r.Key); err != nil {
			s.fail(req, r, err)
		} else {
			s.respondAfterWrite(req, name, subjects.UnlockResponse{Unlocked: true, Name: r.Name})
		}
	case subjects.OpRenew:
		if g, err := s.engine.Renew(s.engineName(r.Account, r.Name), r.Key, r.LockTimeout()); err != nil {
			s.fail(req, r, err)
		} else {
			s.respondGrant(req, r, g)
		}
	}
}

// decode makes the one Request of a lock operation from its subject's
// tail, its body and its headers. On error, the request has the operation
// and, when known, the name, for the error reply.
func (s *Service) decode(req micro.Request, op, tail string) (subjects.Request, error) {
	name, err := subjects.DecodeName(tail, s.cfg.MaxNameLength)
	if err != nil {
		return subjects.Request{Op: op}, err
	}
	if len(req.Data()) > s.cfg.MaxBodyBytes {
		return subjects.Request{Op: op, Name: name}, subjects.Errorf(subjects.CodeBadRequest, "body is %d bytes; the limit is %d", len(req.Data()), s.cfg.MaxBodyBytes)
	}
	r, err := subjects.DecodeRequest(req.Data())
	r.Op, r.Name = op, name
	if err == nil {
		err = r.CheckFor(op)
	}
	if err == nil {
		r.Owner, r.Account, err = s.identify(req.Headers())
	}
	if err == nil {
		if v := req.Headers().Get(subjects.HeaderSession); v != "" {
			r.Owner, err = s.sessionOwner(v, r.Owner)
		}
	}
	return r, err
}

func (s *Service) lock(req micro.Request, r subjects.Request) {
	lockTimeout := r.LockTimeout()
	if lockTimeout == 0 && (r.Owner.IsZero() || s.cfg.NoClearOnDisconnect) {
		// Nothing would ever free this lock but an unlock: bound it.
		lockTimeout = s.cfg.AnonymousLockTimeout
	}
	er := engine.Request{Name: s.engineName(r.Account, r.Name), Key: r.Key, Size: r.Size, Owner: r.Owner, LockTimeout: lockTimeout, Reply: req.Reply()}

	var (
		g   engine.Grant
		ok  bool
		err error
	)
	if r.Op == subjects.OpTryLock {
		g, ok, err = s.engine.TryLock(er)
	} else {
		// The engine calls done at the grant: the time since parked is
		// the wait the reply reports (waited_ms).
		reply, ename, parked := er.Reply, er.Name, time.Now()
		done := func(g engine.Grant, err error) { s.answerParked(reply, r.Name, g, time.Since(parked), err) }
		if s.rec != nil {
			done = func(g engine.Grant, err error) {
				waited := time.Since(parked)
				s.rec.after(ename, func() { s.answerParked(reply, r.Name, g, waited, err) })
			}
		}
		g, ok, err = s.engine.Lock(er, r.WaitTimeout(), done)
		if err == nil && !ok {
			if s.rec != nil {
				s.rec.mark(er.Name) // the wait is state too
			}
			return // parked: answerParked replies when the wait ends
		}
	}
	switch {
	case err != nil:
		s.fail(req, r, err)
	case !ok:
		s.respond(req, subjects.LockResponse{Locked: false, Name: r.Name})
	default:
		s.respondGrant(req, r, g)
	}
}

// respondGrant replies with grant g, or with Unavailable once Stop has
// announced this instance's stop: a client must never hear of a grant
// after it heard that the instance that made it stopped. replyMu makes the
// check and the reply one step, which the announcement cannot split.
func (s *Service) respondGrant(req micro.Request, r subjects.Request, g engine.Grant) {
	if s.rec != nil {
		s.respondAfterWrite(req, g.Name, s.grantResponse(r.Name, g, 0))
		return
	}
	s.replyMu.Lock()
	defer s.replyMu.Unlock()
	if s.stopping {
		s.fail(req, r, engine.ErrEngineClosed)
		return
	}
	s.respond(req, s.grantResponse(r.Name, g, 0))
}

// answerParked replies to a lock request that waited, for waited since
// it was parked. The requester may have stopped listening: then the reply
// is lost, which is why a client that gives up unlocks with its own key
// (see docs/protocol.md).
func (s *Service) answerParked(reply, name string, g engine.Grant, waited time.Duration, err error) {
	if reply == "" {
		return
	}
	s.replyMu.Lock()
	defer s.replyMu.Unlock()
	if err == nil && s.stopping {
		err = engine.ErrEngineClosed // see respondGrant
	}
	var perr error
	if err != nil {
		e := toWireError(err)
		msg := nats.NewMsg(reply)
		msg.Header.Set(subjects.HeaderErrorCode, string(e.Code))
		msg.Header.Set(subjects.HeaderError, e.Message)
		msg.Data = mustJSON(subjects.LockResponse{Locked: false, Name: name, Error: e})
		perr = s.nc.PublishMsg(msg)
	} else {
		// A grant has no headers: a plain publish, as micro's Respond
		// does underneath, without building a message.
		perr = s.nc.Publish(reply, mustJSON(s.grantResponse(name, g, waited)))
	}
	if perr != nil {
		s.log.Warn("replying to a parked lock request", "lock", name, "err", perr)
	}
}

// grantResponse is the reply of grant g, made after a wait of waited
// (rounded down to whole milliseconds, so never more than the wait).
func (s *Service) grantResponse(name string, g engine.Grant, waited time.Duration) subjects.LockResponse {
	return subjects.LockResponse{
		WaitedMS:  uint64(max(waited, 0) / time.Millisecond),
		Locked:    true,
		Name:      name,
		Key:       g.Key,
		Token:     g.Token,
		Size:      g.Size,
		ExpiresAt: g.ExpiresAt.UTC(),
		Instance:  s.instance,
	}
}

func (s *Service) respond(req micro.Request, body any) {
	if err := req.Respond(mustJSON(body)); err != nil {
		s.log.Debug("reply not sent", "subject", req.Subject(), "err", err)
	}
}

// respondAfterWrite replies with body once the change of lock name (the
// engine's name) is written (JetStream mode: see recorder); in memory
// mode, at once.
func (s *Service) respondAfterWrite(req micro.Request, name string, body any) {
	if s.rec == nil {
		s.respond(req, body)
		return
	}
	s.rec.after(name, func() { s.respond(req, body) })
}

// fail replies with the error in the body and in the micro error headers.
func (s *Service) fail(req micro.Request, r subjects.Request, err error) {
	e := toWireError(err)
	var body any = subjects.LockResponse{Locked: false, Name: r.Name, Error: e}
	if r.Op == subjects.OpUnlock {
		body = subjects.UnlockResponse{Unlocked: false, Name: r.Name, Error: e}
	}
	if e.Code == subjects.CodeInternal {
		s.log.Error("request failed", "op", r.Op, "lock", r.Name, "err", err)
	}
	s.opStats[r.Op].errors.Add(1)
	s.replyError(req, e, body)
}

// replyError replies with e in the micro error headers and in body.
func (s *Service) replyError(req micro.Request, e *subjects.Error, body any) {
	if err := req.Error(string(e.Code), e.Message, mustJSON(body)); err != nil {
		s.log.Debug("error reply not sent", "subject", req.Subject(), "err", err)
	}
}

// engineCodes maps the engine's errors to wire codes.
var engineCodes = map[error]subjects.ErrorCode{
	engine.ErrInvalidLockName:  subjects.CodeInvalidLockName,
	engine.ErrInvalidLockSize:  subjects.CodeInvalidLockSize,
	engine.ErrLockSizeMismatch: subjects.CodeLockSizeMismatch,
	engine.ErrInvalidLockKey:   subjects.CodeInvalidLockKey,
	engine.ErrKeyInUse:         subjects.CodeLockKeyInUse,
	engine.ErrLockDoesNotExist: subjects.CodeLockDoesNotExist,
	engine.ErrNotLocked:        subjects.CodeNotLocked,
	engine.ErrInvalidTimeout:   subjects.CodeInvalidTimeout,
	engine.ErrWaitTimeout:      subjects.CodeLockWaitTimeout,
	engine.ErrWaitCancelled:    subjects.CodeLockWaitCancelled,
	engine.ErrOwnerGone:        subjects.CodeOwnerGone,
	engine.ErrLimitExceeded:    subjects.CodeLimitExceeded,
	engine.ErrEngineClosed:     subjects.CodeUnavailable,
}

func toWireError(err error) *subjects.Error {
	var we *subjects.Error
	if errors.As(err, &we) {
		return we
	}
	// An engine error wraps one sentinel at most.
	for sentinel, code := range engineCodes {
		if errors.Is(err, sentinel) {
			return &subjects.Error{Code: code, Message: err.Error()}
		}
	}
	return &subjects.Error{Code: subjects.CodeInternal, Message: err.Error()}
}

// mustJSON encodes a reply. The lock and unlock replies, sent on every
// request, are written by hand (byte for byte what json.Marshal writes);
// anything else goes through json.Marshal.
func mustJSON(v any) []byte {
	var (
		b   []byte
		err error
	)
	switch r := v.(type) {
	case subjects.LockResponse:
		// The fields around the strings take at most about 120 bytes.
		b, err = subjects.AppendLockResponse(make([]byte, 0, 128+len(r.Name)+len(r.Key)+len(r.Instance)), r)
	case subjects.UnlockResponse:
		b = subjects.AppendUnlockResponse(make([]byte, 0, 32+len(r.Name)), r)
	default:
		b, err = json.Marshal(v)
	}
	if err != nil {
		// Only our own plain structs are marshalled; failing here is a bug.
		panic("service: marshalling a reply: " + err.Error())
	}
	return b
}
