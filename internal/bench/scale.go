package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/subjects"
)

// The scale figures, by the names --only takes.
const (
	FigLocks       = "locks"        // memory per held lock through the service
	FigEngineLocks = "engine-locks" // memory per held lock, engine alone
	FigWaiters     = "waiters"      // waiters parked on one lock
	FigConns       = "conns"        // connections each holding a lock, all closing
	FigOwner       = "owner"        // release of one owner's locks
	FigSweep       = "sweep"        // cost of the connection sweep
)

// ScaleFigures lists every figure in run order.
var ScaleFigures = []string{FigLocks, FigEngineLocks, FigWaiters, FigConns, FigOwner, FigSweep}

// ScaleConfig says which sizes RunScale measures.
type ScaleConfig struct {
	ServiceLocks []int // held locks through the service
	EngineLocks  int   // held locks in the engine alone
	Waiters      int   // waiters on one lock
	Conns        int   // connections holding one lock each
	OwnerLocks   []int // locks of one owner
	SweepConns   []int // connections listed by a sweep
	// Only names the figures to run; empty: all.
	Only []string
	// Timeout bounds every wait of one figure.
	Timeout time.Duration
}

// DefaultScaleConfig is the run recorded in BENCHMARKS.md.
func DefaultScaleConfig() ScaleConfig {
	return ScaleConfig{
		ServiceLocks: []int{10_000, 100_000},
		EngineLocks:  1_000_000,
		Waiters:      100_000,
		Conns:        10_000,
		OwnerLocks:   []int{1, 10, 100, 1_000, 10_000, 100_000},
		SweepConns:   []int{1_000, 10_000},
		Timeout:      3 * time.Minute,
	}
}

// ShortScaleConfig runs every figure small, in a few seconds.
func ShortScaleConfig() ScaleConfig {
	return ScaleConfig{
		ServiceLocks: []int{1_000},
		EngineLocks:  10_000,
		Waiters:      1_000,
		Conns:        100,
		OwnerLocks:   []int{1, 100},
		SweepConns:   []int{100},
		Timeout:      time.Minute,
	}
}

// RunScale measures the scale figures, each on a fresh embedded server,
// and prints one line per measurement.
func RunScale(cfg ScaleConfig, out io.Writer) error {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultScaleConfig().Timeout
	}
	for _, f := range cfg.Only {
		if !slices.Contains(ScaleFigures, f) {
			return fmt.Errorf("unknown figure %q (figures: %v)", f, ScaleFigures)
		}
	}
	fmt.Fprintf(out, "ldlm bench scale: %s, %s/%s, %d CPUs, %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"),
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	// Memory per lock is read from this process's heap, so the server runs
	// here; say so, as every table of ldlm bench says where things ran.
	fmt.Fprintln(out, "server and clients: in this process (a fresh embedded server per figure), except where a line names a helper process")
	figures := []struct {
		name string
		run  func() error
	}{
		{FigLocks, func() error {
			for _, n := range cfg.ServiceLocks {
				if err := scaleServiceLocks(out, n, cfg.Timeout); err != nil {
					return err
				}
			}
			return nil
		}},
		{FigEngineLocks, func() error { return scaleEngineLocks(out, cfg.EngineLocks) }},
		{FigWaiters, func() error { return scaleWaiters(out, cfg.Waiters, cfg.Timeout) }},
		{FigConns, func() error { return scaleConns(out, cfg.Conns, cfg.Timeout) }},
		{FigOwner, func() error { return scaleOwner(out, cfg.OwnerLocks, cfg.Timeout) }},
		{FigSweep, func() error {
			for _, n := range cfg.SweepConns {
				if err := scaleSweep(out, n, cfg.Timeout); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	for _, f := range figures {
		if len(cfg.Only) > 0 && !slices.Contains(cfg.Only, f.name) {
			continue
		}
		if err := f.run(); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

// eventCounter counts the engine's events by kind, for timing cascades
// (releases, grants) without polling the engine's mutex.
type eventCounter struct {
	n [16]atomic.Int64
}

func (c *eventCounter) observe(ev engine.Event) { c.n[ev.Kind].Add(1) }

// waitFor polls until kind has been counted target times.
func (c *eventCounter) waitFor(kind engine.EventKind, target int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for c.n[kind].Load() < target {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d %s events after %v", c.n[kind].Load(), target, kind, timeout)
		}
		time.Sleep(20 * time.Microsecond)
	}
	return nil
}

// startCounted starts an embedded server whose service reports its events
// to a counter.
func startCounted() (*Embedded, *eventCounter, error) {
	c := &eventCounter{}
	e, err := StartEmbedded(service.Config{Observer: c.observe}, false)
	return e, c, err
}

// liveHeap is the live heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func perItem(before, after uint64, n int) float64 {
	return (float64(after) - float64(before)) / float64(n)
}

// pipeline sends n requests made by msg on nc, at most window unanswered at
// a time, and passes each reply to check (on the subscription's
// goroutine). Replies come to inbox.INDEX.
func pipeline(nc *nats.Conn, n, window int, timeout time.Duration, msg func(i int) *nats.Msg, check func(i int, m *nats.Msg) error) error {
	inbox := nats.NewInbox()
	slots := make(chan struct{}, window)
	errc := make(chan error, 1)
	done := make(chan struct{})
	var got atomic.Int64
	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		i, err := strconv.Atoi(m.Subject[len(inbox)+1:])
		if err == nil {
			err = check(i, m)
		}
		if err != nil {
			select {
			case errc <- err:
			default:
			}
		}
		<-slots
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := range n {
		select {
		case slots <- struct{}{}:
		case err := <-errc:
			return err
		case <-deadline.C:
			return fmt.Errorf("%d of %d requests answered after %v", got.Load(), n, timeout)
		}
		m := msg(i)
		m.Reply = inbox + "." + strconv.Itoa(i)
		if err := nc.PublishMsg(m); err != nil {
			return err
		}
	}
	select {
	case <-done:
	case err := <-errc:
		return err
	case <-deadline.C:
		return fmt.Errorf("%d of %d requests answered after %v", got.Load(), n, timeout)
	}
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func ownerHeader(nc *nats.Conn) (nats.Header, error) {
	cid, err := nc.GetClientID()
	if err != nil {
		return nil, err
	}
	return nats.Header{subjects.HeaderOwner: []string{subjects.FormatOwner(nc.ConnectedServerId(), cid)}}, nil
}

// takeLocks trylocks n locks named prefix.INDEX on nc, pipelined.
func takeLocks(nc *nats.Conn, prefix string, n int, timeout time.Duration) error {
	hdr, err := ownerHeader(nc)
	if err != nil {
		return err
	}
	return pipeline(nc, n, 256, timeout,
		func(i int) *nats.Msg {
			return &nats.Msg{Subject: "ldlm.trylock." + prefix + "." + strconv.Itoa(i), Header: hdr}
		},
		func(_ int, m *nats.Msg) error {
			if m.Header.Get(subjects.HeaderErrorCode) != "" {
				return fmt.Errorf("trylock: %s", m.Data)
			}
			return nil
		})
}

// scaleServiceLocks: memory per held lock through the service, and the
// time to free them all when their connection closes.
func scaleServiceLocks(out io.Writer, n int, timeout time.Duration) error {
	e, events, err := startCounted()
	if err != nil {
		return err
	}
	defer e.Close()
	nc, err := nats.Connect(e.NATS.ClientURL(), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	// Warm up the connection's buffers and the service's free lists, so
	// that the difference below is the locks alone.
	if err := takeLocks(nc, "warm", 1000, timeout); err != nil {
		return err
	}
	before := liveHeap()
	start := time.Now()
	if err := takeLocks(nc, "m", n, timeout); err != nil {
		return err
	}
	took := time.Since(start)
	after := liveHeap()
	if st := e.Service.Engine().Stats(); st.Holders != n+1000 {
		return fmt.Errorf("%d holders, want %d", st.Holders, n+1000)
	}
	start = time.Now()
	nc.Close()
	if err := events.waitFor(engine.EventOwnerGone, int64(n+1000), timeout); err != nil {
		return err
	}
	freed := time.Since(start)
	fmt.Fprintf(out, "locks (service): %d held locks: %.0f bytes/lock (live heap of the whole process); taken in %v (%.0f/s, 256 in flight); all freed %v after their connection closed\n",
		n, perItem(before, after, n), round(took), float64(n)/took.Seconds(), round(freed))
	return nil
}

// scaleEngineLocks: memory per held lock in the engine alone, held by one
// owner with engine-made keys, as through the service.
func scaleEngineLocks(out io.Writer, n int) error {
	names := make([]string, n)
	for i := range names {
		// The service's names are substrings of the request subject
		// ("ldlm.trylock.lock-123456"), which the lock keeps alive: make
		// strings of that size so the figures compare.
		names[i] = ("ldlm.trylock.lock-" + strconv.Itoa(i))[len("ldlm.trylock."):]
	}
	before := liveHeap()
	eng := engine.New()
	start := time.Now()
	for _, name := range names {
		if _, ok, err := eng.TryLock(engine.Request{Name: name, Owner: subjects.Owner{ServerID: "ldlm-bench", ClientID: 1}}); !ok || err != nil {
			return fmt.Errorf("trylock %s: %v %v", name, ok, err)
		}
	}
	took := time.Since(start)
	after := liveHeap()
	if eng.Stats().Holders != n {
		return errors.New("locks lost")
	}
	start = time.Now()
	grants, _ := eng.ReleaseOwner(subjects.Owner{ServerID: "ldlm-bench", ClientID: 1})
	freed := time.Since(start)
	runtime.KeepAlive(names)
	if grants != n {
		return fmt.Errorf("released %d of %d", grants, n)
	}
	fmt.Fprintf(out, "locks (engine alone): %d held locks: %.0f bytes/lock (names included); %.0f ns/trylock; ReleaseOwner of all %v\n",
		n, perItem(before, after, n), float64(took.Nanoseconds())/float64(n), round(freed))
	eng.Close()
	return nil
}

// waitsPerConn is how many waiters scaleWaiters parks per connection,
// below the service's default limit of waits per connection.
const waitsPerConn = 5000

// waiterKey is a client-chosen key of 32 characters, as long as a key of
// 128 random bits in hex.
func waiterKey(i int) string { return fmt.Sprintf("waiter-%025d", i) }

// scaleWaiters: n waiters parked on one lock through the service: memory
// per waiter, then the time to grant them all one by one, each waiter
// unlocking as soon as its grant arrives. Then the same in the engine
// alone.
func scaleWaiters(out io.Writer, n int, timeout time.Duration) error {
	e, events, err := startCounted()
	if err != nil {
		return err
	}
	defer e.Close()
	nc, err := nats.Connect(e.NATS.ClientURL(), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	hdr, err := ownerHeader(nc)
	if err != nil {
		return err
	}
	c := &client{nc: nc, prefix: subjects.DefaultPrefix, owner: hdr, timeout: timeout}
	holderKey, err := c.lock(subjects.OpTryLock, "w", nil)
	if err != nil {
		return err
	}

	// Grants come to grants.INDEX; each is answered at once by the unlock
	// of that waiter's key, whose reply comes to unlocked.INDEX.
	grantInbox, unlockInbox := nats.NewInbox(), nats.NewInbox()
	var failed atomic.Value
	grantSub, err := nc.Subscribe(grantInbox+".*", func(m *nats.Msg) {
		if m.Header.Get(subjects.HeaderErrorCode) != "" {
			failed.CompareAndSwap(nil, "lock: "+string(m.Data))
			return
		}
		i := m.Subject[len(grantInbox)+1:]
		idx, _ := strconv.Atoi(i)
		body := `{"key":"` + waiterKey(idx) + `"}`
		if err := nc.PublishMsg(&nats.Msg{Subject: "ldlm.unlock.w", Reply: unlockInbox + "." + i, Header: hdr, Data: []byte(body)}); err != nil {
			failed.CompareAndSwap(nil, "unlock: "+err.Error())
		}
	})
	if err != nil {
		return err
	}
	_ = grantSub.SetPendingLimits(-1, -1)
	var unlocked atomic.Int64
	unlockSub, err := nc.Subscribe(unlockInbox+".*", func(m *nats.Msg) {
		if m.Header.Get(subjects.HeaderErrorCode) != "" {
			failed.CompareAndSwap(nil, "unlock: "+string(m.Data))
		}
		unlocked.Add(1)
	})
	if err != nil {
		return err
	}
	_ = unlockSub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		return err
	}

	// The service bounds the waits of one connection (10,000 by default):
	// spread the waiters over enough connections.
	pubs, err := openConns(e.NATS.ClientURL(), (n+waitsPerConn-1)/waitsPerConn)
	if err != nil {
		return err
	}
	defer closeConns(pubs)
	before := liveHeap()
	start := time.Now()
	for i := range n {
		pub := pubs[i/waitsPerConn]
		pubHdr, err := ownerHeader(pub)
		if err != nil {
			return err
		}
		body := `{"key":"` + waiterKey(i) + `"}`
		m := &nats.Msg{Subject: "ldlm.lock.w", Reply: grantInbox + "." + strconv.Itoa(i), Header: pubHdr, Data: []byte(body)}
		if err := pub.PublishMsg(m); err != nil {
			return err
		}
		if i%1000 == 999 {
			// Keep the service's subscription from running far behind.
			if err := pub.FlushTimeout(timeout); err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(timeout)
	for e.Service.Engine().Stats().Waiters < n {
		if f := failed.Load(); f != nil {
			return errors.New(f.(string))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d waiters parked after %v", e.Service.Engine().Stats().Waiters, n, timeout)
		}
		time.Sleep(time.Millisecond)
	}
	parked := time.Since(start)
	after := liveHeap()

	start = time.Now()
	if err := c.unlock("w", holderKey); err != nil {
		return err
	}
	if err := events.waitFor(engine.EventReleased, int64(n+1), timeout); err != nil {
		return err
	}
	granted := time.Since(start)
	if f := failed.Load(); f != nil {
		return errors.New(f.(string))
	}
	fmt.Fprintf(out, "waiters (service): %d waiters on one lock: %.0f bytes/waiter (32-byte client keys, live heap of the whole process); parked in %v; granted one by one, each unlocking on receipt, in %v (%.1f µs per hand-over)\n",
		n, perItem(before, after, n), round(parked), round(granted), float64(granted.Microseconds())/float64(n))
	return scaleEngineWaiters(out, n)
}

// scaleEngineWaiters: the same in the engine alone, each grant followed by
// its unlock on the same goroutine.
func scaleEngineWaiters(out io.Writer, n int) error {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = waiterKey(i)
	}
	var grants atomic.Int64
	done := func(_ engine.Grant, err error) {
		if err == nil {
			grants.Add(1)
		}
	}
	before := liveHeap()
	eng := engine.New()
	defer eng.Close()
	if _, ok, err := eng.TryLock(engine.Request{Name: "w", Key: "holder", Owner: subjects.Owner{ServerID: "ldlm-bench", ClientID: 1}}); !ok || err != nil {
		return fmt.Errorf("trylock: %v %v", ok, err)
	}
	for _, k := range keys {
		if _, ok, err := eng.Lock(engine.Request{Name: "w", Key: k, Owner: subjects.Owner{ServerID: "ldlm-bench", ClientID: 2}}, 0, done); ok || err != nil {
			return fmt.Errorf("lock: %v %v", ok, err)
		}
	}
	after := liveHeap()
	start := time.Now()
	if _, err := eng.Unlock("w", "holder"); err != nil {
		return err
	}
	for _, k := range keys {
		if _, err := eng.Unlock("w", k); err != nil {
			return err
		}
	}
	took := time.Since(start)
	if grants.Load() != int64(n) {
		return fmt.Errorf("%d grants, want %d", grants.Load(), n)
	}
	fmt.Fprintf(out, "waiters (engine alone): %d waiters: %.0f bytes/waiter (keys included); granted and unlocked one by one in %v (%.0f ns per hand-over)\n",
		n, perItem(before, after, n), round(took), float64(took.Nanoseconds())/float64(n))
	return nil
}

// scaleConns: n connections each holding one lock, then all closing at
// once: the time until every lock is free.
func scaleConns(out io.Writer, n int, timeout time.Duration) error {
	e, events, err := startCounted()
	if err != nil {
		return err
	}
	defer e.Close()
	start := time.Now()
	h, err := holdLocks(e.NATS.ClientURL(), n, timeout)
	if err != nil {
		return err
	}
	opened := time.Since(start)
	if st := e.Service.Engine().Stats(); st.Holders != n || st.Owners != n {
		_, _ = h.close()
		return fmt.Errorf("%d holders and %d owners, want %d", st.Holders, st.Owners, n)
	}
	start = time.Now()
	closing, err := h.close()
	if err != nil {
		return err
	}
	if err := events.waitFor(engine.EventOwnerGone, int64(n), timeout); err != nil {
		return err
	}
	freed := time.Since(start)
	fmt.Fprintf(out, "conns: %d connections holding one lock each, %s (opened and locked in %v), all closed at once (the Close calls took %v): every lock free %v after the close began\n",
		n, h.where(), round(opened), round(closing), round(freed))
	return nil
}

// scaleOwner: the time to release every lock of one owner, against how
// many it holds: through the service (its connection closes, the
// advisory arrives, the service releases) and in the engine alone
// (ReleaseOwner).
func scaleOwner(out io.Writer, sizes []int, timeout time.Duration) error {
	e, events, err := startCounted()
	if err != nil {
		return err
	}
	defer e.Close()
	released := int64(0)
	for _, n := range sizes {
		nc, err := nats.Connect(e.NATS.ClientURL(), nats.NoReconnect())
		if err != nil {
			return err
		}
		if err := takeLocks(nc, "owner."+strconv.Itoa(n), n, timeout); err != nil {
			nc.Close()
			return err
		}
		start := time.Now()
		nc.Close()
		released += int64(n)
		if err := events.waitFor(engine.EventOwnerGone, released, timeout); err != nil {
			return err
		}
		service := time.Since(start)

		eng := engine.New()
		for i := range n {
			if _, ok, err := eng.TryLock(engine.Request{Name: "owner." + strconv.Itoa(i), Owner: subjects.Owner{ServerID: "ldlm-bench", ClientID: 1}}); !ok || err != nil {
				return fmt.Errorf("trylock: %v %v", ok, err)
			}
		}
		start = time.Now()
		eng.ReleaseOwner(subjects.Owner{ServerID: "ldlm-bench", ClientID: 1})
		alone := time.Since(start)
		eng.Close()
		fmt.Fprintf(out, "owner: %7d locks of one connection: all free %v after it closed (service); ReleaseOwner %v (engine alone, %.0f ns/lock)\n",
			n, round(service), round(alone), float64(alone.Nanoseconds())/float64(n))
	}
	return nil
}

// scaleSweep: the wall and CPU time of one Service.Sweep with n client
// connections, each holding one lock (so n owners to check).
func scaleSweep(out io.Writer, n int, timeout time.Duration) error {
	e, err := StartEmbedded(service.Config{}, false)
	if err != nil {
		return err
	}
	defer e.Close()
	h, err := holdLocks(e.NATS.ClientURL(), n, timeout)
	if err != nil {
		return err
	}
	defer func() { _, _ = h.close() }()
	const runs = 3
	var walls, cpus []time.Duration
	for range runs {
		cpu0 := processCPU()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err := e.Service.Sweep(ctx)
		cancel()
		if err != nil {
			return err
		}
		walls = append(walls, time.Since(start))
		cpus = append(cpus, processCPU()-cpu0)
	}
	if st := e.Service.Engine().Stats(); st.Holders != n {
		return fmt.Errorf("the sweep released live locks: %d holders, want %d", st.Holders, n)
	}
	slices.Sort(walls)
	slices.Sort(cpus)
	fmt.Fprintf(out, "sweep: %6d connections (and owners): wall %v, CPU %v of the whole process (median of %d sweeps)\n",
		n, round(walls[runs/2]), round(cpus[runs/2]), runs)
	return nil
}

// round keeps about three significant digits of d for printing.
func round(d time.Duration) time.Duration {
	switch {
	case d < time.Millisecond:
		return d.Round(100 * time.Nanosecond)
	case d < time.Second:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
