package clientlib

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

const (
	defaultRequestTimeout = 5 * time.Second
	defaultCleanupTimeout = 5 * time.Second
)

// Client takes locks over a NATS connection that the caller owns. It is safe
// for use by many goroutines; every lock and every waiting Lock call shares
// the one connection.
type Client struct {
	nc               *nats.Conn
	prefix           string
	keepOnDisconnect bool
	requestTimeout   time.Duration
	cleanupTimeout   time.Duration

	status      chan nats.Status // connection status events, read by watchConnection
	watcherDone chan struct{}    // closed when watchConnection returns

	instanceSub *nats.Subscription // PREFIX.instance.*, from New to Close (notices.go)

	// refreshMu makes refreshConnection run one call at a time, so that
	// the lost-notice subscriptions follow the latest connection.
	refreshMu sync.Mutex
	lostSubs  map[string]*nats.Subscription // owner → PREFIX.lost.OWNER; guarded by refreshMu

	mu      sync.Mutex         // guards the fields below
	closed  bool               // Close was called
	cur     *epoch             // the connection as it is now; nil while disconnected
	changed chan struct{}      // closed and replaced whenever cur changes
	held    map[*Lock]struct{} // granted locks not yet unlocked or lost

	// What the service's notices said (notices.go).
	instance       string                // the instance that serves now, as last heard; "" not known
	unsure         bool                  // instance was learned from a reply while none was known, with no wake (see instanceServesLocked)
	goneInstances  []string              // instances known to be gone, oldest first
	instanceCtx    context.Context       // cancelled when another instance takes over
	instanceCancel context.CancelFunc    // cancels instanceCtx
	unmatched      []subjects.LostNotice // recent lost notices that matched no held lock, oldest first
}

// epoch is one unbroken stretch of the connection: connected, with one
// client id. A lock taken during an epoch belongs to that connection
// identity, and the service releases it when that connection goes away.
type epoch struct {
	gen   uint64 // nc.Stats().Reconnects during the epoch
	owner string // value of the Ldlm-Owner header; "" if the server gave no client id
	// ctx is cancelled when the epoch ends, to abort waits whose reply
	// could be lost with the connection.
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// errEpochEnded is the cancel cause of an epoch's context.
var errEpochEnded = errors.New("connection changed")

// New returns a Client that uses nc, a connection the caller keeps owning:
// Close the Client before closing nc. New does not contact the service.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, errors.New("ldlm: New needs a NATS connection")
	}
	c := &Client{
		nc:             nc,
		prefix:         subjects.DefaultPrefix,
		requestTimeout: defaultRequestTimeout,
		cleanupTimeout: defaultCleanupTimeout,
		watcherDone:    make(chan struct{}),
		changed:        make(chan struct{}),
		held:           make(map[*Lock]struct{}),
		lostSubs:       make(map[string]*nats.Subscription),
	}
	c.instanceCtx, c.instanceCancel = context.WithCancel(context.Background())
	for _, opt := range opts {
		opt(c)
	}
	if c.prefix == "" {
		return nil, errors.New("ldlm: the subject prefix must not be empty")
	}
	if nc.IsClosed() {
		return nil, fmt.Errorf("ldlm: New: %w", nats.ErrConnectionClosed)
	}
	// Subscribed before any request goes out: the server handles a
	// connection's messages in order, so no announcement made after our
	// first request is missed.
	if err := c.listenInstances(); err != nil {
		return nil, err
	}
	// A status listener, unlike nats.ReconnectHandler and friends, does not
	// replace handlers the application set on its connection.
	c.status = nc.StatusChanged(nats.CONNECTED, nats.DISCONNECTED, nats.RECONNECTING,
		nats.CONNECTING, nats.CLOSED, nats.DRAINING_SUBS, nats.DRAINING_PUBS)
	c.refreshConnection()
	go c.watchConnection()
	return c, nil
}

// Close stops the client: it unlocks every lock still held (waiting for
// each reply at most the cleanup timeout), stops listening to the service's
// notices, and later calls fail with ErrClientClosed. Close does not close
// the NATS connection.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true // from now on no lock is registered: late grants are cleaned up
	held := make([]*Lock, 0, len(c.held))
	for l := range c.held {
		held = append(held, l)
	}
	c.mu.Unlock()

	var errs []error
	for _, l := range held {
		if err := l.Unlock(context.Background()); err != nil && !errors.Is(err, ErrLockLost) && !errors.Is(err, ErrUnlocked) {
			errs = append(errs, err)
		}
	}

	c.nc.RemoveStatusListener(c.status) // closes c.status: watchConnection returns
	<-c.watcherDone
	// End the epoch (waiting Lock calls give up and clean up) and the
	// lost-notice subscriptions, then the announcements' one. Unsubscribe
	// fails only on a closed connection, which has no subscriptions left.
	c.refreshConnection()
	_ = c.instanceSub.Unsubscribe()
	c.mu.Lock()
	c.instanceCancel()
	c.mu.Unlock()
	return errors.Join(errs...)
}

// watchConnection follows the connection's status changes until Close.
func (c *Client) watchConnection() {
	defer close(c.watcherDone)
	for range c.status {
		c.refreshConnection()
	}
}

// refreshConnection compares the connection as it is now with c.cur. When
// the connection dropped or was replaced, it ends the epoch, which aborts the
// waits of that epoch and (unless keepOnDisconnect) marks its locks lost.
// It reads the connection's state afresh on every call, so a status event
// that arrives late or is dropped by nats.go (its buffer holds 10) does no
// harm as long as one later event or call follows. It also makes the
// lost-notice subscriptions follow the connection's owner identity, which
// changes with every reconnect.
func (c *Client) refreshConnection() {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	connected, gen, owner := c.connState()

	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if connected && !closed {
		c.listenLost(owner) // before the epoch whose requests name owner begins
	}

	c.mu.Lock()
	var lost []*Lock
	if c.cur != nil && (!connected || gen != c.cur.gen || c.closed) {
		c.cur.cancel(errEpochEnded)
		if !c.keepOnDisconnect && !c.closed {
			for l := range c.held {
				if l.epoch == c.cur {
					lost = append(lost, l)
				}
			}
		}
		c.cur = nil
		close(c.changed)
		c.changed = make(chan struct{})
	}
	if c.cur == nil && connected && !c.closed {
		ctx, cancel := context.WithCancelCause(context.Background())
		c.cur = &epoch{gen: gen, owner: owner, ctx: ctx, cancel: cancel}
		close(c.changed)
		c.changed = make(chan struct{})
	}
	c.mu.Unlock()

	loseAll(lost, ErrConnectionLost)
	c.dropLostSubs()
}

// connState reads, from nats.go, whether the connection is up, how many
// times it reconnected, and the owner identity of the current connection.
// nats.go counts a reconnect before it takes the new server's INFO (and
// client id) and before it reports CONNECTED, so an unchanged count around
// a CONNECTED status means the identity read in between is the current one.
func (c *Client) connState() (connected bool, gen uint64, owner string) {
	for {
		before := c.nc.Stats().Reconnects
		if c.nc.Status() != nats.CONNECTED {
			return false, 0, ""
		}
		server := c.nc.ConnectedServerName()
		cid, err := c.nc.GetClientID()
		if c.nc.Stats().Reconnects != before {
			continue // reconnected meanwhile: read again
		}
		if err != nil {
			return true, before, "" // a server without client ids: send no owner header
		}
		return true, before, subjects.FormatOwner(server, cid)
	}
}

// currentEpoch returns the connection's current epoch. When the connection
// is down it waits for it to come back, if wait is set, until ctx ends.
func (c *Client) currentEpoch(ctx context.Context, wait bool) (*epoch, error) {
	for {
		c.mu.Lock()
		closed, cur, changed := c.closed, c.cur, c.changed
		c.mu.Unlock()
		switch {
		case closed:
			return nil, ErrClientClosed
		case cur != nil:
			return cur, nil
		case c.nc.IsClosed():
			return nil, nats.ErrConnectionClosed
		case !wait:
			return nil, fmt.Errorf("%w: not connected", ErrConnectionLost)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}

// owner is the Ldlm-Owner header value to send now (unlock, renew).
func (c *Client) owner() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.cur.owner
}

// register records a freshly granted lock as held, or says why it is not:
//
//   - ErrClientClosed: the client was closed;
//   - ErrConnectionLost: the connection the lock was requested over is no
//     longer the current one (unless keepOnDisconnect), and the service
//     releases, or already released, the grant with that connection;
//   - an error matching ErrServiceRestarted: the instance that granted it is
//     known to be gone;
//   - a *LostError: a lost notice for the grant came before its reply was
//     handled (an operator released it at once, or it expired).
//
// A grant from an instance the client has not heard of tells it that this
// instance serves now: the locks granted by any other one are lost.
func (c *Client) register(l *Lock) error {
	// Read the connection first: refreshConnection may lag behind it.
	connected, gen, _ := c.connState()

	c.mu.Lock()
	err := c.admitLocked(l, connected, gen)
	var lost []*Lock
	if err == nil {
		if l.instance != "" {
			lost = c.instanceServesLocked(l.instance, false)
		}
		c.held[l] = struct{}{}
	}
	c.mu.Unlock()
	if len(lost) > 0 {
		loseAll(lost, fmt.Errorf("%w: another instance (%s) grants locks now", ErrServiceRestarted, l.instance))
	}
	return err
}

// admitLocked is the check of register. c.mu must be held.
func (c *Client) admitLocked(l *Lock, connected bool, gen uint64) error {
	switch {
	case c.closed:
		return ErrClientClosed
	case !c.keepOnDisconnect && (c.cur != l.epoch || !connected || gen != l.epoch.gen):
		return ErrConnectionLost
	case l.instance != "" && c.instanceGoneLocked(l.instance):
		return fmt.Errorf("%w: it (%s) stopped or another instance started", ErrServiceRestarted, l.instance)
	}
	if lost := c.noticedLocked(l); lost != nil {
		return lost
	}
	return nil
}

// forget removes l from the held locks.
func (c *Client) forget(l *Lock) {
	c.mu.Lock()
	delete(c.held, l)
	c.mu.Unlock()
}

// request sends one request and decodes the reply into out (a
// *subjects.LockResponse or *subjects.UnlockResponse). Errors are those of
// the transport; the service's own error is in out.
func (c *Client) request(ctx context.Context, owner, op, name string, req subjects.Request, out any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(subjects.Subject(c.prefix, op, name))
	msg.Data = body
	if owner != "" {
		msg.Header.Set(subjects.HeaderOwner, owner)
	}
	reply, err := c.nc.RequestMsgWithContext(ctx, msg)
	if errors.Is(err, nats.ErrNoResponders) {
		return noServiceError(msg.Subject, c.prefix, err)
	}
	if err != nil {
		return err
	}
	if err := decodeReply(reply.Data, out); err != nil {
		return fmt.Errorf("unreadable reply %.80q: %w", reply.Data, err)
	}
	return nil
}

// decodeReply is json.Unmarshal(data, out), through the subjects
// decoders for the two reply types: they give the same result at a
// fraction of the CPU, and a client decodes two replies per lock cycle.
func decodeReply(data []byte, out any) error {
	switch out := out.(type) {
	case *subjects.LockResponse:
		return subjects.DecodeLockResponse(data, out)
	case *subjects.UnlockResponse:
		return subjects.DecodeUnlockResponse(data, out)
	default:
		return json.Unmarshal(data, out)
	}
}

// unlockKey sends an unlock for key and returns the service's verdict: nil
// if it unlocked, else a transport error or an *Error.
func (c *Client) unlockKey(ctx context.Context, name, key string) error {
	ctx, cancel := context.WithTimeout(ctx, c.requestTimeout)
	defer cancel()
	var resp subjects.UnlockResponse
	if err := c.request(ctx, c.owner(), subjects.OpUnlock, name, subjects.Request{Key: key}, &resp); err != nil {
		return wrap(subjects.OpUnlock, name, err)
	}
	if resp.Error != nil {
		return serviceError(subjects.OpUnlock, name, resp.Error)
	}
	if !resp.Unlocked {
		return wrap(subjects.OpUnlock, name, errors.New("the service replied unlocked=false without an error"))
	}
	return nil
}

// withdraw takes back a lock request whose requester gave up on it: it
// sends unlock with the request's key, which releases a grant that raced in
// or cancels the queued wait (docs/protocol.md, "Waiting and giving up"). It
// uses a context of its own, detached from ctx's cancellation and bounded by
// the cleanup timeout.
//
// "Unknown key" is an ambiguous answer: the wait may have ended already (it
// timed out, its connection went away), or the service has not processed the
// lock request yet, for it may serve an unlock before the lock sent just
// before it. So withdraw then keeps sending the unlock in the background,
// with growing pauses, until it succeeds or the cleanup timeout passes. The
// caller does not wait for that.
func (c *Client) withdraw(ctx context.Context, name, key string) error {
	if c.nc.IsClosed() {
		return nil // the service releases what a closed connection held
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cleanupTimeout)
	err := c.unlockKey(ctx, name, key)
	if !unknownKey(err) {
		cancel()
		return err
	}
	go func() {
		defer cancel()
		pause := time.Millisecond
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			if err := c.unlockKey(ctx, name, key); !unknownKey(err) {
				return
			}
			pause = min(2*pause, 250*time.Millisecond)
		}
	}()
	return nil
}

// release unlocks a grant whose reply we received, so the service has
// processed the lock request: an "unknown key" answer means the grant is
// already gone. Like withdraw, it is bounded by the cleanup timeout and not
// by ctx's cancellation.
func (c *Client) release(ctx context.Context, name, key string) error {
	if c.nc.IsClosed() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cleanupTimeout)
	defer cancel()
	if err := c.unlockKey(ctx, name, key); !unknownKey(err) {
		return err
	}
	return nil
}

// unknownKey reports whether err is the service saying that the key holds
// or waits for no slot of the lock.
func unknownKey(err error) bool {
	return errors.Is(err, ErrInvalidLockKey) || errors.Is(err, ErrLockDoesNotExist) || errors.Is(err, ErrNotLocked)
}
