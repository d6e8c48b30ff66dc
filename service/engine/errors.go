package engine

import "errors"

// The errors of the engine. Results wrap them with the lock name and
// details, so compare with errors.Is. Errors given to a done callback are
// the bare values. Each message says when it happens.

// Errors of a request's fields.
var (
	ErrInvalidLockName  = errors.New("invalid lock name: give the lock a non-empty name")
	ErrInvalidLockSize  = errors.New("invalid lock size: use a size of 1 or more, or 0 for the default of 1")
	ErrLockSizeMismatch = errors.New("lock size mismatch: the lock exists with another size; use the same size in every request for a lock")
	ErrInvalidTimeout   = errors.New("invalid timeout: timeouts must not be negative, and renew needs a positive lock timeout")
)

// Errors of a key: ErrInvalidLockKey when the key neither holds nor waits
// for the lock, ErrNotLocked when Renew names a waiter's key, which holds
// no slot.
var (
	ErrInvalidLockKey   = errors.New("invalid lock key: the key does not hold this lock; use the key of the grant (the grant may have expired)")
	ErrLockDoesNotExist = errors.New("lock does not exist: no one holds or waits for it (the grant may have expired or been released)")
	ErrNotLocked        = errors.New("not locked: the key holds no slot of this lock yet; wait for the grant before renewing")
	ErrKeyInUse         = errors.New("lock key in use: the key already holds or waits for this lock; use a fresh key for every lock request")
)

// How a wait ends without a grant. ErrOwnerGone: the request's owner was
// released while it waited, or (WithGoneOwnerMemory) shortly before the
// request arrived.
var (
	ErrWaitTimeout   = errors.New("lock wait timeout: the lock was not granted in time; retry or wait longer")
	ErrWaitCancelled = errors.New("lock wait cancelled: an unlock with this request's key cancelled it")
	ErrOwnerGone     = errors.New("owner gone: the connection this request belongs to has closed; reconnect and ask again")
)

// Refusals of the engine as a whole. ErrLimitExceeded: a Limits bound
// would be passed.
var (
	ErrLimitExceeded = errors.New("limit exceeded: the server refuses to hold more; release locks or raise the server's limits")
	ErrEngineClosed  = errors.New("lock engine closed: the server is stopping; retry on another server or after a restart")
)
