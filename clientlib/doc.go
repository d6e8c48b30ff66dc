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
// third of the way into each timeout, unless WithAutoRenew(false). The
// timeout counts from the grant: a Lock that waited in the queue longer
// than its timeout still gets (about) the whole of it, as the service says
// how long the request waited.
//
// A lock belongs to the client's session (a random id the client makes in
// New and sends on every request), which the service binds to the NATS
// connection the client uses: when that connection is closed (by the
// client, or because its process died), the service releases the lock at
// once, so a crashed program never leaves a lock behind. When the
// connection is cut by its NATS server instead (shutdown, restart, lame
// duck mode, a stale connection) and nats.go reconnects within the
// service's LDLM_RECONNECT_GRACE, the client re-attaches its session: its
// locks stay held, with the same key and token, and its waiting Lock calls
// keep their place in the queue. Only what the service released meanwhile
// ends, with a LostError whose cause matches ErrConnectionLost. While no
// service answers the attach (a takeover in progress), the client asks
// again for up to a minute (or the request timeout, if longer), and its
// locks stay held meanwhile. Against a service that never answers the
// attach (older than sessions), or with WithSessions(false), a lock
// belongs to the connection and a reconnect loses it (unless
// WithKeepOnDisconnect, for a service run with
// LDLM_NO_CLEAR_ON_DISCONNECT=true).
//
// # Acquiring and holding
//
// Lock waits for the lock, TryLock does not; both return a *Lock whose
// Locked method tells whether it is held (not obtaining a lock is not an
// error). WithLock and WithTryLock run a function while holding the lock.
// Giving up never leaves a lock behind: every request carries a fresh
// random key chosen by the client, and a call that gives up sends an
// unlock with it. While no service answers, or the one that answers is
// stopping, calls ask again with growing pauses (10 ms doubling to 1 s)
// within their budget, so a waiting Lock rides out a restart of the
// service. An unlock that got no answer within its budget, sent by Unlock
// or by the client itself, returns its error, and the client sends it
// again in the background (one goroutine, pauses doubling up to 5 s, at
// most 10,000 keys) until a service answers or the client is closed: a
// grant is never left with a service that comes back.
//
// Lock.Done is closed when the lock is no longer held, and Lock.Err says
// why. Lock.Token is the grant's fencing token: pass it to the resource you
// protect so that it can refuse a holder that lost the lock without
// noticing in time.
//
// # Notices from the service
//
// The client listens to what the service publishes about its locks, so that
// a loss is known at once, not at the next renewal:
//
//   - PREFIX.lost.OWNER, where OWNER names the client's connection
//     (SERVER_ID:CLIENT_ID): the service released a grant without an
//     unlock from its holder (ErrForceReleased, ErrExpired, or
//     ErrConnectionLost when it saw the connection close). The client
//     follows the owner across reconnects.
//   - PREFIX.instance.started and PREFIX.instance.stopped: the service
//     keeps its locks in memory only, so a lock is lost (ErrServiceRestarted)
//     when the instance that granted it stops, or another instance starts
//     or grants a lock to this client. A waiting Lock call then asks again.
//
// The subscriptions need permission to subscribe to PREFIX.lost.> (or the
// client's own subject) and PREFIX.instance.>; without it the client still
// counts lock timeouts and follows its connection, and NATS reports the
// denial to the connection's error handler.
//
// # Errors
//
// Errors from the service are *Error values with a stable code; test them
// with errors.Is and the Err* sentinels (ErrLockSizeMismatch, ...). When no
// service answers the lock subjects, errors match ErrNoService and
// nats.ErrNoResponders.
package clientlib
