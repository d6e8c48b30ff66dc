// Package embeddednats runs a NATS server inside the ldlm process, for the
// single-binary mode: one command gives a working lock server.
//
// The server is set up the way the lock service needs it:
//   - a system account, so that the service can follow the server's client
//     CONNECT/DISCONNECT advisories and ask it for the list of connections;
//   - an application account APP in which the service answers and its
//     clients log in: with a user and password, a token, nkeys, or users of
//     a nats-server configuration file; with none of these, every client
//     that sends no credentials lands there (NoAuthUser);
//   - the service's own connections are in-process: no TCP, no credentials
//     on the wire. Their users' passwords are random for each start, so no
//     outside client can log in as the service or to the system account.
package embeddednats

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/bcrypt"
)

// Account and user names of the embedded server.
const (
	AppAccount     = "APP"
	SystemAccount  = "SYS"
	ServiceAccount = "LDLM" // with tenants: the service's own account
	appUser        = "app"
	systemUser     = "ldlm-system"
	serviceUser    = "ldlm-service"
)

// Tenant is an application account of the multi-tenant mode, with one
// user. Its clients must authenticate as that user.
type Tenant struct {
	Account  string
	User     string
	Password string
}

// Config says how to run the embedded server. The zero value listens on no
// TCP port at all (in-process clients only).
type Config struct {
	// Listen is the host:port for NATS clients, e.g. "127.0.0.1:4222".
	// Port 0 picks a free port (see Server.ClientURL). Empty: no listener.
	Listen string
	// ListenLater makes Start leave the client port closed: Server.Listen
	// opens it. ldlm opens it once the lock service answers, so that a
	// client that can connect finds the service there and never gets "no
	// responders" at start (the service itself uses in-process
	// connections, which need no port). Two kinds of configuration file
	// keep the port opening at start (see canListenLater).
	ListenLater bool
	// ServerName is the server's name as clients and advisories see it.
	// Empty: "ldlm".
	ServerName string
	// PingInterval and MaxPingsOut bound how long a silently vanished
	// client keeps its connection, and so its locks. A client whose process
	// exits or is killed closes its socket and is gone at once; one that
	// goes silent with its socket open (a frozen VM, a cut cable, a
	// SIGSTOPped process) is only noticed when it leaves MaxPingsOut of the
	// server's pings unanswered: between PingInterval x MaxPingsOut and
	// PingInterval x (MaxPingsOut+1) after it last sent anything. Zero:
	// DefaultPingInterval and DefaultMaxPingsOut. The NATS server's own
	// defaults (2 minutes x 2) would keep a dead client's locks for up to 6
	// minutes.
	PingInterval time.Duration
	MaxPingsOut  int
	// Logger receives the NATS server's log lines. Nil: discarded.
	Logger *slog.Logger
	// Debug also passes on the server's debug lines.
	Debug bool
	// Tenants, when not empty, switches to one account per tenant: the
	// service runs in its own account LDLM, and each tenant account
	// imports its lock subjects with sharing on (so the server stamps
	// Nats-Request-Info) and its own lost-lock notices. There is then no
	// anonymous access. Prefix is the service's subject prefix (default
	// "ldlm"), needed for the imports.
	Tenants []Tenant
	Prefix  string

	// TLSCert and TLSKey (PEM files) make the client port speak TLS only.
	// TLSCA (a PEM file) also makes the server require a client certificate
	// signed by that CA (mutual TLS). In-process connections need neither.
	TLSCert, TLSKey, TLSCA string

	// How TCP clients log in to the application account; see Auth. With
	// none of Auth and no ConfigFile, clients need no credentials.
	Auth Auth

	// DataDir turns JetStream on, with file storage in this folder, for
	// the account where the service answers: what lock state that outlives
	// the process needs (docs/ha.md). Empty: no JetStream, unless a
	// configuration file turns it on.
	DataDir string

	// Cluster makes the server a member of a NATS cluster (with DataDir, a
	// JetStream cluster). Every member needs a ServerName of its own.
	Cluster Cluster

	// ConfigFile is a nats-server configuration file for what Config does
	// not cover: accounts, users and their permissions, JetStream,
	// clustering. See LoadConfigFile for what it must not contain. The
	// server adds the service's own users, the application account APP
	// and, if the file names none, the system account SYS.
	ConfigFile string
}

// Cluster says how a server joins the other members of a NATS cluster. The
// zero value: no cluster.
type Cluster struct {
	// Name is the cluster's name, the same on every member. Empty: "ldlm".
	Name string
	// Listen is the host:port on which other members connect (routes).
	// Empty: not a cluster member.
	Listen string
	// Routes are the other members' route URLs (nats-route://host:port).
	// A member that lists itself ignores that route.
	Routes []string
}

// Auth says how TCP clients log in to the application account. A token
// excludes the others, as in nats-server; a user and nkeys may be combined.
type Auth struct {
	User     string
	Password string // plain, or a bcrypt hash ($2a$…), as nats-server takes it
	Token    string
	Nkeys    []string // public user nkeys (U…)
}

// IsZero reports that Auth asks for no credentials.
func (a Auth) IsZero() bool {
	return a.User == "" && a.Password == "" && a.Token == "" && len(a.Nkeys) == 0
}

// The ping settings used when Config leaves them zero: a silent client is
// dropped 45 to 60 s after it last sent anything. A live client answers a
// ping within its round-trip time, so a shorter interval costs one small
// PING/PONG per quiet client every 15 s and nothing else.
const (
	DefaultPingInterval = 15 * time.Second
	DefaultMaxPingsOut  = 3
)

// Server is a running embedded NATS server.
type Server struct {
	ns          *server.Server
	systemPass  string
	servicePass string
	// unprotected: TCP clients get in without credentials or client
	// certificate, on an address that is not loopback only.
	unprotected bool
	// listenLater: Listen has a client port to open, at listen.
	listenLater bool
	listen      string
	// otherEntries: the server can be reached by other means than its
	// client port (see hasOtherEntries).
	otherEntries bool
}

// Start starts the server and waits until it accepts connections: in-process
// ones, and TCP ones too unless cfg.ListenLater defers those to Listen.
func Start(cfg Config) (*Server, error) {
	systemPass, err := randomSecret()
	if err != nil {
		return nil, err
	}
	servicePass, err := randomSecret()
	if err != nil {
		return nil, err
	}
	opts, err := serverOptions(cfg, systemPass, servicePass)
	if err != nil {
		return nil, err
	}
	listens := !opts.DontListen
	// nats-server opens the client port at the end of Start unless
	// DontListen is set, and exports the call that opens it (AcceptLoop):
	// with DontListen, Start does everything but that, and Listen makes
	// the call later. The options keep the host and port for it.
	later := listens && cfg.ListenLater && canListenLater(opts)
	if later {
		opts.DontListen = true
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	if auth, ok := opts.CustomClientAuthentication.(*tokenAuth); ok {
		auth.srv = ns
	}
	if cfg.Logger != nil {
		// The server warns of plain passwords: worth it for those the
		// operator chose, not for the anonymous user's empty one or the
		// tenants' (given plain by design).
		operatorPlain := cfg.ConfigFile != "" || (cfg.Auth.Password != "" && !strings.HasPrefix(cfg.Auth.Password, "$2"))
		ns.SetLoggerV2(slogAdapter{cfg.Logger.With("component", "nats-server"), !operatorPlain}, cfg.Debug, false, false)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10*time.Second) || (listens && !later && ns.Addr() == nil) {
		ns.Shutdown()
		return nil, fmt.Errorf("%w on %q (is the port in use?)", ErrListen, cfg.Listen)
	}
	if cfg.DataDir != "" {
		if err := enableJetStream(ns, serviceAccount(cfg)); err != nil {
			ns.Shutdown()
			return nil, err
		}
	}
	unprotected := opts.NoAuthUser != "" && !opts.TLSVerify && listens && !loopbackOnly(opts.Host)
	return &Server{ns: ns, systemPass: systemPass, servicePass: servicePass, unprotected: unprotected,
		listenLater: later, listen: cfg.Listen, otherEntries: hasOtherEntries(opts)}, nil
}

// serviceAccount is the account where the lock service answers.
func serviceAccount(cfg Config) string {
	if len(cfg.Tenants) > 0 {
		return ServiceAccount
	}
	return AppAccount
}

// enableJetStream gives the account JetStream (with the server's limits),
// unless a configuration file did already. Enabling it recovers the
// account's streams from the data folder.
func enableJetStream(ns *server.Server, account string) error {
	acc, err := ns.LookupAccount(account)
	if err != nil {
		return fmt.Errorf("embedded NATS: account %s: %w", account, err)
	}
	if acc.JetStreamEnabled() {
		return nil
	}
	if err := acc.EnableJetStream(nil, nil); err != nil {
		return fmt.Errorf("embedded NATS: JetStream for account %s: %w", account, err)
	}
	return nil
}

// canListenLater reports that the server of opts works with its client
// port opened after Start, by Listen. Two settings of a configuration file
// need the port opened within Start:
//   - a cluster: nats-server starts its routes only once Start has opened
//     the client port, so with DontListen they would never start and
//     Shutdown would wait for them forever;
//   - verify_and_map on the client port: with DontListen, nats-server
//     counts that port as absent when it decides whether a user without a
//     password is one that only a client certificate may log in as, and
//     would let such a user in with an empty password on another listener
//     (websocket, MQTT).
func canListenLater(opts *server.Options) bool {
	return opts.Cluster.Port == 0 && !opts.TLSMap
}

// hasOtherEntries reports that a client or another server can reach the
// server of opts without its client port: a cluster, a gateway, leaf nodes
// (either way), websocket or MQTT, all of which a configuration file may
// set and nats-server opens within Start.
func hasOtherEntries(opts *server.Options) bool {
	return opts.Cluster.Port != 0 || len(opts.Routes) > 0 ||
		opts.Gateway.Port != 0 || len(opts.Gateway.Gateways) > 0 ||
		opts.LeafNode.Port != 0 || len(opts.LeafNode.Remotes) > 0 ||
		opts.Websocket.Port != 0 || opts.MQTT.Port != 0
}

// Unreachable reports that no connection from outside this process can
// reach the server yet: its client port waits for Listen, and nothing else
// (cluster, gateway, leaf nodes, websocket, MQTT) lets anyone in. Until
// Listen, the only clients are the in-process ones this program makes, so
// it knows, for one, that no other lock service instance is there.
func (s *Server) Unreachable() bool {
	return s.listenLater && !s.otherEntries
}

// Listen opens the client port of a server started with
// Config.ListenLater and returns once the port accepts connections. It
// does nothing if the port is open already, or there is none. Call it
// from one goroutine, before Shutdown.
func (s *Server) Listen() error {
	if !s.listenLater {
		return nil
	}
	s.listenLater = false
	// The call Start makes without DontListen. It returns once the
	// listener is open and its accept loop runs, or when listening failed
	// (the server logs why): the server then has no address.
	s.ns.AcceptLoop(make(chan struct{}))
	if s.ns.Addr() == nil {
		return fmt.Errorf("%w on %q (is the port in use?)", ErrListen, s.listen)
	}
	return nil
}

// ErrListen: the server could not open its client port. Its errors name
// the address and the cause; the caller adds which setting to change.
var ErrListen = errors.New("embedded NATS server cannot listen")

// loopbackOnly reports that a listen host accepts connections from this
// machine only. A host name other than localhost counts as not: it may
// resolve to any address.
func loopbackOnly(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// hash returns the bcrypt hash the server keeps of a generated secret. The
// lowest cost is enough for a random 128-bit secret and keeps in-process
// connects fast.
func hash(secret string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
	return string(h), err
}

func serverOptions(cfg Config, systemPass, servicePass string) (*server.Options, error) {
	systemHash, err := hash(systemPass)
	if err != nil {
		return nil, err
	}
	serviceHash, err := hash(servicePass)
	if err != nil {
		return nil, err
	}
	if err := checkTenants(cfg.Tenants); err != nil {
		return nil, err
	}
	if err := cfg.Auth.check(); err != nil {
		return nil, err
	}
	var opts *server.Options
	switch {
	case len(cfg.Tenants) > 0:
		if !cfg.Auth.IsZero() || cfg.ConfigFile != "" {
			return nil, errors.New("embedded NATS: tenants bring their own users: give no other users, token, nkeys or configuration file")
		}
		opts = &server.Options{}
		if err := opts.ProcessConfigString(TenantsConfig(cfg.Prefix, cfg.Tenants, systemHash, serviceHash)); err != nil {
			return nil, fmt.Errorf("embedded NATS tenants: %w", err)
		}
	case cfg.ConfigFile != "":
		if opts, err = LoadConfigFile(cfg.ConfigFile); err != nil {
			return nil, err
		}
		if cfg.Auth.Token != "" && (len(opts.Users) > 0 || len(opts.Nkeys) > 0) {
			return nil, fmt.Errorf("embedded NATS: %s has users, which a token excludes (as in nats-server): give the token's clients a user instead", cfg.ConfigFile)
		}
		if opts.TLSConfig != nil && cfg.TLSCert != "" {
			return nil, fmt.Errorf("embedded NATS: %s has a tls block and TLS files are given too: use one or the other", cfg.ConfigFile)
		}
		addAccess(opts, cfg, systemPass, systemHash, servicePass, serviceHash)
	default:
		opts = &server.Options{}
		addAccess(opts, cfg, systemPass, systemHash, servicePass, serviceHash)
	}
	if cfg.TLSCert != "" || cfg.TLSKey != "" || cfg.TLSCA != "" {
		if opts.TLSConfig, err = LoadTLS(cfg.TLSCert, cfg.TLSKey, cfg.TLSCA); err != nil {
			return nil, err
		}
		opts.TLS, opts.TLSVerify = true, cfg.TLSCA != ""
		opts.TLSCert, opts.TLSKey, opts.TLSCaCert = cfg.TLSCert, cfg.TLSKey, cfg.TLSCA
		opts.TLSTimeout = tlsTimeout.Seconds()
	}
	if cfg.PingInterval < 0 || cfg.MaxPingsOut < 0 {
		return nil, fmt.Errorf("embedded NATS ping interval %s and ping max %d: neither may be negative (zero: the defaults)", cfg.PingInterval, cfg.MaxPingsOut)
	}
	opts.ServerName = cfg.ServerName
	opts.PingInterval = cmp.Or(cfg.PingInterval, DefaultPingInterval)
	opts.MaxPingsOut = cmp.Or(cfg.MaxPingsOut, DefaultMaxPingsOut)
	opts.NoSigs = true // the ldlm process handles signals itself
	if opts.ServerName == "" {
		opts.ServerName = "ldlm"
	}
	if cfg.DataDir != "" {
		if opts.JetStream && opts.StoreDir != "" && opts.StoreDir != cfg.DataDir {
			return nil, fmt.Errorf("embedded NATS: the configuration file's jetstream store_dir %s and the data folder %s differ: give one", opts.StoreDir, cfg.DataDir)
		}
		opts.JetStream, opts.StoreDir = true, cfg.DataDir
	}
	if err := setCluster(opts, cfg); err != nil {
		return nil, err
	}
	if cfg.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := ParseListen(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS %w", err)
		}
		if port == 0 {
			port = server.RANDOM_PORT
		} else if err := checkFree(cfg.Listen); err != nil {
			// The server would only log this and wait in vain: say it now.
			return nil, err
		}
		opts.Host, opts.Port = host, port
	}
	return opts, nil
}

// setCluster puts cfg.Cluster into opts. A cluster member needs a name of
// its own: JetStream tells members apart by it.
func setCluster(opts *server.Options, cfg Config) error {
	c := cfg.Cluster
	if c.Listen == "" {
		if len(c.Routes) > 0 || c.Name != "" {
			return errors.New("embedded NATS cluster: routes or a cluster name need a cluster listen address")
		}
		return nil
	}
	if opts.Cluster.Port != 0 {
		return errors.New("embedded NATS cluster: the configuration file has a cluster block and a cluster listen address is given too: use one or the other")
	}
	if cfg.ServerName == "" {
		return errors.New("embedded NATS cluster: every member needs a server name of its own")
	}
	if cfg.Listen == "" {
		// nats-server starts its routes once it has opened the client port.
		return errors.New("embedded NATS cluster: a member needs a client listen address too")
	}
	if cfg.DataDir != "" && len(c.Routes) == 0 {
		return errors.New("embedded NATS cluster: a JetStream cluster member needs the routes of the other members")
	}
	host, port, err := ParseListen(c.Listen)
	if err != nil {
		return fmt.Errorf("embedded NATS cluster %w", err)
	}
	if port == 0 {
		port = server.RANDOM_PORT // see Server.ClusterURL
	}
	opts.Cluster.Name = cmp.Or(c.Name, "ldlm")
	opts.Cluster.Host, opts.Cluster.Port = host, port
	for _, r := range c.Routes {
		u, err := url.Parse(r)
		if err != nil || u.Scheme != "nats-route" || u.Host == "" {
			return fmt.Errorf("embedded NATS cluster route %q: want nats-route://host:port", r)
		}
		opts.Routes = append(opts.Routes, u)
	}
	return nil
}

// tlsTimeout bounds a client's TLS handshake (nats-server's default).
const tlsTimeout = 2 * time.Second

// addAccess adds to opts what the lock service needs and how clients log
// in: the application account, the system account, the service's two
// users, and the users of cfg.Auth, or else anonymous access to the
// application account (unless a configuration file decides).
func addAccess(opts *server.Options, cfg Config, systemPass, systemHash, servicePass, serviceHash string) {
	app := ensureAccount(opts, AppAccount)
	opts.SystemAccount = cmp.Or(opts.SystemAccount, SystemAccount)
	sys := ensureAccount(opts, opts.SystemAccount)
	opts.Users = append(opts.Users,
		&server.User{Username: systemUser, Password: systemHash, Account: sys},
		&server.User{Username: serviceUser, Password: serviceHash, Account: app})
	a := cfg.Auth
	// With JetStream on, the lock state is a stream in the application
	// account: its clients must neither read nor write the state
	// subjects (a record holds the holders' keys; a write deposes the
	// service) nor reach the JetStream API (which could delete the
	// stream). A configuration file's users get what the file says.
	var perms *server.Permissions
	if cfg.DataDir != "" {
		guard := &server.SubjectPermission{Deny: []string{"$LDLM.>", "$JS.>"}}
		perms = &server.Permissions{Publish: guard, Subscribe: guard}
	}
	if a.User != "" {
		opts.Users = append(opts.Users, &server.User{Username: a.User, Password: a.Password, Account: app, Permissions: perms})
	}
	for _, nk := range a.Nkeys {
		opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: nk, Account: app, Permissions: perms})
	}
	if a.Token != "" {
		// nats-server has no token next to users: check all three here.
		opts.CustomClientAuthentication = &tokenAuth{
			token:   a.Token,
			app:     AppAccount,
			system:  opts.SystemAccount,
			systemP: systemPass,
			service: servicePass,
			perms:   perms,
		}
	}
	if a.IsZero() && cfg.ConfigFile == "" {
		// Clients without credentials become this user (NoAuthUser). It
		// has no password: it is the anonymous account anyway.
		opts.Users = append(opts.Users, &server.User{Username: appUser, Account: app, Permissions: perms})
		opts.NoAuthUser = appUser
	}
}

// ensureAccount returns the account of opts called name, adding it if
// opts has none.
func ensureAccount(opts *server.Options, name string) *server.Account {
	for _, a := range opts.Accounts {
		if a.Name == name {
			return a
		}
	}
	a := server.NewAccount(name)
	opts.Accounts = append(opts.Accounts, a)
	return a
}

// ParseListen splits a listen address of the form host:port, as in
// Config.Listen: host may be empty (every interface) or a name or an IP
// address; port is 0 (any free port) to 65535. Its errors say what a valid
// address looks like.
func ParseListen(addr string) (host string, port int, err error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("listen address %q: want host:port, e.g. 127.0.0.1:4222 or :4222", addr)
	}
	if strings.ContainsAny(host, " \t/") {
		return "", 0, fmt.Errorf("listen address %q: %q is not a host name or IP address", addr, host)
	}
	port, err = strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("listen address %q: the port must be a number from 0 to 65535", addr)
	}
	return host, port, nil
}

func checkFree(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%w on %q: %w", ErrListen, addr, err)
	}
	return l.Close()
}

// ClientURL is the nats:// URL on which TCP clients reach the server, or ""
// when it does not listen.
func (s *Server) ClientURL() string {
	if s.ns.Addr() == nil {
		return ""
	}
	return s.ns.ClientURL()
}

// ClusterURL is the nats-route:// URL on which other cluster members reach
// the server, or "" when it is not a cluster member.
func (s *Server) ClusterURL() string {
	addr := s.ns.ClusterAddr()
	if addr == nil {
		return ""
	}
	return "nats-route://" + addr.String()
}

// Name is the server's name, as advisories and Nats-Request-Info carry it.
func (s *Server) Name() string { return s.ns.Name() }

// NATSServer exposes the underlying server, for tests and diagnostics.
func (s *Server) NATSServer() *server.Server { return s.ns }

// ConnectApp opens an in-process connection in the account where the lock
// service answers: the application account, or with tenants the service
// account. It does not receive its own messages (nats.NoEcho): the service
// subscribes to every subject under its prefix, where it also publishes.
func (s *Server) ConnectApp(opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{nats.InProcessServer(s.ns), nats.Name("ldlm"), nats.NoEcho(), nats.UserInfo(serviceUser, s.servicePass)}
	return nats.Connect("", append(base, opts...)...)
}

// Unprotected reports that the server listens on an address that is not
// loopback only and lets TCP clients in without credentials or client
// certificate: anyone who reaches the port may then lock and administer.
func (s *Server) Unprotected() bool { return s.unprotected }

// ConnectSystem opens an in-process connection in the system account, for
// advisories and connection listings.
func (s *Server) ConnectSystem(opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{nats.InProcessServer(s.ns), nats.UserInfo(systemUser, s.systemPass), nats.Name("ldlm-system")}
	return nats.Connect("", append(base, opts...)...)
}

// Shutdown stops the server and waits until it has stopped.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

func randomSecret() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", errors.New("embedded NATS: no randomness for credentials: " + err.Error())
	}
	return hex.EncodeToString(b[:]), nil
}

// slogAdapter passes the NATS server's log lines to slog.
type slogAdapter struct {
	log            *slog.Logger
	quietPlaintext bool // the plain-password warning goes to debug
}

func (a slogAdapter) Noticef(format string, v ...any) { a.log.Info(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Warnf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if a.quietPlaintext && strings.HasPrefix(msg, "Plaintext passwords detected") {
		a.log.Debug(msg)
		return
	}
	a.log.Warn(msg)
}
func (a slogAdapter) Fatalf(format string, v ...any) { a.log.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Errorf(format string, v ...any) { a.log.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Debugf(format string, v ...any) { a.log.Debug(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Tracef(format string, v ...any) { a.log.Debug(fmt.Sprintf(format, v...)) }
