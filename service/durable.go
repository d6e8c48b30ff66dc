package service

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/service/journal"
	"github.com/ldlm-io/ldlm/subjects"
)

// This file keeps the lock state in a JetStream stream (State "jetstream",
// docs/ha.md): the state is loaded at start, and every change is written
// before the reply that reports it is sent, so a successor knows all that
// any client was told.

// The settings of Config.State.
const (
	StateMemory    = "memory"
	StateJetStream = "jetstream"
)

// tokenMargin is how far above the latest token the active's token
// ceiling is written: a new active starts above the old ceiling, and the
// active writes a higher one before it tells a token past it. A variable
// for a test only.
var tokenMargin uint64 = 1_000_000

const (
	// goneTTL is how long the empty record of a lock that no one holds or
	// waits for stays in the stream.
	goneTTL = time.Minute
	// journalTimeout bounds loading the state and taking over.
	journalTimeout = 30 * time.Second
	// openAttemptTimeout bounds one try to create or update the state
	// stream, or to read it whole before a takeover: a JetStream cluster
	// without a meta leader, or a stream without a leader, does not answer
	// until JetStream elected one.
	openAttemptTimeout = 5 * time.Second
	// loadAttemptTimeout bounds one try to read the state whole at start.
	loadAttemptTimeout = 10 * time.Second
	// ackWait is how long the active waits for the acknowledgement of a
	// write before it takes the outcome as unknown and steps down. A
	// replicated stream whose leader died elects another in a few seconds
	// (about 5 s seen here), and writes wait meanwhile: the active rides
	// that out instead of stepping down. It never replies before the ack,
	// so a longer wait delays replies, never makes them unsafe.
	ackWait = 15 * time.Second
)

// activeRecord is the stream's "active" record: who writes, and the token
// ceiling.
type activeRecord struct {
	// Instance is the id clients see in grants and announcements. It stays
	// the same across restarts and takeovers: the locks outlive the process,
	// so clients must not take a new process for a new instance.
	Instance     string    `json:"instance"`
	TokenCeiling uint64    `json:"token_ceiling"`
	ServerID     string    `json:"server_id"` // of the active's connection
	ClientID     uint64    `json:"client_id"`
	Since        time.Time `json:"since"`
	// Stopped is written last by an active that stops: a standby takes over.
	Stopped bool `json:"stopped,omitempty"`
}

// streamNames returns the stream and subject prefix of prefix's state. The
// stream name keeps letters, digits and '-' and writes any other byte as
// _XX, so that two prefixes never share a stream.
func streamNames(prefix string) (stream, subjectPrefix string) {
	var b strings.Builder
	b.WriteString("LDLM_")
	for _, c := range []byte(prefix) {
		if c == '-' || c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02X", c)
		}
	}
	return b.String(), "$LDLM." + prefix + ".state"
}

// loaded is the stream as read: its current records, by subject.
type loaded struct {
	j       *journal.Journal
	lastSeq uint64
	active  activeRecord
	records map[string][]byte // "lock.NAME" → record
}

// apply puts one record of the stream into st.
func (st *loaded) apply(r journal.Record) error {
	st.lastSeq = max(st.lastSeq, r.Seq)
	switch {
	case r.Subject == "active" && !r.Deleted():
		// A fresh value: a field the record leaves out (stopped) is zero.
		var a activeRecord
		if err := json.Unmarshal(r.Data, &a); err != nil {
			return fmt.Errorf("the active record: %w", err)
		}
		st.active = a
	case r.Deleted():
		delete(st.records, r.Subject)
	case strings.HasPrefix(r.Subject, "lock."):
		st.records[r.Subject] = r.Data
	}
	return nil
}

// openState opens the state stream and reads it whole.
func (s *Service) openState(ctx context.Context) (*loaded, error) {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, err
	}
	stream, subj := streamNames(s.cfg.Prefix)
	// A JetStream cluster that is still forming (its members start at the
	// same time) refuses to place the stream for a while ("no suitable
	// peers", no meta leader yet): ask again until ctx ends.
	// So may a stream just placed on a forming cluster answer its first
	// reads: read it again too.
	for logged := false; ; {
		octx, cancel := context.WithTimeout(ctx, openAttemptTimeout)
		j, err := journal.Open(octx, js, journal.Config{Stream: stream, Subjects: subj, Replicas: s.replicas(), AckWait: ackWait})
		cancel()
		var st *loaded
		if err == nil {
			lctx, lcancel := context.WithTimeout(ctx, loadAttemptTimeout)
			st, err = load(lctx, j)
			lcancel()
		}
		switch {
		case err == nil:
			return st, nil
		case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount),
			errors.Is(err, nats.ErrNoResponders):
			return nil, err // no JetStream here at all: waiting will not help
		}
		if !logged {
			s.log.Warn("JetStream cannot hold the lock state yet; trying again until it can", "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// load reads the stream whole.
func load(ctx context.Context, j *journal.Journal) (*loaded, error) {
	st := &loaded{j: j, records: map[string][]byte{}}
	last, err := j.Load(ctx, st.apply)
	if err != nil {
		return nil, fmt.Errorf("loading the lock state: %w", err)
	}
	st.lastSeq = last
	if st.active.Instance == "" && last > 0 {
		// The active record was rewritten while the stream was read (a
		// takeover's fence writes it over and over): its current version
		// is past last. Take who is active and the token ceiling from it,
		// but not its sequence: the lock records before it were not read,
		// so a takeover from last is refused and loads again. Without
		// this, the instance id would be made anew, and clients would
		// count every lock of the kept state as lost.
		r, err := j.Last(ctx, "active")
		if err != nil {
			return nil, fmt.Errorf("loading the lock state: %w", err)
		}
		if r.Seq != 0 && !r.Deleted() {
			if err := json.Unmarshal(r.Data, &st.active); err != nil {
				return nil, fmt.Errorf("loading the lock state: the active record: %w", err)
			}
		}
	}
	if st.active.Instance == "" {
		var id [11]byte
		crand.Read(id[:])
		st.active.Instance = hex.EncodeToString(id[:])
	}
	return st, nil
}

// replicas is Config.Replicas, capped by the JetStream servers that answer
// the system account's ping (uncapped without a system connection).
func (s *Service) replicas() int {
	want := max(s.cfg.Replicas, 1)
	if s.sys == nil || want == 1 {
		return want
	}
	ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
	defer cancel()
	msgs, err := gather(ctx, s.sys, "$SYS.REQ.SERVER.PING.JSZ", nil, pingFirstAnswer, connzQuiet)
	if err != nil {
		return want
	}
	// The servers that answer, or the size of the JetStream cluster as its
	// members know it, if larger: a cluster that is still forming (its
	// members start together) has not all answered yet.
	servers := 0
	for _, m := range msgs {
		var r struct {
			Data struct {
				Disabled bool            `json:"disabled"`
				Config   json.RawMessage `json:"config"`
				Meta     struct {
					Size int `json:"cluster_size"`
				} `json:"meta_cluster"`
			} `json:"data"`
		}
		if json.Unmarshal(m.Data, &r) == nil && !r.Data.Disabled && len(r.Data.Config) > 0 {
			servers = max(servers+1, r.Data.Meta.Size)
		}
	}
	if servers > 0 && servers < want {
		s.log.Warn("fewer JetStream servers than state replicas: the state stream gets one replica per server",
			"replicas_asked", want, "replicas", servers)
		return servers
	}
	return want
}

// restore puts the loaded locks into the engine. A record the engine
// refuses is logged and skipped: it was not written by this service. The
// sessions that own restored locks or waits get the reconnect grace to
// come back (ExpectSessions): their clients were cut off when the last
// active went away.
func (s *Service) restore(st *loaded) {
	var owners []subjects.Owner
	for subject, data := range st.records {
		var lr engine.LockRecord
		err := json.Unmarshal(data, &lr)
		name := lr.Name
		_, wire := splitEngineName(name)
		for _, h := range lr.Holders {
			owners = append(owners, h.Owner)
		}
		for _, w := range lr.Waiters {
			owners = append(owners, w.Owner)
		}
		if err == nil {
			// A restored wait counts its wait from now: when it arrived,
			// by another instance's clock, is not comparable.
			restored := time.Now()
			err = s.engine.Restore(lr, func(w engine.WaiterRecord) func(engine.Grant, error) {
				return func(g engine.Grant, err error) {
					waited := time.Since(restored)
					s.rec.after(name, func() { s.answerParked(w.Reply, wire, g, waited, err) })
				}
			})
		}
		if err != nil {
			s.log.Error("a lock of the state stream was not restored", "record", subject, "err", err)
		}
	}
	graced := s.ExpectSessions(owners)
	s.log.Info("lock state loaded", "locks", len(st.records), "last_sequence", st.lastSeq, "sessions_in_grace", graced)
}

// takeOver makes this instance the active: it takes over the stream (see
// recorder.start) with its tokens above the loaded ceiling, and only then
// restores st into the empty engine, so that a refused takeover leaves the
// engine empty for the next try. Then a sweep releases the locks of owners
// whose connection is gone; it waits a quarter of a second for the servers'
// lists, so it runs in the background: meanwhile such a lock is held a
// little longer.
func (s *Service) takeOver(st *loaded) error {
	s.engine.SkipTokens(st.active.TokenCeiling)
	ctx, cancel := context.WithTimeout(context.Background(), journalTimeout)
	defer cancel()
	cid, err := s.nc.GetClientID()
	if err != nil {
		return fmt.Errorf("reading the service connection's client id: %w", err)
	}
	if err := s.rec.start(ctx, st, s.nc.ConnectedServerId(), cid); err != nil {
		return err
	}
	// The state's instance id, as loaded now: a standby that loaded an
	// empty stream at start made one up, and the active wrote its own
	// since. Clients take a grant of another instance id for a lost one.
	// No handler runs yet (addService comes after).
	s.instance = st.active.Instance
	s.restore(st)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
		defer cancel()
		if err := s.live.sweep(ctx); err != nil {
			s.log.Warn("sweep after loading the lock state", "err", err)
		}
	}()
	return nil
}

// standBy follows the state while another instance is active, and takes
// over when the active's connection closes (the server's DISCONNECT
// advisory, as for any client), the active's NATS server announces its
// shutdown (which takes the connection with it, and sends no DISCONNECT
// advisory for it) or is judged dead by the route watcher (killed: it
// sends nothing), or the active writes that it stopped. Before taking
// over it reads the stream again, whole, so that it takes over from the
// latest record: if anyone wrote meanwhile (another standby won, or the
// active lives on), the takeover is refused and it follows again. Any other
// failure stops the service with ErrDeposed (Done), for its owner to start
// it again.
func (s *Service) standBy(st *loaded) {
	// mu guards st and cancel, shared by the follower and the advisories.
	var mu sync.Mutex
	var written atomic.Uint64 // records followed: a takeover in progress writes
	var cancel context.CancelFunc
	// activeGone cancels the follower (so that it takes over) when serverID
	// and, unless 0, clientID are those of the active's connection.
	activeGone := func(serverID string, clientID uint64, why string, attrs ...any) {
		mu.Lock()
		defer mu.Unlock()
		if serverID == st.active.ServerID && (clientID == 0 || clientID == st.active.ClientID) && cancel != nil {
			s.log.Info(why+": taking over", attrs...)
			cancel()
		}
	}
	var subs []*nats.Subscription
	if s.sys != nil {
		sub, err := s.sys.Subscribe(disconnectAdvisories, func(m *nats.Msg) {
			var ev disconnectEvent
			if json.Unmarshal(m.Data, &ev) == nil && ev.Client.ID != 0 {
				activeGone(ev.Server.ID, ev.Client.ID, "the active instance's connection closed", "reason", ev.Reason)
			}
		})
		if err == nil {
			subs = append(subs, sub)
		} else {
			s.log.Warn("standby without disconnect advisories: it takes over when the active stops, or when no instance answers", "err", err)
		}
	}
	// Liveness hears of servers that end: a shutdown announcement, or a
	// server killed with the active on it, which sends nothing and which
	// the route watcher judges dead within about a second (routewatch.go).
	serverGone := func(id, why string) {
		activeGone(id, 0, "the active instance's NATS server "+why, "server_id", id)
	}
	s.live.onServerGone.Store(&serverGone)
	go func() {
		defer close(s.standbyDone)
		defer s.live.onServerGone.Store(nil)
		defer func() {
			for _, sub := range subs {
				_ = sub.Unsubscribe()
			}
		}()
		for {
			ctx, stop := context.WithCancel(context.Background())
			mu.Lock()
			cancel = stop
			from := st
			s.noteApplied(from.lastSeq)
			mu.Unlock()
			go func() {
				select {
				case <-s.stop:
					stop()
				case <-ctx.Done():
				}
			}()
			go s.watchForNoActive(ctx, &written, stop)
			err := from.j.Follow(ctx, from.lastSeq, func(r journal.Record) error {
				written.Add(1)
				mu.Lock()
				defer mu.Unlock()
				if err := st.apply(r); err != nil {
					return err
				}
				s.noteApplied(st.lastSeq)
				if st.active.Stopped {
					s.log.Info("the active instance stopped: taking over")
					stop()
				}
				return nil
			})
			stop()
			select {
			case <-s.stop:
				return
			default:
			}
			if !errors.Is(err, context.Canceled) {
				s.deposed(fmt.Errorf("standby: following the lock state: %w", err))
				return
			}
			lctx, lcancel := context.WithTimeout(context.Background(), openAttemptTimeout)
			fresh, err := load(lctx, from.j)
			lcancel()
			if err != nil {
				// Nothing was written: a stream that lost its leader with
				// the active's server answers again once JetStream elected
				// another. Follow on, and try again when no instance answers.
				s.log.Warn("standby: reading the lock state to take over failed; following it again", "err", err)
				continue
			}
			err = s.takeOver(fresh)
			if errors.Is(err, journal.ErrNotActive) {
				s.log.Info("standby: another instance wrote first; following the lock state again", "err", err)
				mu.Lock()
				st = fresh
				mu.Unlock()
				continue
			}
			if err == nil {
				err = s.addService()
			}
			if err != nil {
				s.deposed(fmt.Errorf("standby: taking over: %w", err))
				return
			}
			s.watch()
			s.announce(subjects.InstanceStarted)
			s.log.Info("took over: this instance is the active now", "instance", s.instance, "micro_id", s.id)
			return
		}
	}()
}

// standbyCheckInterval is about how often a standby asks whether any
// instance answers; after two asks without an answer and without a record
// written in between, it takes over. This catches an active that died
// without a disconnect advisory (its NATS server died too, or this standby
// has no system connection), and takeovers that failed for every standby
// (each deposed the other's fence): the random part of the interval keeps
// standbys from trying again in step.
const standbyCheckInterval = time.Second

// watchForNoActive calls takeOver when no instance has answered micro's
// ping twice in a row and writes (counted by written) have stopped, until
// ctx ends.
func (s *Service) watchForNoActive(ctx context.Context, written *atomic.Uint64, takeOver func()) {
	quiet, seen := 0, written.Load()
	for quiet < 2 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(standbyCheckInterval/2 + rand.N(standbyCheckInterval)):
		}
		cctx, cancel := context.WithTimeout(ctx, sweepTimeout)
		err := s.checkRivals(cctx) // nil: nobody answered
		cancel()
		if now := written.Load(); err != nil || now != seen {
			quiet, seen = 0, now
			continue
		}
		quiet++
	}
	s.log.Info("no instance answers: taking over")
	takeOver()
}

// recorder writes the changed locks' records and sends the replies that
// wait for them. Who owns what: mu guards dirty, spare and closed; the run
// goroutine alone uses w, ceiling and active.
type recorder struct {
	eng     *engine.Engine
	log     *slog.Logger
	deposed func(error) // called once, on the first failed write

	mu     sync.Mutex
	dirty  map[string][]func() // changed locks and the replies waiting for their record
	spare  map[string][]func() // the map run swapped out last, cleared
	closed bool

	wake     chan struct{} // one pending signal: dirty is not empty
	stop     chan struct{} // closed by close
	finished chan struct{} // closed when run returns

	w       *journal.Writer
	ceiling uint64
	active  activeRecord
	failed  sync.Once
}

func newRecorder(eng *engine.Engine, log *slog.Logger, deposed func(error)) *recorder {
	return &recorder{eng: eng, log: log, deposed: deposed,
		dirty: map[string][]func(){}, spare: map[string][]func(){},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), finished: make(chan struct{})}
}

// mark records that lock name changed.
func (r *recorder) mark(name string) { r.after(name, nil) }

// after records that lock name changed and sends reply (unless nil) once
// a record of the lock written after this call is acknowledged. After
// close, or once the writer failed, replies are dropped: their change may
// not be recorded, so the client must not hear of it.
func (r *recorder) after(name string, reply func()) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	if reply != nil {
		r.dirty[name] = append(r.dirty[name], reply)
	} else if _, ok := r.dirty[name]; !ok {
		r.dirty[name] = nil
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// start makes the recorder the active writer: it takes over the stream
// (the fence of journal.TakeOver) with a token ceiling above every token
// the engine may give, and starts writing.
func (r *recorder) start(ctx context.Context, st *loaded, serverID string, clientID uint64) error {
	r.active = st.active
	r.active.ServerID, r.active.ClientID, r.active.Since = serverID, clientID, time.Now().UTC()
	r.active.Stopped = false // the predecessor's last word
	r.ceiling = r.eng.LastToken() + tokenMargin
	r.active.TokenCeiling = r.ceiling
	w, err := st.j.TakeOver(ctx, st.lastSeq, mustJSON(r.active))
	if err != nil {
		return fmt.Errorf("taking over the lock state (another instance may have written it since it was loaded): %w", err)
	}
	r.w = w
	go r.run()
	return nil
}

// run writes what changed until close; see recorder.
func (r *recorder) run() {
	defer close(r.finished)
	for {
		select {
		case <-r.wake:
			r.flush()
		case <-r.stop:
			r.flush()
			r.drain()
			r.w.Close()
			return
		}
	}
}

// flush writes the record of every lock changed since the last flush.
func (r *recorder) flush() {
	r.mu.Lock()
	batch := r.dirty
	r.dirty, r.spare = r.spare, nil
	r.mu.Unlock()
	// Every token told in this batch's replies was given before the swap.
	if last := r.eng.LastToken(); last >= r.ceiling {
		r.ceiling = last + tokenMargin
		r.active.TokenCeiling = r.ceiling
		r.w.Write("active", mustJSON(r.active), 0, r.done(nil))
	}
	for name, replies := range batch {
		var data []byte
		ttl := goneTTL
		if lr, ok := r.eng.Record(name); ok {
			var err error
			if data, err = json.Marshal(lr); err != nil {
				panic("service: encoding a lock record: " + err.Error()) // plain structs: a bug
			}
			ttl = 0
		}
		r.w.Write("lock."+subjects.EncodeName(name), data, ttl, r.done(replies))
	}
	clear(batch)
	r.mu.Lock()
	r.spare = batch
	r.mu.Unlock()
}

// done returns the write callback that sends replies once their write is
// acknowledged, or reports the recorder deposed.
func (r *recorder) done(replies []func()) func(uint64, error) {
	return func(_ uint64, err error) {
		if err != nil {
			r.failed.Do(func() { go r.deposed(err) })
			return
		}
		for _, f := range replies {
			f()
		}
	}
}

// drain waits until every write sent has been reported: the writer
// reports in order, so a last write's report comes after all others.
func (r *recorder) drain() {
	reported := make(chan struct{})
	r.active.Stopped = true // tells the standbys
	r.w.Write("active", mustJSON(r.active), 0, func(uint64, error) { close(reported) })
	select {
	case <-reported:
	case <-time.After(journalTimeout):
		r.log.Warn("state writes not acknowledged before the stop")
	}
}

// close writes what changed, sends the replies that wait for it, and stops
// writing: later changes are not recorded and their replies not sent.
func (r *recorder) close() {
	r.mu.Lock()
	already := r.closed
	r.closed = true
	r.mu.Unlock()
	if already {
		return
	}
	if r.w == nil {
		return // never started
	}
	close(r.stop)
	<-r.finished
}
