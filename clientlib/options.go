package clientlib

import "time"

// Option configures a Client (see New).
type Option func(*Client)

// WithPrefix sets the first token of the lock subjects, for a service
// started with LDLM_SUBJECT_PREFIX. Default: subjects.DefaultPrefix ("ldlm").
func WithPrefix(prefix string) Option { return func(c *Client) { c.prefix = prefix } }

// WithKeepOnDisconnect tells the client that the service runs with
// LDLM_NO_CLEAR_ON_DISCONNECT=true, so a lock survives its connection
// dropping. Such locks are bounded by their lock timeout instead (give
// them one). With sessions (the default) a reconnect keeps held locks
// anyway, for as long as the service says so in its reply to the
// client's attach; this option then matters only when no attach reply
// comes (a service older than sessions): held locks are kept rather than
// marked lost. Without sessions, a reconnect does not mark held locks
// lost.
func WithKeepOnDisconnect(keep bool) Option { return func(c *Client) { c.keepOnDisconnect = keep } }

// WithSessions turns sessions on or off. Default: on. With sessions the
// client sends the Ldlm-Session header, a random id it makes in New, on
// every request, so that its locks belong to the client rather than to
// its NATS connection: when the connection is cut by its NATS server
// (shutdown, restart, a stale or broken connection) and nats.go
// reconnects within the service's LDLM_RECONNECT_GRACE, the client
// re-attaches (PREFIX.attach) and keeps its locks and its place in
// queues; Done is closed only for a lock that the service really
// released. Closing the connection still releases every lock at once.
// Off: every lock belongs to the connection and is lost on any reconnect
// (ErrConnectionLost), as with services older than sessions.
func WithSessions(on bool) Option { return func(c *Client) { c.sessions = on } }

// WithRequestTimeout bounds each trylock, unlock and renew request, besides
// the caller's context, and how long any call keeps asking while no service
// answers or the one that answers is stopping. Default: 5 seconds.
func WithRequestTimeout(d time.Duration) Option { return func(c *Client) { c.requestTimeout = d } }

// WithCleanupTimeout bounds the unlock that the client sends on its own:
// after Lock gives up, from Unlock when the caller's context is already
// done, and on Close. Default: 5 seconds.
func WithCleanupTimeout(d time.Duration) Option { return func(c *Client) { c.cleanupTimeout = d } }

// LockOption configures one Lock or TryLock call.
type LockOption func(*lockOptions)

// WithSize sets the number of slots of the lock: up to n holders at once
// (a semaphore). Every request for the same lock must use the same size
// while it is held or waited for, else ErrLockSizeMismatch. Default: 1.
func WithSize(n int) LockOption { return func(o *lockOptions) { o.size = n } }

// WithLockTimeout makes the service release the lock unless it is renewed
// within d; the client renews it in the background (see WithAutoRenew).
// Default: none; the lock lives until Unlock or its connection closes.
func WithLockTimeout(d time.Duration) LockOption { return func(o *lockOptions) { o.lockTimeout = d } }

// WithWaitTimeout makes Lock give up after waiting d: it then returns a Lock
// whose Locked is false (not an error). Default: wait until the context
// ends. TryLock never waits and refuses this option (ErrBadRequest).
func WithWaitTimeout(d time.Duration) LockOption { return func(o *lockOptions) { o.waitTimeout = d } }

// WithAutoRenew turns background renewal (every third of the lock timeout)
// on or off. Default: on. Turn it off to let the lock expire on purpose
// (rate limiting), or to renew by hand with Lock.Renew.
func WithAutoRenew(on bool) LockOption { return func(o *lockOptions) { o.autoRenew = on } }

type lockOptions struct {
	size        int
	lockTimeout time.Duration
	waitTimeout time.Duration
	autoRenew   bool
}

func newLockOptions(opts []LockOption) lockOptions {
	if len(opts) == 0 {
		return lockOptions{autoRenew: true} // without the allocation that o below costs
	}
	o := &lockOptions{autoRenew: true}
	for _, opt := range opts {
		opt(o)
	}
	return *o
}
