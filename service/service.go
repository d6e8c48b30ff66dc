// Package service is the NATS side of LDLM: it answers the lock subjects of
// the subjects package from an in-process lock engine, ties each lock to the
// connection that asked for it, and releases a connection's locks when the
// NATS server reports that the connection closed.
//
// Data flows one way: NATS message → subjects (decode) → service → engine →
// reply. The engine knows nothing of NATS; this package knows nothing of how
// the connections it is given were made (embedded server or external).
package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/service/journal"
	"github.com/ldlm-io/ldlm/subjects"
)

// ServiceName is the NATS micro service name: `nats micro info ldlm`.
const ServiceName = "ldlm"

// DefaultReconnectGrace is Config.ReconnectGrace's default.
const DefaultReconnectGrace = 5 * time.Second

// The memory of closed connections (see engine.WithGoneOwnerMemory): seconds
// are plenty, and the bound keeps a storm of disconnects from growing memory.
const (
	goneOwnerWindow = 10 * time.Second
	goneOwnerMemory = 10_000
)

// Config is what the service needs to know beyond its connections. The zero
// value is usable: every zero field takes the default named in its comment.
type Config struct {
	// Prefix is the first token of every subject. Default subjects.DefaultPrefix.
	Prefix string
	// MaxNameLength is the longest lock name in bytes. Default 1024.
	MaxNameLength int
	// AnonymousLockTimeout is the lock timeout given to a lock that names no
	// timeout and belongs to no connection (a `nats req` without the
	// Ldlm-Owner header), so that it cannot live forever. Default 60s.
	AnonymousLockTimeout time.Duration
	// NoClearOnDisconnect keeps locks when their connection closes; they are
	// freed only by unlock or their timeout, and every lock without a
	// timeout gets AnonymousLockTimeout.
	NoClearOnDisconnect bool
	// SweepInterval is how often the service compares the locks it holds
	// with the connections the NATS servers report, to catch disconnects
	// whose advisory it missed. Default 30s; negative disables the
	// periodic sweep (it still runs at start and after reconnects).
	SweepInterval time.Duration
	// ReconnectGrace is how long a session (subjects.HeaderSession) keeps
	// its locks and queue places after its connection was cut by its NATS
	// server (shutdown, restart, a stale or broken connection): its client
	// has this long to reconnect and attach. A connection that its client
	// closed loses its sessions' locks at once. Default 5s (docs/ha.md
	// says why).
	ReconnectGrace time.Duration
	// MaxBodyBytes is the largest request body accepted. Default 64 KiB.
	MaxBodyBytes int
	// MaxLocks, MaxWaitersPerLock and MaxWaitsPerConnection bound what
	// clients can make the service hold; a request past one fails with
	// LimitExceeded. Defaults 1,000,000, 100,000 and 10,000; negative: no
	// limit.
	MaxLocks              int
	MaxWaitersPerLock     int
	MaxWaitsPerConnection int
	// Tenants gives every NATS account its own lock namespace. Requests
	// must then reach the service through an account import with sharing
	// on, so that the server stamps Nats-Request-Info; others are refused.
	// Only in this mode is Nats-Request-Info trusted: within one account a
	// client can set it to anything.
	Tenants bool
	// Events publishes every grant, release and end of a wait on
	// PREFIX.events.KIND.NAME (see subjects.Event).
	Events bool
	// Observer, when set, is called for every engine event (metrics). It
	// runs on the goroutine that caused the event and must be quick.
	Observer func(engine.Event)
	// Alone says that the NATS server is a single server (no cluster,
	// gateways or leaf nodes) that no connection but the caller's reaches
	// while Start runs: ldlm's embedded server, whose client port opens
	// after Start. So no other instance can be there, and no other server
	// can answer. Start then skips its two looks for rivals (see
	// checkRivals), each of which waits pingFirstAnswer for an answer that
	// cannot come, and its first sweep takes the one server's list without
	// waiting connzQuiet for others': together most of an embedded start.
	// An instance that starts later looks at its own start and finds this
	// one; the periodic look and sweeps run as always.
	Alone bool
	// State is where the locks live: StateMemory (the default: they end
	// with the process) or StateJetStream (a stream on the NATS server,
	// loaded at start; every change is written before its reply, see
	// docs/ha.md).
	State string
	// Replicas is the number of copies of the state stream in JetStream
	// mode, capped by the JetStream servers present. Default 1.
	Replicas int
	// Version is reported by `nats micro info`; it must be SemVer.
	// Default "0.0.0-dev".
	Version string
}

func (c Config) withDefaults() Config {
	c.Prefix = cmp.Or(c.Prefix, subjects.DefaultPrefix)
	c.MaxNameLength = positiveOr(c.MaxNameLength, subjects.DefaultMaxNameLength)
	c.MaxBodyBytes = positiveOr(c.MaxBodyBytes, 64<<10)
	c.MaxLocks = limitOrDefault(c.MaxLocks, 1_000_000)
	c.MaxWaitersPerLock = limitOrDefault(c.MaxWaitersPerLock, 100_000)
	c.MaxWaitsPerConnection = limitOrDefault(c.MaxWaitsPerConnection, 10_000)
	c.AnonymousLockTimeout = positiveOr(c.AnonymousLockTimeout, 60*time.Second)
	c.SweepInterval = cmp.Or(c.SweepInterval, 30*time.Second)
	c.ReconnectGrace = positiveOr(c.ReconnectGrace, DefaultReconnectGrace)
	c.Version = cmp.Or(c.Version, "0.0.0-dev")
	c.State = cmp.Or(c.State, StateMemory)
	return c
}

// check refuses settings that would let a request make the service publish
// on a subject longer than NATS allows: the server would close the
// service's connection (see subjects.MaxNameLengthLimit).
func (c Config) check() error {
	if c.MaxNameLength > subjects.MaxNameLengthLimit {
		return fmt.Errorf("service: the longest lock name may be at most %d bytes, not %d: longer names would make subjects over NATS's limit", subjects.MaxNameLengthLimit, c.MaxNameLength)
	}
	if len(c.Prefix) > subjects.MaxPrefixLength {
		return fmt.Errorf("service: the subject prefix may be at most %d bytes, not %d", subjects.MaxPrefixLength, len(c.Prefix))
	}
	if c.State != "" && c.State != StateMemory && c.State != StateJetStream {
		return fmt.Errorf("service: the state must be %q or %q, not %q", StateMemory, StateJetStream, c.State)
	}
	if c.State == StateJetStream && strings.HasPrefix(c.Prefix+".", "$LDLM.") {
		return errors.New("service: with JetStream state the subject prefix must not be $LDLM: the state subjects ($LDLM.PREFIX.state.>) would be request subjects")
	}
	return nil
}

// positiveOr returns v if it is positive, else def.
func positiveOr[T int | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// limitOrDefault maps 0 to def and a negative limit to 0, the engine's
// "no limit".
func limitOrDefault(v, def int) int {
	if v < 0 {
		return 0
	}
	return cmp.Or(v, def)
}

// Service is a running lock service.
type Service struct {
	cfg    Config
	nc     *nats.Conn // answers lock requests; in the applications' account
	sys    *nats.Conn // system account: advisories and connection lists; may be nil
	log    *slog.Logger
	engine *engine.Engine
	micro  micro.Service
	live   *liveness

	started time.Time
	id      string // micro instance id, set once registered
	// instance is the id in grant replies and announcements: id, or in
	// JetStream mode the state's own id, which outlives the process.
	instance string
	rec      *recorder // writes the state in JetStream mode; nil in memory mode
	opStats  opStats

	// For PREFIX.admin.instances (roles.go): procID names this process's
	// instance, made at Start. role is replaced whole by Start and by
	// addService (at a takeover, on the standby's goroutine); applied by
	// Start and then the standby's goroutine alone. The answer reads them.
	procID       string
	role         atomic.Pointer[role]
	applied      atomic.Pointer[applied] // a standby's progress in the state stream
	instancesSub *nats.Subscription      // set before any goroutine that calls stopMicro starts

	failOnce sync.Once
	failed   chan struct{} // Done: closed when the service stopped
	failErr  error         // why; written before failed is closed

	// replyMu orders grant replies and the stop announcement: once stopping
	// is set (and the stop announced), no grant reply is sent.
	replyMu  sync.Mutex
	stopping bool

	stopOnce sync.Once
	stop     chan struct{}
	// standbyDone is closed when the standby goroutine returns (it has
	// taken over, failed, or seen stop); nil unless Start made a standby.
	standbyDone chan struct{}
	wg          sync.WaitGroup // the goroutine of watch
}

// Start registers the service on nc and starts following connection
// liveness. sys is a connection in the system account; with nil, the service
// cannot see advisories and relies on the account-scoped connection listing
// alone (logged as a warning), so a dead client's locks are freed at the
// next sweep rather than at once.
func Start(cfg Config, nc, sys *nats.Conn, log *slog.Logger) (*Service, error) {
	if nc == nil {
		return nil, errors.New("service: a NATS connection is required")
	}
	if cfg.Tenants && sys == nil {
		// The account-scoped connection listing would show only the
		// service's own account: every tenant's locks would look dead.
		return nil, errors.New("service: one namespace per account needs a system account connection to follow the tenants' connections")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if !nc.Opts.NoEcho {
		log.Warn("the service's connection was made without nats.NoEcho: its own notices and events come back to its request subscription, which ignores them at a cost")
	}
	if sys != nil {
		if err := checkSystemAccount(nc, sys); err != nil {
			return nil, err
		}
	}
	cfg = cfg.withDefaults()
	s := &Service{
		cfg:     cfg,
		nc:      nc,
		sys:     sys,
		log:     log,
		stop:    make(chan struct{}),
		failed:  make(chan struct{}),
		started: time.Now(),
		procID:  newInstanceID(),
		opStats: opStats{subjects.OpLock: {}, subjects.OpTryLock: {}, subjects.OpUnlock: {}, subjects.OpRenew: {}, subjects.OpAttach: {}},
	}
	// Fencing tokens start from the clock, so that they keep growing
	// across restarts of the service (see engine.WithFirstToken), and in
	// JetStream mode above the last active's ceiling too.
	first := uint64(s.started.UnixMicro())
	var st *loaded
	if cfg.State == StateJetStream {
		ctx, cancel := context.WithTimeout(context.Background(), journalTimeout)
		var err error
		st, err = s.openState(ctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("service: %w", err)
		}
		first = max(first, st.active.TokenCeiling+1)
	}
	s.engine = engine.New(
		engine.WithEvents(s.onEvent),
		engine.WithFirstToken(first),
		engine.WithLimits(engine.Limits{
			MaxLocks:          cfg.MaxLocks,
			MaxWaitersPerLock: cfg.MaxWaitersPerLock,
			MaxWaitsPerOwner:  cfg.MaxWaitsPerConnection,
		}),
		engine.WithGoneOwnerMemory(goneOwnerWindow, goneOwnerMemory),
	)
	if st != nil {
		s.rec = newRecorder(s.engine, log, s.deposed)
		s.instance = st.active.Instance
	}
	s.live = newLiveness(s.engine, nc, sys, log, cfg.SweepInterval, cfg.ReconnectGrace, cfg.NoClearOnDisconnect)

	// Follow liveness before answering, so no lock is granted to a
	// connection whose disconnect we could not see.
	if err := s.live.start(cfg.Alone); err != nil {
		s.engine.Close()
		return nil, err
	}
	err := s.register(st)
	if s.rec != nil && (errors.Is(err, ErrDuplicateInstance) || errors.Is(err, journal.ErrNotActive)) {
		// The stream decides who is active: wait as a standby (another
		// instance answers, or took over the stream first).
		s.standbyDone = make(chan struct{})
		s.setRole(subjects.RoleStandby)
		s.noteApplied(st.lastSeq)
		s.subscribeInstances()
		s.standBy(st)
		log.Info("standby: another instance is active; following the lock state", "prefix", cfg.Prefix,
			"instance", s.instance, "last_sequence", st.lastSeq)
		return s, nil
	}
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.subscribeInstances()
	s.watch() // after register, which sets the fields that watch reads
	s.announce(subjects.InstanceStarted)
	log.Info("lock service ready", "instance", s.instance, "prefix", cfg.Prefix, "state", cfg.State, "liveness", s.live.source(),
		"clear_on_disconnect", !cfg.NoClearOnDisconnect, "sweep_interval", cfg.SweepInterval, "reconnect_grace", cfg.ReconnectGrace)
	return s, nil
}

func (s *Service) register(st *loaded) error {
	ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
	defer cancel()
	if !s.cfg.Alone {
		if err := s.checkRivals(ctx); err != nil {
			return err
		}
	}
	if s.rec != nil {
		// Take over only once no other instance answers: the takeover
		// would depose it.
		if err := s.takeOver(st); err != nil {
			return err
		}
	}
	return s.addService()
}

// addService registers the micro service and its endpoints: from now on,
// the instance answers.
func (s *Service) addService() error {
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        ServiceName,
		Version:     s.cfg.Version,
		Description: "LDLM: a light-weight distributed lock manager",
		Metadata: map[string]string{
			metaPrefix:  s.cfg.Prefix,
			metaStarted: s.started.UTC().Format(time.RFC3339Nano),
		},
		// Every instance must see every request of its locks: a queue
		// group would split one lock's requests between instances.
		QueueGroupDisabled: true,
		// Per-operation counts, since one endpoint serves the four.
		StatsHandler: s.opStats.data,
	})
	if err != nil {
		return fmt.Errorf("registering micro service %q: %w", ServiceName, err)
	}
	s.micro = svc
	s.id = svc.Info().ID
	s.instance = cmp.Or(s.instance, s.id)
	s.setRole(subjects.RoleActive)
	// One endpoint, so one subscription, for all four lock operations:
	// NATS delivers one publisher's messages to one subscription in the
	// order they were sent, so an unlock is always read after the lock
	// request its client sent first (see handle). The operators' endpoints
	// are under PREFIX.admin.
	endpoints := []struct {
		name, subject string
		handler       micro.HandlerFunc
	}{
		{RequestsEndpoint, s.cfg.Prefix + ".>", s.handle},
		{"admin_list", subjects.AdminSubject(s.cfg.Prefix, subjects.OpAdminList, ""), s.adminList},
		{"admin_status", subjects.AdminSubject(s.cfg.Prefix, subjects.OpAdminStatus, ""), s.adminStatus},
		{"admin_unlock", s.cfg.Prefix + "." + subjects.OpAdminUnlock + ".>", s.adminUnlock},
	}
	for _, e := range endpoints {
		if err := svc.AddEndpoint(e.name, e.handler, micro.WithEndpointSubject(e.subject)); err != nil {
			return fmt.Errorf("adding endpoint %s: %w", e.subject, err)
		}
	}
	// Ready means subscribed: make sure the server has our subscriptions
	// before anyone is told the service is up.
	if err := s.nc.Flush(); err != nil {
		return fmt.Errorf("subscribing the endpoints: %w", err)
	}
	// Another instance may have started at the same moment: of two, the
	// younger steps down. (With JetStream state, the stream decides.)
	if s.cfg.Alone || s.rec != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
	defer cancel()
	return s.checkRivals(ctx)
}

// Engine is the lock engine behind the service, for tests and operators.
func (s *Service) Engine() *engine.Engine { return s.engine }

// ExpectSessions gives the sessions among owners that the service does not
// know yet the reconnect grace, as if their connections had just been cut
// by their NATS server: each session's client has Config.ReconnectGrace to
// come back (its attach, or any request) before the session's locks and
// waits are released. A state restored at start (durable mode) calls it,
// before the service answers, with the owners of the locks and waits it
// restored; connection owners among them are left to the sweep. It
// returns how many sessions entered grace.
func (s *Service) ExpectSessions(owners []subjects.Owner) int { return s.live.expectSessions(owners) }

// SessionsInGrace returns how many sessions are in their reconnect grace
// now, for tests and operators.
func (s *Service) SessionsInGrace() int { return s.live.sessions.inGrace() }

// WatchedServers returns the ids of the NATS servers that the route
// watcher saw at its last check, once a second: the service's own server
// and those it has routes to. A server that dies is noticed only if it
// was seen. Nil without a route watcher (no system account connection, a
// single server, or NoClearOnDisconnect).
func (s *Service) WatchedServers() []string { return s.live.routes.watched() }

// Sweep compares the locks' owners with the live connections now, and
// releases those of closed connections. It runs by itself at start, after
// reconnects and every SweepInterval; calling it is for tests and operators.
func (s *Service) Sweep(ctx context.Context) error { return s.live.sweep(ctx) }

// Stop tells clients at once that this instance's locks are gone, answers
// every parked waiter and every request that still arrives with
// Unavailable, then stops answering and following liveness. It does not
// close the connections it was given.
//
// The engine is closed before the announcement, so that no grant can be
// made after it (see respondGrant for one made just before). Only then are
// the subscriptions drained, which takes a while.
func (s *Service) Stop() {
	s.stopOnce.Do(func() {
		close(s.stop)
		if s.standbyDone != nil {
			<-s.standbyDone // it may be taking over: let it finish
		}
		if s.rec != nil {
			// The locks stay in the stream, for the next active: no stop
			// announcement, and parked waiters stay parked there. Take no
			// more requests, write what changed, send what waits for it,
			// and only then close the engine (whose Unavailable replies
			// the closed recorder drops).
			s.stopMicro()
			s.rec.close()
			s.engine.Close()
		} else {
			s.engine.Close()
			s.replyMu.Lock()
			s.stopping = true
			if s.id != "" {
				s.announce(subjects.InstanceStopped)
			}
			s.replyMu.Unlock()
		}
		s.stopMicro()
		s.wg.Wait()
		s.live.close()
		// Get the Unavailable replies to the server before the caller
		// closes the connection.
		if err := s.nc.FlushTimeout(2 * time.Second); err != nil {
			s.log.Warn("replies to parked waiters not flushed", "err", err)
		}
		s.failOnce.Do(func() {
			s.failErr = ErrStopped
			close(s.failed)
		})
	})
}
