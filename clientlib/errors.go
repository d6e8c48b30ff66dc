package clientlib

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ldlm-io/ldlm/subjects"
)

// Sentinel errors for the codes the lock service replies with, for use with
// errors.Is. The error itself is an *Error, which carries the operation, the
// lock name and the service's message:
//
//	if errors.Is(err, clientlib.ErrLockSizeMismatch) { ... }
//
//	var e *clientlib.Error
//	if errors.As(err, &e) { log.Print(e.Code, e.Message) }
var (
	ErrBadRequest        error = codeError(subjects.CodeBadRequest)
	ErrInvalidLockName   error = codeError(subjects.CodeInvalidLockName)
	ErrInvalidLockSize   error = codeError(subjects.CodeInvalidLockSize)
	ErrLockSizeMismatch  error = codeError(subjects.CodeLockSizeMismatch)
	ErrInvalidTimeout    error = codeError(subjects.CodeInvalidTimeout)
	ErrInvalidLockKey    error = codeError(subjects.CodeInvalidLockKey)
	ErrLockKeyInUse      error = codeError(subjects.CodeLockKeyInUse)
	ErrLockDoesNotExist  error = codeError(subjects.CodeLockDoesNotExist)
	ErrNotLocked         error = codeError(subjects.CodeNotLocked)
	ErrLockWaitTimeout   error = codeError(subjects.CodeLockWaitTimeout)
	ErrLockWaitCancelled error = codeError(subjects.CodeLockWaitCancelled)
	ErrOwnerGone         error = codeError(subjects.CodeOwnerGone)
	ErrLimitExceeded     error = codeError(subjects.CodeLimitExceeded)
	ErrInternal          error = codeError(subjects.CodeInternal)
	ErrUnavailable       error = codeError(subjects.CodeUnavailable)
)

// Errors of the client itself.
var (
	// ErrNotObtained: TryLock found every slot held, or Lock's wait
	// timeout passed. Lock and TryLock report this through Lock.Locked,
	// not as an error; WithLock and WithTryLock return it.
	ErrNotObtained = errors.New("ldlm: lock not obtained")

	// ErrUnlocked: Unlock was called on the lock.
	ErrUnlocked = errors.New("ldlm: lock was unlocked")

	// ErrClientClosed: the Client was closed.
	ErrClientClosed = errors.New("ldlm: client closed")

	// ErrNoService: nobody answered the lock subjects (no responders) for
	// as long as the call could wait. It comes wrapped together with
	// nats.ErrNoResponders.
	ErrNoService = errors.New("ldlm: no lock service answers")
)

// codeError is the type of the code sentinels: an *Error matches the
// sentinel of its code.
type codeError subjects.ErrorCode

func (c codeError) Error() string { return "ldlm: " + string(c) }

// Error is a failure reported by the lock service (or found by the client
// before sending, with the same code the service would give).
type Error struct {
	Op      string             // subjects.OpLock, OpTryLock, OpUnlock or OpRenew
	Name    string             // the lock name
	Code    subjects.ErrorCode // stable; branch on it with errors.Is and the Err* sentinels
	Message string             // for people
}

func (e *Error) Error() string {
	return fmt.Sprintf("ldlm: %s %q: %s: %s", e.Op, e.Name, e.Code, e.Message)
}

// Is matches the sentinel of e's code. A wait timeout also matches
// ErrNotObtained.
func (e *Error) Is(target error) bool {
	if target == ErrNotObtained {
		return e.Code == subjects.CodeLockWaitTimeout
	}
	c, ok := target.(codeError)
	return ok && subjects.ErrorCode(c) == e.Code
}

func serviceError(op, name string, se *subjects.Error) *Error {
	return &Error{Op: op, Name: name, Code: se.Code, Message: se.Message}
}

// ErrLockLost matches every *LostError: a held lock was lost.
var ErrLockLost = errors.New("ldlm: lock lost")

// The causes of a loss (LostError.Cause), besides the *Error of a refused
// renewal (ErrInvalidLockKey, ErrNotLocked, ErrLockDoesNotExist).
var (
	// ErrExpired: the lock timeout passed without a successful renewal,
	// as counted by the client or as the service reported it.
	ErrExpired = errors.New("ldlm: lock timeout passed without renewal")

	// ErrForceReleased: an operator released the lock through the admin
	// subjects (PREFIX.admin.unlock.NAME).
	ErrForceReleased = errors.New("ldlm: an operator force-released the lock")

	// ErrServiceRestarted: the service instance that granted the lock
	// stopped, or another instance started. The service keeps its locks in
	// memory only, so the grants of an instance die with it; the new
	// instance knows nothing of them and grants the lock to others.
	ErrServiceRestarted = errors.New("ldlm: the lock service instance that granted the lock is gone")

	// ErrConnectionLost: the NATS connection that holds the lock dropped,
	// closed, or reconnected under a new identity; the service releases
	// the locks of a connection that goes away.
	ErrConnectionLost = errors.New("ldlm: NATS connection lost")
)

// LostError is what Lock.Err returns once a held lock is lost. It matches
// ErrLockLost, and its Cause says why (see above). Test the cause with
// errors.Is: it may be wrapped with details.
type LostError struct {
	Name  string
	Cause error
}

func (e *LostError) Error() string {
	return fmt.Sprintf("ldlm: lock %q lost: %s", e.Name, strings.TrimPrefix(e.Cause.Error(), "ldlm: "))
}

// Unwrap returns the cause.
func (e *LostError) Unwrap() error { return e.Cause }

// Is matches ErrLockLost.
func (e *LostError) Is(target error) bool { return target == ErrLockLost }

// opError puts the operation and the lock name in front of err.
type opError struct {
	op, name string
	err      error
}

func wrap(op, name string, err error) error {
	var e *Error
	if errors.As(err, &e) && e.Op == op && e.Name == name {
		return err // says it already
	}
	return &opError{op: op, name: name, err: err}
}

func (e *opError) Error() string {
	return fmt.Sprintf("ldlm: %s %q: %s", e.op, e.name, strings.TrimPrefix(e.err.Error(), "ldlm: "))
}

func (e *opError) Unwrap() error { return e.err }
