package clientlib

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// Client takes locks over a NATS connection that the caller owns. It is safe
// for use by many goroutines; every lock and every waiting Lock call shares
// the one connection.
//
// Concurrency lives in one place: Client.mu guards all mutable state of
// the client and of its locks, and one goroutine, run, follows the
// connection's status and fires the timers (it starts a goroutine for each
// automatic renewal, which is a request). Two more goroutines send what
// must be asked until answered: reattach after a reconnect (sessions.go),
// and releaser, the unlocks that got no answer (releases.go). Callers and
// NATS callbacks take mu for short sections that never wait on the
// network.
type Client struct {
	nc               *nats.Conn
	prefix           string
	keepOnDisconnect bool
	sessions         bool // send Ldlm-Session and re-attach after reconnects (WithSessions)
	requestTimeout   time.Duration
	cleanupTimeout   time.Duration

	status      chan nats.Status   // connection status events, read by run
	poke        chan struct{}      // wakes run when a timer moved earlier (buffer 1)
	runDone     chan struct{}      // closed when run returns
	instanceSub *nats.Subscription // PREFIX.instance.*, from New to Close (notices.go)
	// ctx is cancelled when Close starts: it ends the attach tries and
	// the releaser, whose end closes releaserDone.
	ctx          context.Context
	stop         context.CancelFunc
	releaseWake  chan struct{} // wakes releaser when a key was added (buffer 1)
	releaserDone chan struct{}

	mu       sync.Mutex                    // guards everything below, and the fields of every Lock marked so
	closed   bool                          // Close was called
	cur      *epoch                        // the connection as it is now; nil while disconnected
	changed  chan struct{}                 // closed and replaced whenever cur changes
	held     map[*Lock]struct{}            // granted locks not yet unlocked or lost
	pending  map[*pending]struct{}         // requests waiting for their reply
	timers   timerHeap                     // renewals and expiries of held locks, deadlines of requests; soonest first
	wakeAt   time.Time                     // when run's timer fires next
	lostSubs map[string]*nats.Subscription // owner → PREFIX.lost.OWNER
	// session is the id sent in Ldlm-Session (sessions.go); replaced when
	// the service says it forgot it. attached is the epoch whose attach
	// was settled (or that needed none): until then, what earlier epochs
	// held and waited for is neither kept nor lost.
	session  string
	attached *epoch
	// releases are the unlocks that got no answer, oldest first, which
	// releaser sends again (releases.go).
	releases []unconfirmedRelease

	// What the service's notices said (notices.go).
	instance      string                // the instance that serves now, as last heard; "" not known
	unsure        bool                  // instance was learned from a reply while none was known, with no wake (see instanceServesLocked)
	goneInstances []string              // instances known to be gone, oldest first
	unmatched     []subjects.LostNotice // recent lost notices that matched no held lock, oldest first
}

// epoch is one unbroken stretch of the connection: connected, with one
// client id. A lock taken during an epoch belongs to that connection
// identity, and the service releases it when that connection goes away.
type epoch struct {
	gen uint64 // nc.Stats().Reconnects during the epoch
	// header has the Ldlm-Owner header and, with sessions, Ldlm-Session;
	// nil if the server gave no client id. Guarded by Client.mu: it is
	// replaced, never modified, when the session changes, and sent by
	// many requests at once.
	header nats.Header
	owner  string // value of the Ldlm-Owner header
}

// pending is a request waiting for its reply. The client cancels it, with
// reason set, when its deadline passes, when its epoch ends, or (a lock
// request) when its wait may be parked at an instance that is gone.
type pending struct {
	ep    *epoch // nil: not tied to the connection's epoch
	waits bool   // a lock request, which may be parked at the service
	key   string // the request's key, which an attach reply names
	// The request is sent with a context that stopLocked cancels: cancel's,
	// or, when the caller's context never ends, the pending itself (see
	// newPending), closing done.
	cancel  context.CancelFunc
	parent  context.Context
	done    chan struct{}
	stopped atomic.Bool // set before done is closed
	reason  error       // why it was cancelled; guarded by Client.mu
	timer   timer       // its deadline; guarded by Client.mu
}

// newPending makes the record of a request and the context to send it
// with. For a ctx that never ends (context.Background, the common case)
// that context is the pending itself, which saves building and tearing
// down a cancelable context per request.
func newPending(ctx context.Context, waits bool) (*pending, context.Context, context.CancelFunc) {
	if ctx.Done() == nil {
		p := &pending{waits: waits, parent: ctx, done: make(chan struct{})}
		return p, p, func() {}
	}
	reqCtx, cancel := context.WithCancel(ctx)
	return &pending{waits: waits, cancel: cancel}, reqCtx, cancel
}

// A pending made for a ctx that never ends is the request's context.
func (p *pending) Deadline() (time.Time, bool) { return p.parent.Deadline() }
func (p *pending) Done() <-chan struct{}       { return p.done }
func (p *pending) Value(key any) any           { return p.parent.Value(key) }
func (p *pending) Err() error {
	if p.stopped.Load() {
		return context.Canceled
	}
	return nil
}

// Why the client cancelled a request (pending.reason).
var (
	errEpochEnded      = errors.New("connection changed")
	errInstanceChanged = errors.New("another instance of the lock service serves now")
	errNoReply         = errors.New("no reply from the lock service in time")
)

// farFuture is when run's timer fires while no lock has a timeout.
var farFuture = time.Now().AddDate(100, 0, 0)

// New returns a Client that uses nc, a connection the caller keeps owning:
// Close the Client before closing nc. New does not contact the service.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, errors.New("ldlm: New needs a NATS connection")
	}
	c := &Client{
		nc:             nc,
		prefix:         subjects.DefaultPrefix,
		requestTimeout: 5 * time.Second,
		cleanupTimeout: 5 * time.Second,
		poke:           make(chan struct{}, 1),
		runDone:        make(chan struct{}),
		releaseWake:    make(chan struct{}, 1),
		releaserDone:   make(chan struct{}),
		changed:        make(chan struct{}),
		held:           make(map[*Lock]struct{}),
		pending:        make(map[*pending]struct{}),
		wakeAt:         farFuture,
		lostSubs:       make(map[string]*nats.Subscription),
		sessions:       true,
		session:        newKey(),
	}
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
	// first request is missed. The subscription lives until Close and
	// survives reconnects (nats.go subscribes again).
	sub, err := nc.Subscribe(subjects.InstanceSubject(c.prefix, "*"), c.onInstance)
	if err != nil {
		return nil, fmt.Errorf("ldlm: New: subscribing to the lock service's instance announcements: %w", err)
	}
	c.instanceSub = sub
	// A status listener, unlike nats.ReconnectHandler and friends, does not
	// replace handlers the application set on its connection.
	c.status = nc.StatusChanged(nats.CONNECTED, nats.DISCONNECTED, nats.RECONNECTING,
		nats.CONNECTING, nats.CLOSED, nats.DRAINING_SUBS, nats.DRAINING_PUBS)
	c.ctx, c.stop = context.WithCancel(context.Background())
	c.mu.Lock()
	c.refreshLocked()
	c.mu.Unlock()
	go c.run()
	go c.releaser()
	return c, nil
}

// Close stops the client: it unlocks every lock still held (all within the
// cleanup timeout), stops listening to the service's notices and asking
// again the unlocks that got no answer, and later calls fail with
// ErrClientClosed. Close does not close the NATS connection: what an
// unanswered unlock left with the service goes when the connection
// closes.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true         // from now on no lock is registered: late grants are cleaned up
	c.setEpochLocked(c.cur) // wakes Lock calls waiting for a connection
	held := slices.Collect(maps.Keys(c.held))
	c.releases = nil
	c.mu.Unlock()
	c.stop() // ends the attach tries and the releaser

	// One budget for all: a service that went away without a word (its
	// locks look held) must not cost a request timeout per lock.
	ctx, cancel := context.WithTimeout(context.Background(), c.cleanupTimeout)
	defer cancel()
	var errs []error
	for _, l := range held {
		if err := l.Unlock(ctx); err != nil && !errors.Is(err, ErrLockLost) && !errors.Is(err, ErrUnlocked) {
			errs = append(errs, err)
		}
	}

	c.nc.RemoveStatusListener(c.status) // closes c.status: run returns
	<-c.runDone
	select { // cancelled, its request returns at once
	case <-c.releaserDone:
	case <-time.After(c.cleanupTimeout):
	}
	// End the epoch (waiting Lock calls give up and clean up) and the
	// subscriptions. Unsubscribe fails only on a closed connection, which
	// has no subscriptions left.
	c.mu.Lock()
	c.refreshLocked()
	c.mu.Unlock()
	_ = c.instanceSub.Unsubscribe()
	return errors.Join(errs...)
}

// run is the client's goroutine (see Client), until Close.
func (c *Client) run() {
	defer close(c.runDone)
	timer := time.NewTimer(time.Until(farFuture))
	defer timer.Stop()
	for {
		select {
		case _, ok := <-c.status:
			if !ok {
				return
			}
			c.mu.Lock()
			c.refreshLocked()
			c.mu.Unlock()
		case <-c.poke:
		case <-timer.C:
		}
		c.mu.Lock()
		c.fireLocked(time.Now())
		wake := c.wakeAt
		c.mu.Unlock()
		timer.Reset(time.Until(wake))
	}
}

// refreshLocked compares the connection as it is now with c.cur. When the
// connection dropped or was replaced, it ends the epoch, which aborts the
// requests of that epoch and (unless keepOnDisconnect) loses its locks;
// with sessions, it aborts only the requests that cannot be parked at the
// service, and the new epoch's attach decides about the rest (see
// reattach). It reads the connection's state afresh on every call, so a
// status event that arrives late or is dropped by nats.go (its buffer
// holds 10) does no harm as long as one later event or call follows. c.mu
// must be held.
func (c *Client) refreshLocked() {
	connected, gen, owner := c.connState()
	if c.cur != nil && (!connected || gen != c.cur.gen || c.closed) {
		survives := c.sessionLocked(c.cur) && !c.closed && !c.nc.IsClosed()
		for p := range c.pending {
			if p.ep == c.cur && !(survives && p.waits) {
				p.stopLocked(errEpochEnded)
			}
		}
		if !survives && !c.keepOnDisconnect && !c.closed {
			for l := range c.held {
				if l.ep == c.cur {
					c.finishLocked(l, &LostError{Name: l.name, Cause: ErrConnectionLost})
				}
			}
		}
		c.setEpochLocked(nil)
	}
	if c.cur == nil && c.nc.IsClosed() {
		// No reconnect will come (closed, or out of reconnect attempts):
		// what the session kept waiting for an attach is lost, and the
		// service saw the connection close.
		c.settleLocked(nil, nil)
	}
	if c.cur == nil && connected && !c.closed {
		ep := &epoch{gen: gen, owner: owner}
		if owner != "" {
			ep.header = c.headerFor(owner)
		}
		first := c.attached == nil
		c.setEpochLocked(ep)
		if first || !c.sessionLocked(ep) {
			c.settleLocked(ep, nil) // nothing to attach, or no sessions: as before
		} else {
			go c.reattach(ep)
		}
	}
	c.followOwnersLocked()
}

func (c *Client) setEpochLocked(ep *epoch) {
	c.cur = ep
	close(c.changed)
	c.changed = make(chan struct{})
}

// connState reads, from nats.go, whether the connection is up, how many
// times it reconnected, and its owner identity: SERVER_ID:CLIENT_ID
// (docs/protocol.md; the server's id, not its name, which a restarted
// server keeps while it hands out client ids from 1 again). nats.go counts
// a reconnect before it takes the new server's INFO and reports CONNECTED,
// so an unchanged count around the reads means they are of one connection.
func (c *Client) connState() (connected bool, gen uint64, owner string) {
	for {
		before := c.nc.Stats().Reconnects
		if c.nc.Status() != nats.CONNECTED {
			return false, 0, ""
		}
		cid, err := c.nc.GetClientID()
		server := c.nc.ConnectedServerId()
		if c.nc.Stats().Reconnects != before {
			continue // reconnected meanwhile: read again
		}
		if err != nil {
			return true, before, "" // a server without client ids: send no owner header
		}
		return true, before, subjects.FormatOwner(server, cid)
	}
}

// begin registers p, a lock or trylock request about to be sent, with the
// current epoch and its deadline (zero: none), and returns the epoch and
// the headers to send. While the connection is down, a lock request waits
// for it until ctx ends.
func (c *Client) begin(ctx context.Context, p *pending, deadline time.Time) (*epoch, nats.Header, error) {
	for {
		c.mu.Lock()
		closed, cur, changed := c.closed, c.cur, c.changed
		var header nats.Header
		if !closed && cur != nil {
			p.ep = cur
			header = cur.header
			c.trackLocked(p, deadline)
		}
		c.mu.Unlock()
		switch {
		case closed:
			return nil, nil, ErrClientClosed
		case cur != nil:
			return cur, header, nil
		case c.nc.IsClosed():
			return nil, nil, nats.ErrConnectionClosed
		case !p.waits:
			return nil, nil, fmt.Errorf("%w: not connected", ErrConnectionLost)
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-changed:
		}
	}
}

// trackLocked registers p, with its deadline (zero: none). c.mu must be held.
func (c *Client) trackLocked(p *pending, deadline time.Time) {
	c.pending[p] = struct{}{}
	if !deadline.IsZero() {
		p.timer.req = p
		c.setTimerLocked(&p.timer, deadline)
	}
}

// end unregisters p and returns why its request was cancelled, if it was
// by the client.
func (c *Client) end(p *pending) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endLocked(p)
}

func (c *Client) endLocked(p *pending) error {
	delete(c.pending, p)
	c.stopTimerLocked(&p.timer)
	return p.reason
}

// stopLocked cancels p's request for reason. c.mu must be held.
func (p *pending) stopLocked(reason error) {
	if p.reason == nil {
		p.reason = reason
		if p.cancel != nil {
			p.cancel()
		} else {
			p.stopped.Store(true)
			close(p.done)
		}
	}
}

// header is the Ldlm-Owner header to send now (unlock, renew).
func (c *Client) header() nats.Header {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.headerLocked()
}

func (c *Client) headerLocked() nats.Header {
	if c.cur == nil {
		return nil
	}
	return c.cur.header
}

// register records a freshly granted lock as held, and ends p, the request
// that brought it (nil: none); a grant that a lost notice overtook is
// registered as lost. It refuses, ending the lock and saying why, a grant
// to a closed client, over a connection that is no longer the current one
// (unless keepOnDisconnect: the service releases it with that connection;
// or with sessions, until the current connection's attach settles it),
// or from an instance known to be gone. A grant from an instance the client
// has not heard of tells it that this instance serves now.
func (c *Client) register(l *Lock, p *pending) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p != nil {
		c.endLocked(p)
		if p.ep != nil {
			l.ep = p.ep // an attach may have moved the request to a later epoch
		}
	}
	if len(c.status) > 0 {
		c.refreshLocked() // run has not seen the connection's latest change yet
	}
	var err error
	switch {
	case c.closed:
		err = ErrClientClosed
	case !c.keepOnDisconnect && c.cur != l.ep && !c.unsettledLocked(l.ep):
		err = ErrConnectionLost
	case l.instance != "" && slices.Contains(c.goneInstances, l.instance):
		err = fmt.Errorf("%w: it (%s) stopped or another instance started", ErrServiceRestarted, l.instance)
	default:
		err = c.noticedLocked(l)
	}
	if lost, ok := err.(*LostError); ok {
		c.finishLocked(l, lost)
		return nil
	}
	if err != nil {
		c.finishLocked(l, &LostError{Name: l.name, Cause: err})
		return err
	}
	if l.instance != "" {
		c.instanceServesLocked(l.instance, false)
	}
	c.held[l] = struct{}{}
	c.scheduleLocked(l)
	return nil
}

// finishLocked ends l for reason err, unless it ended already: it closes
// Done, forgets the lock and its timer. c.mu must be held.
func (c *Client) finishLocked(l *Lock, err error) {
	if l.err != nil {
		return
	}
	l.err = err
	if l.done != nil {
		close(l.done)
	} // else Done, if ever called, returns closedDone
	delete(c.held, l)
	c.scheduleLocked(l) // takes it off the timers
}

// request sends one request and returns the reply's body. It waits for
// the reply until ctx ends, or, when timeout is set, for timeout (then ctx
// must be one that never ends). Errors are those of the transport; the
// service's own error is in the body.
func (c *Client) request(ctx context.Context, timeout time.Duration, header nats.Header, op, name string, req subjects.Request) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	msg := nats.Msg{Subject: subjects.Subject(c.prefix, op, name), Header: header, Data: body}
	var reply *nats.Msg
	if timeout > 0 {
		reply, err = c.nc.RequestMsg(&msg, timeout)
	} else {
		reply, err = c.nc.RequestMsgWithContext(ctx, &msg)
	}
	if err != nil {
		return nil, err
	}
	return reply.Data, nil
}

// ask sends one unlock or renew and waits for the reply until ctx ends or
// deadline passes.
func (c *Client) ask(ctx context.Context, deadline time.Time, header nats.Header, op, name string, req subjects.Request) ([]byte, error) {
	if ctx.Done() == nil {
		// Only the deadline can end it (Unlock from a Close or a
		// context.Background(), say): nats.go's pooled timer does that at
		// a fraction of a context's cost.
		data, err := c.request(ctx, max(time.Until(deadline), time.Millisecond), header, op, name, req)
		if errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("%w (%w)", errNoReply, err)
		}
		return data, err
	}
	p, reqCtx, cancel := newPending(ctx, false) // no deadline of its own: run's timer ends it, which costs less
	defer cancel()
	c.mu.Lock()
	c.trackLocked(p, deadline)
	c.mu.Unlock()
	data, err := c.request(reqCtx, 0, header, op, name, req)
	if reason := c.end(p); err != nil && reason != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("%w (%w)", reason, nats.ErrTimeout)
	}
	return data, err
}

// unreadable is the error of a reply that the subjects decoders could not
// read (they give encoding/json's result at a fraction of its CPU).
func unreadable(data []byte, err error) error {
	return fmt.Errorf("unreadable reply %.80q: %w", data, err)
}

// Pauses between the tries of an unanswered request, and between repeated
// tries of Lock, double from retryPause up to maxRetryPause.
const (
	retryPause    = 10 * time.Millisecond
	maxRetryPause = time.Second
)

// unanswered reports whether no lock service took the request: nobody
// listens, or the one that does is stopping. Another may take over.
func unanswered(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, ErrUnavailable)
}

// gaveUp is the error of a request that went unanswered (see unanswered)
// for as long as the caller let it, since first: err is the last answer.
func (c *Client) gaveUp(op, name string, first time.Time, err error) error {
	d := time.Since(first).Round(time.Millisecond)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%w on %s (asked for %v): is the ldlm service running, with subject prefix %q? (%w)",
			ErrNoService, subjects.Subject(c.prefix, op, name), d, c.prefix, err)
	}
	return fmt.Errorf("%w; asked again for %v, and no other instance answered", err, d)
}

// call sends req (unlock or renew) and returns what read makes of the
// reply. It asks again, with growing pauses, while the request goes
// unanswered, until ctx ends or the request timeout passes (the last try
// at its end); then the error says so. sentAt is when the last try left.
func (c *Client) call(ctx context.Context, header nats.Header, op, name string, req subjects.Request, read func(data []byte) error) (sentAt time.Time, err error) {
	first := time.Now()
	deadline := first.Add(c.requestTimeout)
	var last error // the last unanswered try's error
	for pause := retryPause; ; pause = min(2*pause, maxRetryPause) {
		sentAt = time.Now()
		data, err := c.ask(ctx, deadline, header, op, name, req)
		if err == nil {
			err = read(data)
		}
		if last != nil && errors.Is(err, errNoReply) {
			// The budget ran out during a try after unanswered ones: what
			// happened is still that no service answered.
			return sentAt, c.gaveUp(op, name, first, last)
		}
		if !unanswered(err) {
			return sentAt, err
		}
		last = err
		left := time.Until(deadline)
		if left <= 0 {
			return sentAt, c.gaveUp(op, name, first, err)
		}
		select {
		case <-ctx.Done():
			return sentAt, c.gaveUp(op, name, first, err)
		case <-time.After(min(pause, left)):
		}
	}
}

// unlockKey sends an unlock for key and returns the service's verdict: nil
// if it unlocked, else a transport error or an *Error.
func (c *Client) unlockKey(ctx context.Context, header nats.Header, name, key string) error {
	_, err := c.call(ctx, header, subjects.OpUnlock, name, subjects.Request{Key: key}, func(data []byte) error {
		var resp subjects.UnlockResponse
		if err := subjects.DecodeUnlockResponse(data, &resp); err != nil {
			return unreadable(data, err)
		}
		if resp.Error != nil {
			return serviceError(subjects.OpUnlock, name, resp.Error)
		}
		if !resp.Unlocked {
			return errors.New("the service replied unlocked=false without an error")
		}
		return nil
	})
	if err != nil {
		return wrap(subjects.OpUnlock, name, err)
	}
	return nil
}

// release unlocks key, a grant or a queued wait nobody will use
// (docs/protocol.md, "Waiting and giving up"), on a context detached from
// ctx's cancellation and bounded by the cleanup timeout. The service
// handles a connection's requests in order, so "unknown key" means that
// nothing is left. An unlock that got no answer is asked again in the
// background (releases.go).
func (c *Client) release(ctx context.Context, name, key string) error {
	if c.nc.IsClosed() {
		return nil // the service releases what a closed connection held
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cleanupTimeout)
	defer cancel()
	err := c.unlockKey(ctx, c.header(), name, key)
	if unknownKey(err) {
		return nil
	}
	c.unconfirmed(name, key, err)
	return err
}

// unconfirmed hands key to the releaser if err, the result of its unlock,
// says that no service answered.
func (c *Client) unconfirmed(name, key string, err error) {
	if releaseUnconfirmed(err) {
		c.mu.Lock()
		c.addReleaseLocked(name, key)
		c.mu.Unlock()
	}
}

// unknownKey reports whether err is the service saying that the key holds
// or waits for no slot of the lock.
func unknownKey(err error) bool {
	return errors.Is(err, ErrInvalidLockKey) || errors.Is(err, ErrLockDoesNotExist) || errors.Is(err, ErrNotLocked)
}
