package subjects

import "fmt"

// ErrorCode names one kind of failure. Codes are stable: clients branch on
// them, so a code is never renamed, only added.
type ErrorCode string

// The error codes a reply can carry.
const (
	// CodeBadRequest: the body is not a JSON object of the documented
	// fields, or a field is not allowed for the operation.
	CodeBadRequest ErrorCode = "BadRequest"
	// CodeInvalidLockName: the name is empty, too long, not UTF-8, or its
	// '~' encoding is broken.
	CodeInvalidLockName ErrorCode = "InvalidLockName"
	// CodeInvalidLockSize: size is below 1 or above the service's limit.
	CodeInvalidLockSize ErrorCode = "InvalidLockSize"
	// CodeLockSizeMismatch: the lock exists with another size.
	CodeLockSizeMismatch ErrorCode = "LockSizeMismatch"
	// CodeInvalidTimeout: a timeout is negative, too large, or missing
	// where it is required.
	CodeInvalidTimeout ErrorCode = "InvalidTimeout"
	// CodeInvalidLockKey: the key does not hold the lock, or is malformed.
	CodeInvalidLockKey ErrorCode = "InvalidLockKey"
	// CodeLockKeyInUse: the client-chosen key already holds or waits for
	// this lock; use a fresh key for every lock request.
	CodeLockKeyInUse ErrorCode = "LockKeyInUse"
	// CodeLockDoesNotExist: no one holds or waits for the lock.
	CodeLockDoesNotExist ErrorCode = "LockDoesNotExist"
	// CodeNotLocked: the lock has waiters but no holders, or (renew) the
	// key is still waiting.
	CodeNotLocked ErrorCode = "NotLocked"
	// CodeLockWaitTimeout: a blocking lock was not granted within
	// wait_timeout_seconds. The reply also says "locked": false.
	CodeLockWaitTimeout ErrorCode = "LockWaitTimeout"
	// CodeLockWaitCancelled: the wait was cancelled by an unlock with the
	// waiter's key. Usually nobody reads this reply: the waiter gave up.
	CodeLockWaitCancelled ErrorCode = "LockWaitCancelled"
	// CodeOwnerGone: the connection that asked for the lock disconnected
	// while it waited.
	CodeOwnerGone ErrorCode = "OwnerGone"
	// CodeLimitExceeded: a configured limit (locks, waiters) is reached.
	CodeLimitExceeded ErrorCode = "LimitExceeded"
	// CodeInternal: a fault of the service; the message says what.
	CodeInternal ErrorCode = "Internal"
	// CodeUnavailable: the service is shutting down.
	CodeUnavailable ErrorCode = "Unavailable"
)

// Error is the error object of a reply: a stable code to branch on and a
// message for people.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Error returns "Code: message".
func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Header names. The error headers are the ones NATS micro services use, so
// `nats req` and any micro-aware client show the failure without reading
// the body.
const (
	HeaderErrorCode = "Nats-Service-Error-Code"
	HeaderError     = "Nats-Service-Error"

	// HeaderRequestInfo is stamped by the NATS server on requests that cross
	// an account import with sharing on, over any value the client set.
	// Within one account the client's own value passes through, so the
	// service trusts it only in tenant mode, where every request crosses an
	// import.
	HeaderRequestInfo = "Nats-Request-Info"

	// HeaderOwner is set by LDLM clients to the identity of the connection
	// they send on, as "SERVER_ID:CLIENT_ID" (see FormatOwner; the service
	// also accepts the server's name instead of its id, as older clients
	// send it). Locks taken with it are released when that connection
	// closes.
	HeaderOwner = "Ldlm-Owner"

	// HeaderSession is set by LDLM clients to their session id (see
	// ParseSession), the same on every request of one client for its whole
	// life, across reconnects. Locks taken with it belong to the session,
	// not to the connection: a session whose connection is cut by its NATS
	// server keeps them while it reconnects (docs/protocol.md, "Sessions").
	// It is a secret like a key: whoever sends it acts as the session.
	HeaderSession = "Ldlm-Session"
)
