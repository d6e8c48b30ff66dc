// Package clientlib is the Go client of LDLM, a light-weight distributed
// lock manager that runs as a NATS service. It works over a *nats.Conn the
// application already has, and depends on nothing of the server.
//
//	c, err := clientlib.New(nc)
//	l, err := c.Lock(ctx, "my-task")
//	if err != nil {
//		return err
//	}
//	defer l.Unlock(ctx)
//
// # Locks
//
// A lock is identified by its name, any UTF-8 string. It has a size, the
// number of holders it admits at once (WithSize; 1 by default), and may have
// a lock timeout (WithLockTimeout): unless renewed within that time, the
// service releases it. The client renews such a lock in the background, a
// third of the way into each timeout, unless WithAutoRenew(false).
//
// A lock belongs to the NATS connection that took it: when that connection
// closes, the service releases it, so a crashed program never leaves a lock
// behind. When the client sees its connection drop or reconnect, it marks
// the locks taken over it lost (unless WithKeepOnDisconnect, for a service
// run with LDLM_NO_CLEAR_ON_DISCONNECT=true).
//
// # Acquiring
//
// Lock waits until the lock is granted, its wait timeout (WithWaitTimeout)
// passes, or ctx ends. TryLock never waits for the lock. Both return a
// *Lock whose Locked method tells whether it is held: not obtaining a
// lock (it is held, the wait timed out) is not an error. WithLock and
// WithTryLock run a function while holding the lock, and release it after.
//
// Giving up never leaves a lock behind: every request carries a fresh random
// key chosen by the client, and when Lock gives up (ctx cancelled, deadline
// passed) it sends an unlock with that key, which releases a grant that
// raced with the cancellation or withdraws the queued wait.
//
// While no service answers (no responders) or the one that answers is
// stopping (Unavailable), every call asks again with growing pauses (10 ms
// doubling to 1 s), within its budget: ctx's deadline, the wait timeout,
// and at most the request timeout (WithRequestTimeout) of silence. So a
// Lock that waits while the service restarts gets the lock from the next
// instance.
//
// # Holding
//
// Lock.Done is closed when the lock is no longer held: after Unlock, when
// the lock timeout passed without renewal, when the service refused a
// renewal or said it released the lock, when the service instance that
// granted it went away, or when the connection dropped. Lock.Err says
// which. Code that must stop when the lock is lost selects on Done, or runs
// under WithLock, whose function context is cancelled on loss. Lock.Token
// is the grant's fencing token: pass it to the resource you protect so that
// it can refuse a holder that lost the lock without noticing in time.
//
// # Notices from the service
//
// The client listens to what the service publishes about its locks, so that
// a loss is known at once, not at the next renewal (a lock without a lock
// timeout is never renewed):
//
//   - PREFIX.lost.OWNER, where OWNER names the client's connection
//     (SERVER_ID:CLIENT_ID, as the NATS server calls them): the
//     service released a grant without an unlock from its holder. The lock
//     with that name and fencing token is lost, its cause ErrForceReleased
//     (an operator's admin unlock), ErrExpired (the lock timeout passed) or
//     ErrConnectionLost (the service saw the connection close). The owner
//     changes with every reconnect, and the client moves its one
//     subscription along; with WithKeepOnDisconnect it also keeps listening
//     for the owners of locks taken before a reconnect, which the service
//     keeps under their old owner.
//   - PREFIX.instance.started and PREFIX.instance.stopped: the service
//     keeps its locks in memory only, so a restart of the service loses
//     them even while NATS stays up. A lock is lost, with cause
//     ErrServiceRestarted, when the instance that granted it announces that
//     it stops, or when another instance announces its start (which covers
//     an instance that died without a word) or grants a lock to this
//     client. A Lock call that was waiting then asks again, since its wait
//     may be parked at an instance that is gone.
//
// The subscriptions need permission to subscribe to PREFIX.lost.> (or the
// client's own subject) and PREFIX.instance.>; without it the client still
// counts lock timeouts and follows its connection, and NATS reports the
// denial to the connection's error handler.
//
// # Concurrency
//
// One mutex of the Client guards all state of the client and of its locks,
// and one goroutine per Client follows the connection and fires every
// timer (renewals, expiries, request deadlines); a Lock owns none.
//
// # Errors
//
// Errors from the service are *Error values with a stable code; test them
// with errors.Is and the Err* sentinels (ErrLockSizeMismatch, ...). When no
// service answers the lock subjects, errors match ErrNoService and
// nats.ErrNoResponders.
package clientlib
