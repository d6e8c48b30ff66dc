package subjects

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Limits on request fields that hold for every service.
const (
	// MaxTimeoutSeconds is the longest wait or lock timeout: one year.
	// Longer values are almost certainly a unit mistake.
	MaxTimeoutSeconds = 365 * 24 * 60 * 60
	// MaxKeyLength is the longest client-chosen key, in bytes.
	MaxKeyLength = 256
	// MaxLockSize is the largest size (number of slots) of a lock. A
	// semaphore of a million slots is already far past any real use; the
	// bound keeps a typo from looking like a valid request.
	MaxLockSize = 1_000_000
	// MaxOwnerLength is the longest HeaderOwner value, in bytes. The owner
	// becomes a token of the subject PREFIX.lost.OWNER, which NATS bounds
	// (4,096 bytes for a whole control line); a real owner is at most a
	// 56-character server id, ':' and 20 digits.
	MaxOwnerLength = 256
)

// Request is the JSON body of every operation. All fields are optional and
// an empty body means all defaults, so `nats req ldlm.trylock.job ”` works.
// Which fields an operation takes is checked by CheckFor.
type Request struct {
	// Size is the number of slots of the lock (a semaphore); 0 means 1.
	Size int `json:"size,omitempty"`
	// WaitTimeoutSeconds bounds how long a blocking lock waits; 0 waits
	// until granted. Only for lock.
	WaitTimeoutSeconds float64 `json:"wait_timeout_seconds,omitempty"`
	// LockTimeoutSeconds releases the grant unless it is renewed in time;
	// 0 means no timeout. Required for renew.
	LockTimeoutSeconds float64 `json:"lock_timeout_seconds,omitempty"`
	// Key is the holder's secret. On lock and trylock the client may choose
	// it (then it can cancel a wait race-free, see docs/protocol.md);
	// otherwise the service makes one. Required for unlock and renew.
	Key string `json:"key,omitempty"`

	// The rest is not in the body: the service fills it in from the
	// subject and the headers, once, and passes the request down whole.

	// Op and Name are the operation and the lock name of the subject.
	Op   string `json:"-"`
	Name string `json:"-"`
	// Owner is the requesting connection; zero when the request does not
	// say.
	Owner Owner `json:"-"`
	// Account is the requester's NATS account, known only from the
	// server-stamped Nats-Request-Info header, so only with tenants.
	Account string `json:"-"`
}

// DecodeRequest parses a request body. An empty (or all white space) body
// is the zero Request. Anything else must be one JSON object of the
// documented fields: an unknown field is an error rather than silently
// ignored, so a typo such as "lock_timeout" is caught. The error is an
// *Error with code BadRequest, InvalidLockSize, InvalidTimeout or
// InvalidLockKey. The usual bodies are read without allocating (see
// scanRequest).
func DecodeRequest(body []byte) (Request, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return Request{}, nil
	}
	if r, sizeGiven, keyGiven, ok := scanRequest(trimmed); ok {
		return r.check(sizeGiven, keyGiven)
	}
	return decodeRequestJSON(trimmed)
}

// decodeRequestJSON is DecodeRequest through encoding/json, for a body
// that is not empty after trimming white space.
func decodeRequestJSON(trimmed []byte) (Request, error) {
	if trimmed[0] != '{' {
		return Request{}, Errorf(CodeBadRequest, "body must be a JSON object (or empty for all defaults), got %s", quoteShort(string(trimmed)))
	}
	// The pointers shadow Request's size and key, to tell an explicit
	// zero from an absent field.
	var w struct {
		Request
		Size *int    `json:"size"`
		Key  *string `json:"key"`
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		msg := strings.TrimPrefix(err.Error(), "json: ")
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			msg = "field " + strconv.Quote(typeErr.Field) + " must be a " + typeErr.Type.String() + ", got a JSON " + typeErr.Value
		}
		return Request{}, Errorf(CodeBadRequest, "body is not a valid request: %s", msg)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Request{}, Errorf(CodeBadRequest, "body has data after the JSON object")
	}
	// encoding/json matches field names without regard to case ("Size");
	// the protocol's names are exact, as the scanner reads them.
	// Decode read trimmed as one object, so this cannot fail.
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(trimmed, &fields)
	for _, f := range slices.Sorted(maps.Keys(fields)) { // one answer for a body, whatever the map's order
		switch f {
		case "size", "wait_timeout_seconds", "lock_timeout_seconds", "key":
		default:
			return Request{}, Errorf(CodeBadRequest, "body is not a valid request: unknown field %s", quoteShort(f))
		}
	}
	if w.Size != nil {
		w.Request.Size = *w.Size
	}
	if w.Key != nil {
		w.Request.Key = *w.Key
	}
	return w.Request.check(w.Size != nil, w.Key != nil)
}

// check applies the limits that hold for every operation. An explicit
// zero size or empty key is an error, so check is told whether the body
// has them.
func (r Request) check(sizeGiven, keyGiven bool) (Request, error) {
	if sizeGiven && (r.Size < 1 || r.Size > MaxLockSize) {
		return Request{}, Errorf(CodeInvalidLockSize, "size must be 1 to %d, got %d", MaxLockSize, r.Size)
	}
	err := checkSeconds("wait_timeout_seconds", r.WaitTimeoutSeconds)
	if err == nil {
		err = checkSeconds("lock_timeout_seconds", r.LockTimeoutSeconds)
	}
	if err == nil && keyGiven {
		err = CheckKey(r.Key)
	}
	if err != nil {
		return Request{}, err
	}
	return r, nil
}

// CheckFor reports whether the request's fields fit operation op.
func (r Request) CheckFor(op string) error {
	switch op {
	case OpLock:
		return nil
	case OpTryLock:
		if r.WaitTimeoutSeconds != 0 {
			return Errorf(CodeBadRequest, "trylock does not take wait_timeout_seconds (trylock never waits; use lock)")
		}
		return nil
	case OpUnlock, OpRenew:
	default:
		return Errorf(CodeBadRequest, "unknown operation %q", op)
	}
	// Unlock and renew act on the grant of the key.
	switch {
	case r.Key == "":
		return Errorf(CodeInvalidLockKey, "%s needs the key that the lock reply gave", op)
	case op == OpRenew && r.LockTimeoutSeconds == 0:
		return Errorf(CodeInvalidTimeout, "renew needs lock_timeout_seconds, the new timeout counted from now")
	case r.Size != 0:
		return Errorf(CodeBadRequest, "%s does not take size", op)
	case r.WaitTimeoutSeconds != 0:
		return Errorf(CodeBadRequest, "%s does not take wait_timeout_seconds", op)
	case op == OpUnlock && r.LockTimeoutSeconds != 0:
		return Errorf(CodeBadRequest, "unlock does not take lock_timeout_seconds")
	}
	return nil
}

// WaitTimeout is WaitTimeoutSeconds as a Duration (0: no limit).
func (r Request) WaitTimeout() time.Duration { return seconds(r.WaitTimeoutSeconds) }

// LockTimeout is LockTimeoutSeconds as a Duration (0: no timeout).
func (r Request) LockTimeout() time.Duration { return seconds(r.LockTimeoutSeconds) }

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// CheckKey reports whether k can be a client-chosen key: 1 to MaxKeyLength
// bytes of printable ASCII.
func CheckKey(k string) error {
	if k == "" || len(k) > MaxKeyLength {
		return Errorf(CodeInvalidLockKey, "key must be 1 to %d bytes long, got %d", MaxKeyLength, len(k))
	}
	for i := 0; i < len(k); i++ {
		if k[i] < '!' || k[i] > '~' {
			return Errorf(CodeInvalidLockKey, "key must be printable ASCII without spaces")
		}
	}
	return nil
}

func checkSeconds(field string, s float64) error {
	if math.IsNaN(s) || s < 0 || s > MaxTimeoutSeconds {
		return Errorf(CodeInvalidTimeout, "%s must be between 0 and %d seconds, got %v", field, MaxTimeoutSeconds, s)
	}
	if s > 0 && s < 0.001 {
		return Errorf(CodeInvalidTimeout, "%s must be 0 (none) or at least 0.001 seconds, got %v", field, s)
	}
	return nil
}

// LockResponse is the reply to lock, trylock and renew.
type LockResponse struct {
	// Locked is true when the lock is held with Key; false when trylock
	// found it taken, the wait timed out, or the request failed.
	Locked bool   `json:"locked"`
	Name   string `json:"name"`
	// Key unlocks and renews this grant. Keep it secret.
	Key string `json:"key,omitempty"`
	// Token is the fencing token: larger for every later grant of any lock.
	// Pass it to the resource you protect so it can refuse a stale holder.
	Token uint64 `json:"token,omitempty"`
	// Size is the number of slots of the lock.
	Size int `json:"size,omitempty"`
	// ExpiresAt is when the grant is released unless renewed (absent: no
	// lock timeout).
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Instance is the id of the service instance that granted the lock.
	// When another instance starts, or this one stops, the grant is gone
	// (see InstanceNotice).
	Instance string `json:"instance,omitempty"`
	// WaitedMS is how long, in milliseconds, the request waited in the
	// service's queue before this grant (absent: it did not wait). A
	// client counts the lock timeout from when it sent the request plus
	// this, which is never later than the grant.
	WaitedMS uint64 `json:"waited_ms,omitempty"`
	Error    *Error `json:"error,omitempty"`
}

// UnlockResponse is the reply to unlock.
type UnlockResponse struct {
	Unlocked bool   `json:"unlocked"`
	Name     string `json:"name"`
	Error    *Error `json:"error,omitempty"`
}

// Owner is who a lock belongs to: a connection, or a session.
//
// A connection is the id of the NATS server it is connected to (INFO
// server_id) and its client id there. A server gives client ids out in
// increasing order from 1 and starts again when it restarts, with a new
// server id, so the pair names one connection for ever.
//
// A session (Session set, the other fields empty) is what a client that
// sends HeaderSession owns its locks as: the service binds it to the
// connection that used it last, and keeps its locks while that connection
// is cut for reasons that are not the client's (docs/protocol.md,
// "Sessions").
//
// The zero Owner is "nobody" (a lock that nothing frees but an unlock or
// its timeout).
type Owner struct {
	ServerID string
	ClientID uint64
	Session  string
}

// IsZero reports whether o is the zero Owner.
func (o Owner) IsZero() bool { return o == Owner{} }

// String is o for logs, events and listings: a connection as HeaderOwner
// carries it, SERVER_ID:CLIENT_ID; a session as "session:" and the first 8
// characters of its id, since the whole id is a secret.
func (o Owner) String() string {
	switch {
	case o.Session != "":
		return "session:" + o.Session[:min(8, len(o.Session))]
	case o.IsZero():
		return ""
	}
	return o.ServerID + ":" + strconv.FormatUint(o.ClientID, 10)
}

// FormatOwner is the value of HeaderOwner for a connection: the id of the
// NATS server it is connected to (nats.go: nc.ConnectedServerId()) and its
// client id there (nc.GetClientID()).
func FormatOwner(serverID string, clientID uint64) string {
	return Owner{ServerID: serverID, ClientID: clientID}.String()
}

// ParseOwner reads a HeaderOwner value, SERVER:CLIENT_ID. SERVER is the
// server's id, or the server's name as clients before the server id was
// used sent it: telling the two apart is the service's business (it knows
// the servers). The value must be at most MaxOwnerLength bytes of printable
// ASCII without spaces: it ends up in a subject, a header and log lines.
func ParseOwner(v string) (Owner, error) {
	if len(v) > MaxOwnerLength {
		return Owner{}, Errorf(CodeBadRequest, "%s header is %d bytes long, over the limit of %d: it must be SERVER_ID:CLIENT_ID", HeaderOwner, len(v), MaxOwnerLength)
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '!' || v[i] > '~' {
			return Owner{}, Errorf(CodeBadRequest, "%s header must be printable ASCII without spaces (SERVER_ID:CLIENT_ID), got %s", HeaderOwner, quoteShort(v))
		}
	}
	i := strings.LastIndexByte(v, ':')
	if i <= 0 {
		return Owner{}, Errorf(CodeBadRequest, "%s header must be SERVER_ID:CLIENT_ID, got %s", HeaderOwner, quoteShort(v))
	}
	cid, perr := strconv.ParseUint(v[i+1:], 10, 64)
	if perr != nil || cid == 0 {
		return Owner{}, Errorf(CodeBadRequest, "%s header must end in a client id above 0, got %s", HeaderOwner, quoteShort(v))
	}
	return Owner{ServerID: v[:i], ClientID: cid}, nil
}

// Bounds of a HeaderSession value. Our clients send 32 hex characters (128
// random bits); the minimum keeps a guessable id out.
const (
	MinSessionLength = 16
	MaxSessionLength = 64
)

// ParseSession reads a HeaderSession value: MinSessionLength to
// MaxSessionLength characters of A-Z, a-z, 0-9, '_' and '-'. Anything else
// is a BadRequest error.
func ParseSession(v string) (string, error) {
	if len(v) < MinSessionLength || len(v) > MaxSessionLength {
		return "", Errorf(CodeBadRequest, "%s header must be %d to %d characters long (clients send 32 random hex digits), got %d", HeaderSession, MinSessionLength, MaxSessionLength, len(v))
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return "", Errorf(CodeBadRequest, "%s header may hold only A-Z, a-z, 0-9, '_' and '-', got %s", HeaderSession, quoteShort(v))
		}
	}
	return v, nil
}

// AttachResponse is the reply to PREFIX.attach: what the session holds and
// waits for, now that it is bound to the requesting connection.
type AttachResponse struct {
	// Attached is true when the session is now bound to the connection.
	Attached bool `json:"attached"`
	// Resumed is true when the service still knew the session (it was
	// bound to a connection, or in its reconnect grace): then Held and
	// Waiting are all it has. False when the service knows nothing of it
	// (never seen, or released when its grace ended or its connection was
	// closed): the client should make a new session id, since the service
	// may refuse the old one's requests for a while (CodeOwnerGone).
	Resumed bool `json:"resumed"`
	// Held lists the session's grants, Waiting its parked lock requests.
	// With tenants, the names are those of the requester's account.
	Held    []AttachedLock `json:"held"`
	Waiting []AttachedLock `json:"waiting"`
	Error   *Error         `json:"error,omitempty"`
}

// AttachedLock is one grant (with its Token) or one wait (no Token) of a
// session.
type AttachedLock struct {
	Name  string `json:"name"`
	Key   string `json:"key"`
	Token uint64 `json:"token,omitempty"`
}

// DecodeAttachResponse reads the reply to PREFIX.attach.
func DecodeAttachResponse(data []byte, r *AttachResponse) error {
	*r = AttachResponse{}
	return json.Unmarshal(data, r)
}
