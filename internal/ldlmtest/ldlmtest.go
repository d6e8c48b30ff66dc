// Package ldlmtest starts a real LDLM server for tests: an embedded NATS
// server (system account, application account, TCP on a free loopback port)
// and the lock service connected to it in-process, as `ldlm` runs it.
package ldlmtest

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/service"
)

// Server is a running NATS server with the lock service on it.
type Server struct {
	NATS    *embeddednats.Server
	Service *service.Service
	app     *nats.Conn
	sys     *nats.Conn
}

type options struct {
	cfg        service.Config
	noSystem   bool
	noService  bool
	natsConfig embeddednats.Config
}

// Option changes how Start sets the server up.
type Option func(*options)

// WithConfig runs the service with cfg.
func WithConfig(cfg service.Config) Option { return func(o *options) { o.cfg = cfg } }

// WithTenants gives each tenant its own account and lock namespace (see
// embeddednats.Config.Tenants and service.Config.Tenants). Connect then
// needs the tenant's user and password.
func WithTenants(tenants ...embeddednats.Tenant) Option {
	return func(o *options) { o.natsConfig.Tenants = tenants }
}

// WithoutSystemAccount runs the service without a system account
// connection, as with an external NATS server and no system credentials.
func WithoutSystemAccount() Option { return func(o *options) { o.noSystem = true } }

// WithoutService makes StartCluster start no service: the test starts one
// with Cluster.StartServiceOver.
func WithoutService() Option { return func(o *options) { o.noService = true } }

// WithDataDir runs the NATS server with JetStream file storage in dir and
// the service with its state there (service.StateJetStream), as `ldlm`
// runs with LDLM_DATA_DIR. A server started again on dir finds the locks.
func WithDataDir(dir string) Option {
	return func(o *options) { o.natsConfig.DataDir = dir }
}

// WithListen opens the NATS server's client port on addr (host:port)
// instead of a free port: a server started again on the same address is
// where its clients reconnect.
func WithListen(addr string) Option {
	return func(o *options) { o.natsConfig.Listen = addr }
}

// Start starts a server and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s, err := StartServer(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// StartServer starts a server; Close stops it. For TestMain and examples,
// which have no testing.TB.
func StartServer(opts ...Option) (*Server, error) {
	o := options{natsConfig: embeddednats.Config{Listen: "127.0.0.1:0", ServerName: "ldlmtest"}}
	for _, opt := range opts {
		opt(&o)
	}
	o.natsConfig.Prefix = o.cfg.Prefix
	if len(o.natsConfig.Tenants) > 0 {
		o.cfg.Tenants = true
	}
	if o.natsConfig.DataDir != "" && o.cfg.State == "" {
		o.cfg.State = service.StateJetStream
	}
	log := logger()
	o.natsConfig.Logger = log
	ns, err := embeddednats.Start(o.natsConfig)
	if err != nil {
		return nil, err
	}
	s := &Server{NATS: ns}
	if s.app, err = ns.ConnectApp(); err != nil {
		s.Close()
		return nil, err
	}
	if !o.noSystem {
		if s.sys, err = ns.ConnectSystem(); err != nil {
			s.Close()
			return nil, err
		}
	}
	if s.Service, err = service.Start(o.cfg, s.app, s.sys, log); err != nil {
		s.Close()
		return nil, fmt.Errorf("starting the lock service: %w", err)
	}
	return s, nil
}

// logger discards logs unless LDLM_TEST_LOG is set (to "debug" for more).
func logger() *slog.Logger {
	switch os.Getenv("LDLM_TEST_LOG") {
	case "":
		return slog.New(slog.DiscardHandler)
	case "debug":
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	default:
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
}

// URL is the nats:// URL for client connections.
func (s *Server) URL() string { return s.NATS.ClientURL() }

// Connect opens a TCP client connection in the application account; it is
// closed when the test ends.
func (s *Server) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.URL(), opts...)
	if err != nil {
		t.Fatalf("connecting to %s: %v", s.URL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Kick closes a client's connection from the server side, as an operator
// or a network fault would. The client may reconnect with a new client id.
func (s *Server) Kick(t testing.TB, nc *nats.Conn) {
	t.Helper()
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatalf("client id: %v", err)
	}
	if err := s.NATS.NATSServer().DisconnectClientByID(cid); err != nil {
		t.Fatalf("kicking client %d: %v", cid, err)
	}
}

// ServiceConns returns the service's own connections (sys is nil without
// a system account), for tests that break them.
func (s *Server) ServiceConns() (app, sys *nats.Conn) { return s.app, s.sys }

// Close stops the service, its connections and the NATS server.
func (s *Server) Close() {
	if s.Service != nil {
		s.Service.Stop()
	}
	if s.app != nil {
		s.app.Close()
	}
	if s.sys != nil {
		s.sys.Close()
	}
	s.NATS.Shutdown()
}

// Cluster is NATS servers in one cluster, in this process, with the lock
// service connected to the first (Members[0]); clients connect to the
// others, so that a test can shut their server down under them.
type Cluster struct {
	Members []*embeddednats.Server
	Service *service.Service
	app     *nats.Conn
	sys     *nats.Conn
	routes  []string // the members' route URLs, for a process member (see StartProcessMember)
}

// StartCluster starts n (at least 2) clustered servers and the service,
// and stops them when the test ends. Only WithConfig and WithoutService
// apply of opts. Every member has the system account user sys (password
// sys), for a service connected over TCP (see StartServiceOver).
func StartCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var listens, routes []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listens = append(listens, l.Addr().String())
		routes = append(routes, "nats-route://"+l.Addr().String())
		l.Close()
	}
	// Lame duck mode starts closing clients after its grace period: a short
	// one, so that a test of it takes a second or two (the duration over
	// which the clients are closed cannot be under 30 s, but few clients
	// are closed at most a second apart).
	conf := filepath.Join(t.TempDir(), "cluster.conf")
	if err := os.WriteFile(conf, []byte(`lame_duck_grace_period: "200ms"
lame_duck_duration: "30s"
accounts {
  APP { users [{user: "app", password: "app"}] }
  SYS { users [{user: "sys", password: "sys"}] }
}
system_account: "SYS"
no_auth_user: "app"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{routes: routes}
	t.Cleanup(c.close)
	log := logger()
	for i := range n {
		srv, err := embeddednats.Start(embeddednats.Config{ServerName: fmt.Sprintf("m%d", i), Listen: "127.0.0.1:0", Logger: log,
			Prefix: o.cfg.Prefix, ConfigFile: conf, Cluster: embeddednats.Cluster{Listen: listens[i], Routes: routes}})
		if err != nil {
			t.Fatalf("starting cluster member %d: %v", i, err)
		}
		c.Members = append(c.Members, srv)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, m := range c.Members {
		for m.NATSServer().NumRemotes() < n-1 {
			if time.Now().After(deadline) {
				t.Fatalf("the cluster did not form: %s has %d routes", m.Name(), m.NATSServer().NumRemotes())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if o.noService {
		return c
	}
	var err error
	if c.app, err = c.Members[0].ConnectApp(); err != nil {
		t.Fatal(err)
	}
	if c.sys, err = c.Members[0].ConnectSystem(); err != nil {
		t.Fatal(err)
	}
	if c.Service, err = service.Start(o.cfg, c.app, c.sys, log); err != nil {
		t.Fatalf("starting the lock service: %v", err)
	}
	return c
}

// StartServiceOver starts the service with cfg over TCP connections to
// urls (comma-separated), which reconnect to any of them: unlike the
// in-process service of StartCluster, it survives the death of its NATS
// server. The cluster must have been started WithoutService.
func (c *Cluster) StartServiceOver(t testing.TB, cfg service.Config, urls string) *service.Service {
	t.Helper()
	if c.Service != nil {
		t.Fatal("the cluster has a service already: start it WithoutService")
	}
	reconnect := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond), nats.DontRandomize()}
	var err error
	if c.app, err = nats.Connect(urls, append(reconnect, nats.NoEcho(), nats.UserInfo("app", "app"))...); err != nil {
		t.Fatal(err)
	}
	if c.sys, err = nats.Connect(urls, append(reconnect, nats.UserInfo("sys", "sys"))...); err != nil {
		t.Fatal(err)
	}
	if c.Service, err = service.Start(cfg, c.app, c.sys, logger()); err != nil {
		t.Fatalf("starting the lock service: %v", err)
	}
	return c.Service
}

// URLs is the client URLs of the members from..n-1, joined by commas, as
// nats.Connect takes them: a client given them reconnects to another of
// them when its server goes.
func (c *Cluster) URLs(from int) string {
	var urls []string
	for _, m := range c.Members[from:] {
		if u := m.ClientURL(); u != "" && m.NATSServer().Running() {
			urls = append(urls, u)
		}
	}
	return strings.Join(urls, ",")
}

// MemberOf returns the member that nc is connected to, or nil.
func (c *Cluster) MemberOf(nc *nats.Conn) *embeddednats.Server {
	for _, m := range c.Members {
		if m.NATSServer().ID() == nc.ConnectedServerId() {
			return m
		}
	}
	return nil
}

func (c *Cluster) close() {
	if c.Service != nil {
		c.Service.Stop()
	}
	for _, nc := range []*nats.Conn{c.app, c.sys} {
		if nc != nil {
			nc.Close()
		}
	}
	for _, m := range c.Members {
		m.Shutdown()
	}
}
