package bench

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// Target is the LDLM server under measurement and an echo responder on the
// same NATS server, connected the same way as the lock service: in-process
// for an embedded server, over TCP for an external one. An embedded target
// also has a second echo responder connected over TCP. The embedded server
// runs in a process of its own (Process, what users run) or in this one
// with the clients (Embedded).
type Target struct {
	// URL is where the benchmark's clients connect, always over TCP.
	URL    string
	Prefix string
	// Embedded is set when the target runs in this process.
	Embedded *Embedded
	// Process is set when the target runs in a server process of its own
	// that this one started (see NewProcessTarget).
	Process *ServerProcess

	echoConns []*nats.Conn
	echoes    map[string]string // workload name → subject of its responder
	runID     string            // keeps the names of two runs apart
	// baselinePrefix, when set, is the prefix of a second lock service on
	// the same NATS server (an older build, say): every lock workload is
	// then run against it too, alternating with the one under test.
	baselinePrefix string
	// baselineJSON, when set, makes the baseline's clients decode replies
	// with encoding/json, as clients did before subjects.DecodeLockResponse
	// (see SetJSONBaseline).
	baselineJSON bool
	// clientlib, when set, adds rows of the uncontended and contended
	// workloads run through the Go client (see SetClientlib).
	clientlib bool
}

// BaselineSystem is the system column of the rows measured against the
// baseline service (see SetBaseline).
const BaselineSystem = "baseline"

// baselineTag starts the workload names that run against the baseline.
const baselineTag = BaselineSystem + ":"

// Embedded is an embedded NATS server with the lock service on it, set up
// as `ldlm` runs it with no NATS URL.
type Embedded struct {
	NATS    *embeddednats.Server
	Service *service.Service
	// ServiceOverTCP is set when the service's application connection
	// goes over TCP rather than in-process (an experiment: `ldlm` never
	// runs so).
	ServiceOverTCP bool
	app            *nats.Conn
	sys            *nats.Conn
}

// StartEmbedded starts an embedded NATS server listening on a free
// loopback port, with the lock service connected in-process, or over TCP
// when overTCP is set.
func StartEmbedded(cfg service.Config, overTCP bool) (*Embedded, error) {
	ns, err := embeddednats.Start(embeddednats.Config{Listen: "127.0.0.1:0", ServerName: "ldlm-bench"})
	if err != nil {
		return nil, err
	}
	e := &Embedded{NATS: ns, ServiceOverTCP: overTCP}
	if overTCP {
		e.app, err = nats.Connect(ns.ClientURL(), nats.Name("ldlm"), nats.NoReconnect())
	} else {
		e.app, err = ns.ConnectApp()
	}
	if err == nil {
		e.sys, err = ns.ConnectSystem()
	}
	if err == nil {
		e.Service, err = service.Start(cfg, e.app, e.sys, slog.New(slog.DiscardHandler))
	}
	if err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// Close stops the service, its connections and the server.
func (e *Embedded) Close() {
	if e.Service != nil {
		e.Service.Stop()
	}
	e.app.Close() // a nil *nats.Conn closes as a no-op
	e.sys.Close()
	e.NATS.Shutdown()
}

// NewEmbeddedTarget starts an embedded server, with the lock service
// connected in-process as `ldlm` runs it (or over TCP, with
// serviceOverTCP), and the echo responders on it: echo connected as the
// service is, echo-tcp over TCP.
func NewEmbeddedTarget(serviceOverTCP bool) (*Target, error) {
	e, err := StartEmbedded(service.Config{}, serviceOverTCP)
	if err != nil {
		return nil, err
	}
	t := newTarget(e.NATS.ClientURL(), subjects.DefaultPrefix)
	t.Embedded = e
	var nc *nats.Conn
	if serviceOverTCP {
		nc, err = nats.Connect(t.URL, nats.Name("ldlm-bench-echo"), nats.NoReconnect())
	} else {
		nc, err = e.NATS.ConnectApp(nats.Name("ldlm-bench-echo"))
	}
	if err == nil {
		err = t.startEcho(WorkEcho, nc)
	}
	if err == nil {
		nc, err = nats.Connect(t.URL, nats.Name("ldlm-bench-echo-tcp"), nats.NoReconnect())
		if err == nil {
			err = t.startEcho(WorkEchoTCP, nc)
		}
	}
	if err != nil {
		t.Close() // and e
		return nil, err
	}
	return t, nil
}

func newTarget(url, prefix string) *Target {
	return &Target{URL: url, Prefix: prefix, echoes: map[string]string{}, runID: randomID()}
}

// NewExternalTarget measures the lock service answering under prefix on
// the NATS server at url. The echo responder connects over TCP, as the
// service does.
func NewExternalTarget(url, prefix string) (*Target, error) {
	nc, err := nats.Connect(url, nats.Name("ldlm-bench-echo"), nats.NoReconnect())
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", url, err)
	}
	t := newTarget(url, prefix)
	if err := t.startEcho(WorkEcho, nc); err != nil {
		t.Close()
		return nil, err
	}
	// Fail now, not in the middle of the table, if no service answers.
	if err := t.probe(prefix); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// probe checks that a lock service answers under prefix.
func (t *Target) probe(prefix string) error {
	nc, err := t.Connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	name := "bench.probe." + t.runID
	c, err := newClient(nc, prefix, 5*time.Second)
	if err == nil {
		var key string
		if key, err = c.lock(subjects.OpTryLock, name, nil); err == nil {
			err = c.unlock(name, key)
		}
	}
	if err != nil {
		return fmt.Errorf("no lock service under prefix %q at %s: %w", prefix, t.URL, err)
	}
	return nil
}

// SetBaseline makes Run measure every lock workload also against the lock
// service answering under prefix on the same NATS server, alternating
// round by round with the service under test: an A/B comparison of two
// builds in one run, on the same machine at the same time. Its rows have
// the system BaselineSystem.
func (t *Target) SetBaseline(prefix string) error {
	if t.Embedded != nil {
		return errors.New("a baseline needs an external target: run both services on one NATS server")
	}
	if prefix == t.Prefix {
		return fmt.Errorf("the baseline prefix %q is the prefix under test", prefix)
	}
	if err := t.probe(prefix); err != nil {
		return err
	}
	t.baselinePrefix = prefix
	return nil
}

// SetJSONBaseline makes the baseline's clients decode the replies with
// encoding/json, as clients did before subjects.DecodeLockResponse. The
// client is part of every measurement (in embedded mode it shares the CPU
// with the server and the service), so this is how its decoder is compared
// round by round. Without SetBaseline the baseline is the service under
// test: the two sets of rows then differ only in the client's decoder.
func (t *Target) SetJSONBaseline() {
	t.baselineJSON = true
}

// baselineDescription says what the baseline rows measure, or "" when
// there are none.
func (t *Target) baselineDescription() string {
	service := "the service under test"
	if t.baselinePrefix != "" {
		service = "the service under prefix " + strconv.Quote(t.baselinePrefix)
	}
	switch {
	case t.baselineJSON:
		return service + ", clients decoding replies with encoding/json"
	case t.baselinePrefix != "":
		return service
	}
	return ""
}

// baselineOf names the baseline's run of lock workloads ws, if there is
// a baseline.
func (t *Target) baselineOf(ws []string) []string {
	if t.baselinePrefix == "" && !t.baselineJSON {
		return nil
	}
	var names []string
	for _, w := range ws {
		names = append(names, baselineTag+w)
	}
	return names
}

// ClientlibSystem is the system column of the rows measured through the
// Go client, clientlib (see SetClientlib).
const ClientlibSystem = "clientlib"

// clientlibTag starts the workload names that run through clientlib.
const clientlibTag = ClientlibSystem + ":"

// SetClientlib makes Run measure the uncontended and contended workloads
// also through clientlib (TryLock or Lock, then Unlock), on the same
// connections as the raw requests and alternating with them round by
// round: the client's own cost is the gap between the two rows.
func (t *Target) SetClientlib() {
	t.clientlib = true
}

// clientlibOf names the clientlib runs of lock workloads ws, if asked.
func (t *Target) clientlibOf(ws []string) []string {
	var names []string
	for _, w := range ws {
		if t.clientlib && (w == WorkUncontended || w == WorkContended) {
			names = append(names, clientlibTag+w)
		}
	}
	return names
}

// splitSystem splits a workload name into the system it runs against and
// the workload.
func splitSystem(name string) (system, workload string) {
	if w, ok := strings.CutPrefix(name, baselineTag); ok {
		return BaselineSystem, w
	}
	if w, ok := strings.CutPrefix(name, clientlibTag); ok {
		return ClientlibSystem, w
	}
	return "ldlm", name
}

// startEcho makes nc the echo responder of workload name.
func (t *Target) startEcho(name string, nc *nats.Conn) error {
	t.echoConns = append(t.echoConns, nc)
	subject := "ldlm-bench." + name + "." + t.runID
	_, err := nc.Subscribe(subject, func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		return fmt.Errorf("echo responder: %w", err)
	}
	t.echoes[name] = subject
	return nil
}

// Echoes lists the echo workloads of t: echo, and for an embedded target
// echo-tcp.
func (t *Target) Echoes() []string {
	if _, ok := t.echoes[WorkEchoTCP]; ok {
		return []string{WorkEcho, WorkEchoTCP}
	}
	return []string{WorkEcho}
}

// Close stops the echo responders and, for an embedded target, the server
// (for a server process: the process). The error is the server process's,
// if it failed.
func (t *Target) Close() error {
	for _, nc := range t.echoConns {
		nc.Close()
	}
	if t.Embedded != nil {
		t.Embedded.Close()
	}
	if t.Process != nil {
		return t.Process.stop()
	}
	return nil
}

// Where says where the server and the clients of t run, for the heading
// of every table: the figures depend on it. Clients in the server's own
// process hand requests over between goroutines, not processes, which
// flatters serial work (a contended hand-over, one worker); users' clients
// run in processes of their own.
func (t *Target) Where() (server, clients string) {
	service := "lock service on an in-process connection, as `ldlm` runs it"
	switch {
	case t.Process != nil && t.Process.ServiceOverTCP, t.Embedded != nil && t.Embedded.ServiceOverTCP:
		service = "lock service connected over TCP (an experiment: `ldlm` does not run so)"
	}
	pid := os.Getpid()
	switch {
	case t.Process != nil:
		return fmt.Sprintf("its own process (pid %d, started by ldlm bench from the same binary): embedded NATS server, %s", t.Process.PID, service),
			fmt.Sprintf("in this process (pid %d), over TCP to %s; CPU/cycle is both processes", pid, t.URL)
	case t.Embedded != nil:
		return fmt.Sprintf("IN THIS PROCESS with the clients (pid %d, --in-process): embedded NATS server, %s", pid, service),
			fmt.Sprintf("in the server's process, over TCP to %s: NOT what users get, it flatters serial work; CPU/cycle is that one process", t.URL)
	}
	return fmt.Sprintf("external, at %s under prefix %q, started outside ldlm bench", t.URL, t.Prefix),
		fmt.Sprintf("in this process (pid %d), over TCP; CPU/cycle is this process only", pid)
}

// cpu reads the CPU time used so far by the processes of the measurement:
// this one and, if there is one, the server process. Nil when that is this
// process alone.
func (t *Target) cpu() func() (time.Duration, error) {
	if t.Process == nil {
		return nil
	}
	return func() (time.Duration, error) {
		d, err := t.Process.cpu()
		return processCPU() + d, err
	}
}

// Connect opens a TCP client connection to the target.
func (t *Target) Connect() (*nats.Conn, error) {
	nc, err := nats.Connect(t.URL, nats.Name("ldlm-bench"), nats.NoReconnect())
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", t.URL, err)
	}
	return nc, nil
}

// client sends the wire protocol's requests as an LDLM client library
// does: with the Ldlm-Owner header naming its connection and the
// Ldlm-Session header naming its session.
type client struct {
	nc      *nats.Conn
	prefix  string
	owner   nats.Header
	timeout time.Duration
	// jsonReplies decodes replies with json.Unmarshal instead of the
	// subjects decoders (a baseline, see SetJSONBaseline).
	jsonReplies bool
}

func newClient(nc *nats.Conn, prefix string, timeout time.Duration) (*client, error) {
	cid, err := nc.GetClientID()
	if err != nil {
		return nil, fmt.Errorf("client id: %w", err)
	}
	// The headers the Go client sends: its connection, and a session of
	// its own (random, as the Go client makes it).
	owner := nats.Header{subjects.HeaderOwner: []string{subjects.FormatOwner(nc.ConnectedServerId(), cid)},
		subjects.HeaderSession: []string{rand.Text()}}
	return &client{nc: nc, prefix: prefix, owner: owner, timeout: timeout}, nil
}

func (c *client) request(subject string, body []byte) (*nats.Msg, error) {
	return c.nc.RequestMsg(&nats.Msg{Subject: subject, Header: c.owner, Data: body}, c.timeout)
}

// decodeLock decodes a lock reply as clientlib does: into the whole
// subjects.LockResponse.
func (c *client) decodeLock(data []byte, r *subjects.LockResponse) error {
	if c.jsonReplies {
		return json.Unmarshal(data, r)
	}
	return subjects.DecodeLockResponse(data, r)
}

// decodeUnlock is decodeLock for an unlock reply.
func (c *client) decodeUnlock(data []byte, r *subjects.UnlockResponse) error {
	if c.jsonReplies {
		return json.Unmarshal(data, r)
	}
	return subjects.DecodeUnlockResponse(data, r)
}

// lock sends lock or trylock (op) for name with body and returns the key
// of the grant. A trylock that finds the lock taken is an error here.
func (c *client) lock(op, name string, body []byte) (string, error) {
	m, err := c.request(c.prefix+"."+op+"."+name, body)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", op, name, err)
	}
	var r subjects.LockResponse
	if err := c.decodeLock(m.Data, &r); err != nil {
		return "", fmt.Errorf("%s %s: unreadable reply %q: %w", op, name, m.Data, err)
	}
	if r.Error != nil {
		return "", fmt.Errorf("%s %s: %w", op, name, r.Error)
	}
	if !r.Locked {
		return "", fmt.Errorf("%s %s: not locked", op, name)
	}
	return r.Key, nil
}

func (c *client) unlock(name, key string) error {
	body, err := json.Marshal(subjects.Request{Key: key})
	if err != nil {
		return err
	}
	m, err := c.request(c.prefix+"."+subjects.OpUnlock+"."+name, body)
	if err != nil {
		return fmt.Errorf("unlock %s: %w", name, err)
	}
	var r subjects.UnlockResponse
	if err := c.decodeUnlock(m.Data, &r); err != nil {
		return fmt.Errorf("unlock %s: unreadable reply %q: %w", name, m.Data, err)
	}
	if r.Error != nil {
		return fmt.Errorf("unlock %s: %w", name, r.Error)
	}
	if !r.Unlocked {
		return errors.New("unlock " + name + ": not unlocked")
	}
	return nil
}

// Workload names of the lock service benchmarks.
const (
	WorkEcho        = "echo"     // responder connected as the service is
	WorkEchoTCP     = "echo-tcp" // embedded only: responder over TCP
	WorkUncontended = "uncontended"
	WorkContended   = "contended"
	WorkSemaphore   = "semaphore"
)

// SemaphoreSize is the size of the semaphore workload's lock.
const SemaphoreSize = 8

// echoBody is as long as an unlock request with a service-made key, so
// that the echo carries what a lock cycle carries, header included.
var echoBody = []byte(`{"key":"0123456789abcdef0123456789abcdef"}`)

// echoWorkers make cycles of two echo round trips: a lock cycle is two
// round trips too (lock, unlock), so the rates compare directly.
func (t *Target) echoWorkers(clients []*client, subject string) []Cycle {
	workers := make([]Cycle, len(clients))
	for i, c := range clients {
		workers[i] = func() error {
			for range 2 {
				m, err := c.request(subject, echoBody)
				if err != nil {
					return fmt.Errorf("echo: %w", err)
				}
				if len(m.Data) != len(echoBody) {
					return fmt.Errorf("echo: got %d bytes back, sent %d", len(m.Data), len(echoBody))
				}
			}
			return nil
		}
	}
	return workers
}

// uncontendedWorkers trylock a name of their own with a key of their own,
// as a client that must be able to withdraw does (clientlib does: its rows
// then send the same two requests as these), and unlock it.
func (t *Target) uncontendedWorkers(clients []*client) []Cycle {
	workers := make([]Cycle, len(clients))
	for i, c := range clients {
		name := "bench.u." + t.runID + "." + strconv.Itoa(i)
		seq := 0
		workers[i] = func() error {
			seq++
			body, err := json.Marshal(subjects.Request{Key: t.key(i, seq)})
			if err != nil {
				return err
			}
			key, err := c.lock(subjects.OpTryLock, name, body)
			if err != nil {
				return err
			}
			return c.unlock(name, key)
		}
	}
	return workers
}

// key is worker's key for its seq-th lock request: unique in the run.
func (t *Target) key(worker, seq int) string {
	return t.runID + "-" + strconv.Itoa(worker) + "-" + strconv.Itoa(seq)
}

// sharedLockWorkers all wait for one lock of the given size with a
// blocking lock and a key of their own, as a client that may give up
// sends, then unlock it.
func (t *Target) sharedLockWorkers(clients []*client, kind string, size int) []Cycle {
	name := "bench." + kind + "." + t.runID
	workers := make([]Cycle, len(clients))
	for i, c := range clients {
		seq := 0
		workers[i] = func() error {
			seq++
			key := t.key(i, seq)
			body, err := json.Marshal(subjects.Request{Key: key, Size: size})
			if err != nil {
				return err
			}
			if _, err := c.lock(subjects.OpLock, name, body); err != nil {
				// Gave up waiting: cancel the wait, or release a grant
				// that raced in, with the same key.
				_ = c.unlock(name, key)
				return err
			}
			return c.unlock(name, key)
		}
	}
	return workers
}

// Open opens the connections of n workers in mode and returns the named
// workloads on them, in the order given, and a function that closes the
// connections.
func (t *Target) Open(names []string, n int, mode ConnMode, timeout time.Duration) ([]Workload, func(), error) {
	clients, closeConns, err := t.openClients(n, mode, timeout)
	if err != nil {
		return nil, nil, err
	}
	libs := libClients{}
	closeAll := func() {
		libs.close()
		closeConns()
	}
	ws, err := t.workloads(names, clients, libs)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return ws, closeAll, nil
}

// workloads returns the named workloads for the given clients, in the
// order given. The clientlib ones make their Go clients in libs.
func (t *Target) workloads(names []string, clients []*client, libs libClients) ([]Workload, error) {
	var ws []Workload
	for _, name := range names {
		system, n := splitSystem(name)
		clients := clients
		if system == BaselineSystem {
			clients = t.baselineClients(clients)
		}
		var w []Cycle
		if system == ClientlibSystem {
			var err error
			if w, err = t.clientlibWorkers(n, clients, libs); err != nil {
				return nil, err
			}
			ws = append(ws, Workload{Name: name, Workers: w, CPU: t.cpu()})
			continue
		}
		switch n {
		case WorkEcho, WorkEchoTCP:
			subject, ok := t.echoes[n]
			if !ok {
				return nil, fmt.Errorf("no %s responder", n)
			}
			w = t.echoWorkers(clients, subject)
		case WorkUncontended:
			w = t.uncontendedWorkers(clients)
		case WorkContended:
			w = t.sharedLockWorkers(clients, "c", 0)
		case WorkSemaphore:
			w = t.sharedLockWorkers(clients, "s", SemaphoreSize)
		default:
			return nil, fmt.Errorf("unknown workload %q", n)
		}
		ws = append(ws, Workload{Name: name, Workers: w, CPU: t.cpu()})
	}
	return ws, nil
}

// baselineClients returns copies of clients, on the same connections, that
// send to the baseline service and decode as its clients do.
func (t *Target) baselineClients(clients []*client) []*client {
	out := make([]*client, len(clients))
	for i, c := range clients {
		cc := *c
		if t.baselinePrefix != "" {
			cc.prefix = t.baselinePrefix
		}
		cc.jsonReplies = t.baselineJSON
		out[i] = &cc
	}
	return out
}

// ConnMode says how workers share connections.
type ConnMode string

// The connection modes.
const (
	SharedConn    ConnMode = "shared"     // one connection for all workers
	ConnPerWorker ConnMode = "per-worker" // one connection each
)

// openClients opens the connections of n workers in mode and returns one
// client per worker, and a function that closes the connections.
func (t *Target) openClients(n int, mode ConnMode, timeout time.Duration) ([]*client, func(), error) {
	var conns []*nats.Conn
	closeAll := func() {
		for _, nc := range conns {
			nc.Close()
		}
	}
	clients := make([]*client, n)
	for i := range n {
		if mode == ConnPerWorker || i == 0 {
			nc, err := t.Connect()
			if err != nil {
				closeAll()
				return nil, nil, err
			}
			conns = append(conns, nc)
		}
		c, err := newClient(conns[len(conns)-1], t.Prefix, timeout)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		clients[i] = c
	}
	return clients, closeAll, nil
}

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
