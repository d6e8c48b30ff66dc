package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

func (c natsCredentials) isZero() bool { return c == natsCredentials{} }

func (c natsCredentials) options() ([]nats.Option, error) {
	// An empty user, password or token is what nats.go has by default.
	opts := []nats.Option{nats.UserInfo(c.User, c.Password), nats.Token(c.Token)}
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.NKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nkey seed file %q: %w", c.NKeyFile, err)
		}
		opts = append(opts, opt)
	}
	if c.TLS.CA != "" {
		opts = append(opts, nats.RootCAs(c.TLS.CA))
	}
	if c.TLS.Cert != "" {
		opts = append(opts, nats.ClientCert(c.TLS.Cert, c.TLS.Key))
	}
	return opts, nil
}

// validate reports the first setting that cannot work, in one line that
// names its variable and flag and says what would. It checks everything
// that can be checked before anything starts (reading the files of the
// embedded server's TLS and configuration too), so that bad configuration
// stops ldlm with exit status 2; whatever fails later is a runtime failure
// (exit status 1).
func (c *serverConfig) validate() error {
	switch {
	case c.Prefix == "" || strings.ContainsAny(c.Prefix, " \t\r\n*>") || strings.HasPrefix(c.Prefix, ".") || strings.HasSuffix(c.Prefix, ".") || strings.Contains(c.Prefix, ".."):
		return c.bad(&c.Prefix, "%q is not a valid NATS subject prefix: use dot-separated tokens without spaces, '*' or '>', e.g. ldlm or team.locks", c.Prefix)
	case len(c.Prefix) > subjects.MaxPrefixLength:
		return c.bad(&c.Prefix, "is %d bytes long; at most %d keep every subject under NATS's limit", len(c.Prefix), subjects.MaxPrefixLength)
	case c.MaxNameLength < 1 || c.MaxNameLength > subjects.MaxNameLengthLimit:
		return c.bad(&c.MaxNameLength, "must be from 1 to %d (longer names would make subjects NATS refuses), got %d", subjects.MaxNameLengthLimit, c.MaxNameLength)
	case c.MaxBodyBytes < 1:
		return c.bad(&c.MaxBodyBytes, "must be at least 1, got %d", c.MaxBodyBytes)
	}
	for _, limit := range []*int{&c.MaxLocks, &c.MaxWaitersPerLock, &c.MaxWaitsPerConn} {
		if *limit < 1 && *limit != -1 {
			return c.bad(limit, "must be at least 1, or -1 for no limit; got %d", *limit)
		}
	}
	switch {
	case c.AnonymousLockTimeout <= 0 || c.AnonymousLockTimeout > subjects.MaxTimeoutSeconds*time.Second:
		return c.bad(&c.AnonymousLockTimeout, "must be positive and at most a year (%s), got %s", subjects.MaxTimeoutSeconds*time.Second, c.AnonymousLockTimeout)
	case c.SweepInterval == 0:
		return c.bad(&c.SweepInterval, "must not be 0: give a duration such as 30s, or a negative one to sweep only at start and after reconnects")
	case c.ReconnectGrace <= 0 || c.ReconnectGrace > time.Hour:
		return c.bad(&c.ReconnectGrace, "must be positive and at most an hour (a holder that is really gone keeps its locks that long), got %s", c.ReconnectGrace)
	case c.State != service.StateMemory && c.State != service.StateJetStream:
		return c.bad(&c.State, "must be %s or %s, got %q", service.StateMemory, service.StateJetStream, c.State)
	case c.StateReplicas < 1:
		return c.bad(&c.StateReplicas, "must be at least 1, got %d", c.StateReplicas)
	case c.State == service.StateJetStream && strings.HasPrefix(c.Prefix+".", "$LDLM."):
		return c.bad(&c.Prefix, "must not be $LDLM with %s=jetstream: the state's subjects are $LDLM.PREFIX.state.>", c.name(&c.State).env)
	case c.LogFormat != "text" && c.LogFormat != "json":
		return c.bad(&c.LogFormat, "must be text or json, got %q", c.LogFormat)
	}
	if new(slog.Level).UnmarshalText([]byte(c.LogLevel)) != nil {
		return c.bad(&c.LogLevel, "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.MetricsListen != "" {
		if _, _, err := embeddednats.ParseListen(c.MetricsListen); err != nil {
			return c.bad(&c.MetricsListen, "%v", err)
		}
	}
	if c.NATSURL == "" {
		return c.validateEmbedded()
	}
	return c.validateExternal()
}

// validateEmbedded checks the settings of embedded mode (no NATS URL).
func (c *serverConfig) validateEmbedded() error {
	if c.DataDir != "" {
		// The data folder is the state's home: one copy on a single
		// server; on a cluster member, LDLM_STATE_REPLICAS copies (capped
		// by the JetStream servers present).
		c.State = service.StateJetStream
		if c.EmbeddedClusterListen == "" {
			c.StateReplicas = 1
		}
	}
	for _, creds := range []*natsCredentials{&c.App, &c.System} {
		if !creds.isZero() {
			return fmt.Errorf("%s are set but no NATS URL: set %s, or unset them to run the embedded server", c.group(creds), c.name(&c.NATSURL))
		}
	}
	switch {
	case c.State == service.StateJetStream && c.DataDir == "":
		return c.bad(&c.State, "is jetstream, but the embedded NATS server keeps no JetStream storage without a data folder: set %s", c.name(&c.DataDir))
	case c.SystemURL != "":
		return c.bad(&c.SystemURL, "is set but no NATS URL: set %s, or unset it to run the embedded server", c.name(&c.NATSURL))
	case strings.ContainsAny(c.EmbeddedServerName, " \t\r\n"):
		return c.bad(&c.EmbeddedServerName, "%q must not contain spaces", c.EmbeddedServerName)
	case c.EmbeddedPingInterval <= 0:
		return c.bad(&c.EmbeddedPingInterval, "must be positive, e.g. 15s; got %s", c.EmbeddedPingInterval)
	case c.EmbeddedPingMax < 1:
		return c.bad(&c.EmbeddedPingMax, "must be at least 1, got %d", c.EmbeddedPingMax)
	}
	if c.EmbeddedListen != "" {
		if _, _, err := embeddednats.ParseListen(c.EmbeddedListen); err != nil {
			return c.bad(&c.EmbeddedListen, "%v", err)
		}
	}
	if err := c.validateCluster(); err != nil {
		return err
	}
	tenants, err := embeddednats.ParseTenants(c.EmbeddedTenants)
	switch {
	case err != nil:
		return c.bad(&c.EmbeddedTenants, "%v", err)
	case len(tenants) == 0 && strings.TrimSpace(c.EmbeddedTenants) != "":
		return c.bad(&c.EmbeddedTenants, "%q names no tenant: want ACCOUNT:USER:PASSWORD,…", c.EmbeddedTenants)
	case c.Tenants && len(tenants) == 0:
		return c.bad(&c.Tenants, "needs tenant accounts: set %s (or %s for an external server)", c.name(&c.EmbeddedTenants), c.name(&c.NATSURL))
	}
	return c.validateEmbeddedSecurity(len(tenants) > 0)
}

// validateCluster checks the embedded cluster's settings and gives a
// member the host name as its server name unless it was given one: the
// members' names must differ.
func (c *serverConfig) validateCluster() error {
	if c.EmbeddedClusterListen == "" {
		if c.EmbeddedClusterRoutes != "" {
			return c.bad(&c.EmbeddedClusterRoutes, "needs %s: the address on which this member takes routes", c.name(&c.EmbeddedClusterListen))
		}
		return nil
	}
	if _, _, err := embeddednats.ParseListen(c.EmbeddedClusterListen); err != nil {
		return c.bad(&c.EmbeddedClusterListen, "%v", err)
	}
	for _, r := range c.clusterRoutes() {
		if u, err := url.Parse(r); err != nil || u.Scheme != "nats-route" || u.Port() == "" {
			return c.bad(&c.EmbeddedClusterRoutes, "%q is not a route URL: want nats-route://host:port", r)
		}
	}
	if strings.ContainsAny(c.EmbeddedClusterName, " \t\r\n.*>") || c.EmbeddedClusterName == "" {
		return c.bad(&c.EmbeddedClusterName, "%q is not a cluster name: give one word without spaces, dots, '*' or '>'", c.EmbeddedClusterName)
	}
	if c.EmbeddedServerName == "ldlm" { // the default: make it this member's own
		host, err := os.Hostname()
		if err != nil || host == "" {
			return c.bad(&c.EmbeddedServerName, "every member of a cluster needs a name of its own, and the host name is unknown (%v): set it", err)
		}
		c.EmbeddedServerName = host
	}
	return nil
}

// cluster is the embedded server's cluster settings; the zero value: none.
func (c *serverConfig) cluster() embeddednats.Cluster {
	if c.EmbeddedClusterListen == "" {
		return embeddednats.Cluster{}
	}
	return embeddednats.Cluster{Name: c.EmbeddedClusterName, Listen: c.EmbeddedClusterListen, Routes: c.clusterRoutes()}
}

// clusterRoutes is EmbeddedClusterRoutes as a list.
func (c *serverConfig) clusterRoutes() []string {
	var routes []string
	for _, r := range strings.Split(c.EmbeddedClusterRoutes, ",") {
		if r = strings.TrimSpace(r); r != "" {
			routes = append(routes, r)
		}
	}
	return routes
}

// validateEmbeddedSecurity checks the embedded server's TLS and
// authentication settings, reading their files.
func (c *serverConfig) validateEmbeddedSecurity(tenants bool) error {
	nkeys, err := embeddednats.ParseNkeys(c.EmbeddedNkeys)
	switch {
	case err != nil:
		return c.bad(&c.EmbeddedNkeys, "%v", err)
	case embeddednats.CheckUser(c.EmbeddedUser) != nil:
		return c.bad(&c.EmbeddedUser, "%v", embeddednats.CheckUser(c.EmbeddedUser))
	case c.EmbeddedUser != "" && c.EmbeddedPassword == "":
		return c.bad(&c.EmbeddedUser, "needs a password: set %s", c.name(&c.EmbeddedPassword))
	case c.EmbeddedPassword != "" && c.EmbeddedUser == "":
		return c.bad(&c.EmbeddedPassword, "needs a user: set %s (or, for a password without user, use %s)", c.name(&c.EmbeddedUser), c.name(&c.EmbeddedToken))
	case c.EmbeddedToken != "" && (c.EmbeddedUser != "" || len(nkeys) > 0):
		return c.bad(&c.EmbeddedToken, "excludes %s and %s, as in nats-server: give one or the other", c.name(&c.EmbeddedUser), c.name(&c.EmbeddedNkeys))
	case c.EmbeddedTLSCert != "" && c.EmbeddedTLSKey == "":
		return c.bad(&c.EmbeddedTLSCert, "needs its key: set %s", c.name(&c.EmbeddedTLSKey))
	case c.EmbeddedTLSKey != "" && c.EmbeddedTLSCert == "":
		return c.bad(&c.EmbeddedTLSKey, "needs its certificate: set %s", c.name(&c.EmbeddedTLSCert))
	case c.EmbeddedTLSCA != "" && c.EmbeddedTLSCert == "":
		return c.bad(&c.EmbeddedTLSCA, "requires client certificates over TLS, which needs the server's own: set %s and %s", c.name(&c.EmbeddedTLSCert), c.name(&c.EmbeddedTLSKey))
	}
	if tenants {
		for _, f := range []*string{&c.EmbeddedUser, &c.EmbeddedToken, &c.EmbeddedNkeys, &c.EmbeddedConfig} {
			if *f != "" {
				return c.bad(f, "cannot be combined with %s: tenants bring their own users", c.name(&c.EmbeddedTenants))
			}
		}
	}
	if c.EmbeddedTLSCert != "" {
		if _, err := embeddednats.LoadTLS(c.EmbeddedTLSCert, c.EmbeddedTLSKey, c.EmbeddedTLSCA); err != nil {
			return fmt.Errorf("%s, %s, %s: %w", c.name(&c.EmbeddedTLSCert), c.name(&c.EmbeddedTLSKey), c.name(&c.EmbeddedTLSCA), err)
		}
	}
	if c.EmbeddedConfig != "" {
		opts, err := embeddednats.LoadConfigFile(c.EmbeddedConfig)
		switch {
		case err != nil:
			// nats-server reports each problem of the file on a line of its own.
			return c.bad(&c.EmbeddedConfig, "%s", strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " "))
		case opts.TLSConfig != nil && c.EmbeddedTLSCert != "":
			return c.bad(&c.EmbeddedConfig, "has a tls block, and %s is set too: use one or the other", c.name(&c.EmbeddedTLSCert))
		case c.EmbeddedToken != "" && (len(opts.Users) > 0 || len(opts.Nkeys) > 0):
			return c.bad(&c.EmbeddedToken, "excludes the users of %s, as in nats-server: give the token's clients a user instead", c.name(&c.EmbeddedConfig))
		}
	}
	return nil
}

// validateExternal checks the settings of external mode (a NATS URL). The
// embedded server's settings are not used then; those that secure it are
// refused, since ignoring them would leave a false sense of security.
func (c *serverConfig) validateExternal() error {
	if c.DataDir != "" {
		return c.bad(&c.DataDir, "is the embedded NATS server's storage, but %s is set: run JetStream in your NATS server and set %s=jetstream", c.name(&c.NATSURL), c.name(&c.State).env)
	}
	if c.EmbeddedTenants != "" {
		return c.bad(&c.EmbeddedTenants, "is set but so is %s: configure the accounts in your NATS server (see deploy/tenants.conf) and set %s", c.name(&c.NATSURL), c.name(&c.Tenants))
	}
	for _, f := range []*string{&c.EmbeddedTLSCert, &c.EmbeddedTLSKey, &c.EmbeddedTLSCA, &c.EmbeddedUser,
		&c.EmbeddedPassword, &c.EmbeddedToken, &c.EmbeddedNkeys, &c.EmbeddedConfig} {
		if *f != "" {
			return c.bad(f, "secures the embedded NATS server, but %s is set: configure TLS and users in your NATS server", c.name(&c.NATSURL))
		}
	}
	if err := checkNATSURLs(c.NATSURL); err != nil {
		return c.bad(&c.NATSURL, "%v", err)
	}
	if c.SystemURL != "" {
		if err := checkNATSURLs(c.SystemURL); err != nil {
			return c.bad(&c.SystemURL, "%v", err)
		}
	}
	for _, creds := range []*natsCredentials{&c.App, &c.System} {
		if (creds.TLS.Cert == "") != (creds.TLS.Key == "") {
			return fmt.Errorf("%s and %s: give the TLS client certificate and key together", c.name(&creds.TLS.Cert), c.name(&creds.TLS.Key))
		}
	}
	return nil
}

// parseNATSURL parses one NATS URL as nats.go reads it: without a scheme,
// it is nats://.
func parseNATSURL(s string) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	return url.Parse(s)
}

// checkNATSURLs checks a comma-separated list of NATS URLs as nats.go
// reads them, without connecting.
// Whether a host exists is not checked: under docker compose, say, its name
// may not resolve until its container has started.
func checkNATSURLs(urls string) error {
	var websocket, other bool
	for _, raw := range strings.Split(urls, ",") {
		raw = strings.TrimSpace(raw)
		u, err := parseNATSURL(raw)
		if err != nil {
			// url's errors quote the URL, and with it any password.
			return fmt.Errorf("%q is not a URL: want nats://host:port", redactURLs(raw))
		}
		switch {
		case raw == "":
			return errors.New("empty URL in the list: want nats://host:port[,nats://host:port…]")
		case !slices.Contains([]string{"nats", "tls", "ws", "wss"}, u.Scheme): // those nats.go connects with
			return fmt.Errorf("%q: the scheme must be nats, tls, ws or wss", redactURLs(raw))
		case u.Hostname() == "":
			return fmt.Errorf("%q has no host: want nats://host:port", redactURLs(raw))
		case u.Path != "" && u.Path != "/" && !strings.HasPrefix(u.Scheme, "ws"):
			return fmt.Errorf("%q: a nats or tls URL has no path: want nats://host:port", redactURLs(raw))
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return fmt.Errorf("%q: the port must be a number from 1 to 65535", redactURLs(raw))
			}
		}
		if strings.HasPrefix(u.Scheme, "ws") {
			websocket = true
		} else {
			other = true
		}
	}
	if websocket && other {
		return errors.New("do not mix websocket (ws, wss) and nats or tls URLs in one list")
	}
	return nil
}

func runServer(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseServerConfigFrom(os.Environ(), args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ldlm: configuration: %v\n", err)
		return exitUsage
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validate checked it
	var handler slog.Handler = slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})
	if cfg.LogFormat == "json" {
		handler = slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(handler)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("ldlm stopped", "err", err)
		return 1
	}
	return 0
}

// serve runs the lock server until ctx ends.
func serve(ctx context.Context, cfg serverConfig, log *slog.Logger) error {
	metricsSrv, err := listenMetrics(cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("%w (set %s to a free host:port)", err, cfg.name(&cfg.MetricsListen))
	}
	defer metricsSrv.close(log)
	conns, err := connect(ctx, &cfg, log)
	if errors.Is(err, errStoppedWaiting) {
		log.Info("stopped while waiting for NATS")
		return nil
	}
	if err != nil {
		return err
	}
	defer conns.close()

	svcCfg := service.Config{
		Prefix:                cfg.Prefix,
		MaxNameLength:         cfg.MaxNameLength,
		MaxBodyBytes:          cfg.MaxBodyBytes,
		MaxLocks:              cfg.MaxLocks,
		MaxWaitersPerLock:     cfg.MaxWaitersPerLock,
		MaxWaitsPerConnection: cfg.MaxWaitsPerConn,
		AnonymousLockTimeout:  cfg.AnonymousLockTimeout,
		NoClearOnDisconnect:   cfg.NoClearOnDisconnect,
		SweepInterval:         cfg.SweepInterval,
		ReconnectGrace:        cfg.ReconnectGrace,
		Events:                cfg.Events,
		State:                 cfg.State,
		Replicas:              cfg.StateReplicas,
		Tenants:               cfg.Tenants || cfg.EmbeddedTenants != "",
		Version:               version(),
		Observer:              metricsSrv.observer(),
		// Nobody but this process reaches the embedded server before its
		// client port opens, below.
		Alone: conns.embedded != nil && conns.embedded.Unreachable(),
	}
	svc, err := service.Start(svcCfg, conns.app, conns.system, log)
	if err != nil {
		return err
	}
	// The embedded server's client port opens now that the service answers:
	// a client that connects finds it, where with the port open from the
	// server's start the first requests of a script or container that starts
	// with ldlm got "no responders".
	if conns.embedded != nil {
		if err := conns.embedded.Listen(); err != nil {
			svc.Stop()
			return fmt.Errorf("%w (set %s to a free host:port)", err, cfg.name(&cfg.EmbeddedListen))
		}
		log.Info("embedded NATS server ready", "url", conns.embedded.ClientURL(), "server_name", conns.embedded.Name())
	}
	metricsSrv.setService(svc)
	metricsSrv.serve(log)
	svcCfg.Alone = false // the port is open now: others may be there
	restart := func() (*service.Service, error) {
		if err := conns.closed(); err != nil {
			return nil, err
		}
		return service.Start(svcCfg, conns.app, conns.system, log)
	}
	return runService(ctx, svc, restart, metricsSrv, log)
}

// Waits between two failed starts of a new lock service after one was
// deposed: doubling from the first to the last.
const (
	restartWaitFirst = 500 * time.Millisecond
	restartWaitMax   = 15 * time.Second
)

// runService waits until ctx ends (a signal: stop, return nil) or the
// service stops by itself. A service deposed from the state stream
// (service.ErrDeposed: another instance took over, or a write was not
// acknowledged) is replaced with a new one from restart, on the same
// connections, which stands by or takes over: the process, and with it an
// embedded NATS server that may hold part of the stream's quorum, lives
// on. Failed starts are tried again after a wait that doubles up to
// restartWaitMax. Any other reason (a connection closed for good, a rival
// instance in memory mode) is returned, so that ldlm exits 1 and a
// supervisor restarts it. metricsSrv follows the service that runs.
func runService(ctx context.Context, svc *service.Service, restart func() (*service.Service, error), metricsSrv *metricsServer, log *slog.Logger) error {
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping: announcing the stop (memory state) or writing the last changes (jetstream state), then draining requests")
			svc.Stop()
			return nil
		case <-svc.Done():
		}
		svc.Stop()
		err := svc.Err()
		if !errors.Is(err, service.ErrDeposed) {
			return err
		}
		metricsSrv.setService(nil)
		log.Warn("no longer the active instance; standing by again", "err", err)
		if svc, err = startAgain(ctx, restart, log); svc == nil {
			return err // nil when ctx ended
		}
		metricsSrv.setService(svc)
	}
}

// startAgain calls restart until it gives a service, waiting between
// failed tries, or ctx ends (nil, nil), or the connections are closed for
// good (their error).
func startAgain(ctx context.Context, restart func() (*service.Service, error), log *slog.Logger) (*service.Service, error) {
	for wait := restartWaitFirst; ; wait = min(2*wait, restartWaitMax) {
		if ctx.Err() != nil {
			return nil, nil
		}
		svc, err := restart()
		switch {
		case err == nil:
			return svc, nil
		case errors.Is(err, service.ErrConnectionClosed):
			return nil, err
		}
		log.Warn("starting the lock service again failed; trying again", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			log.Info("stopped while starting the lock service again")
			return nil, nil
		case <-time.After(wait):
		}
	}
}

// connections are the service's NATS connections and, in embedded mode,
// the server they go to.
type connections struct {
	embedded *embeddednats.Server
	app      *nats.Conn
	system   *nats.Conn
}

// closed says whether a connection is closed for good (nats.go gave up
// on it): a service started on it could not work.
func (c *connections) closed() error {
	for _, nc := range []struct {
		which string
		conn  *nats.Conn
	}{{"service", c.app}, {"system account", c.system}} {
		if nc.conn != nil && nc.conn.IsClosed() {
			return fmt.Errorf("%w: the %s connection", service.ErrConnectionClosed, nc.which)
		}
	}
	return nil
}

func (c *connections) close() {
	// The service has stopped answering by now: nothing is left to drain.
	c.app.Close() // a nil *nats.Conn closes as a no-op
	c.system.Close()
	if c.embedded != nil {
		c.embedded.Shutdown()
	}
}

// connect starts the embedded server and connects to it, or connects to
// the external one, waiting for it as long as it cannot be reached (see
// dialNATS). It returns errStoppedWaiting when ctx ends while it waits.
func connect(ctx context.Context, cfg *serverConfig, log *slog.Logger) (*connections, error) {
	c := &connections{}
	if cfg.NATSURL == "" {
		// validate parsed both, so neither fails.
		tenants, _ := embeddednats.ParseTenants(cfg.EmbeddedTenants)
		nkeys, _ := embeddednats.ParseNkeys(cfg.EmbeddedNkeys)
		srv, err := embeddednats.Start(embeddednats.Config{
			Tenants:      tenants,
			Prefix:       cfg.Prefix,
			Listen:       cfg.EmbeddedListen,
			ListenLater:  true, // serve opens the port once the service answers
			ServerName:   cfg.EmbeddedServerName,
			PingInterval: cfg.EmbeddedPingInterval,
			MaxPingsOut:  cfg.EmbeddedPingMax,
			Logger:       log,
			TLSCert:      cfg.EmbeddedTLSCert,
			TLSKey:       cfg.EmbeddedTLSKey,
			TLSCA:        cfg.EmbeddedTLSCA,
			Auth: embeddednats.Auth{
				User:     cfg.EmbeddedUser,
				Password: cfg.EmbeddedPassword,
				Token:    cfg.EmbeddedToken,
				Nkeys:    nkeys,
			},
			ConfigFile: cfg.EmbeddedConfig,
			Cluster:    cfg.cluster(),
			DataDir:    cfg.DataDir,
		})
		if errors.Is(err, embeddednats.ErrListen) {
			return nil, fmt.Errorf("%w (set %s to a free host:port)", err, cfg.name(&cfg.EmbeddedListen))
		}
		if err != nil {
			return nil, err
		}
		if srv.Unprotected() {
			log.Warn(fmt.Sprintf("the embedded NATS server listens beyond this machine and lets in every client without credentials: "+
				"anyone who reaches it can take, release and administer every lock. Set %s and %s, %s, %s or %s (README: Embedded security)",
				cfg.name(&cfg.EmbeddedUser), cfg.name(&cfg.EmbeddedPassword), cfg.name(&cfg.EmbeddedToken), cfg.name(&cfg.EmbeddedNkeys), cfg.name(&cfg.EmbeddedConfig)),
				"listen", cfg.EmbeddedListen)
		}
		c.embedded = srv
		if c.app, err = srv.ConnectApp(); err == nil {
			c.system, err = srv.ConnectSystem()
		}
		if err != nil {
			c.close()
			return nil, fmt.Errorf("connecting to the embedded NATS server: %w", err)
		}
		return c, nil
	}

	base := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(natsReconnectWait),
		// Forever means forever: by default nats.go closes the connection
		// for good when a server refuses its credentials twice in a row
		// (a password rotated on the server first), and the service would
		// live on without answering.
		nats.IgnoreAuthErrorAbort(),
		// Our own Close at shutdown is no news: no "disconnected" line.
		nats.NoCallbacksAfterClientClose(),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil { // closed without a fault
				log.Info("disconnected from NATS")
				return
			}
			log.Warn("disconnected from NATS", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected to NATS", "url", redactURLs(nc.ConnectedUrl())) }),
		// Permission violations and slow consumers go to the log, not to
		// nats.go's default of a bare line on stderr.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Error("NATS error", "subscription", sub.Subject, "err", err)
				return
			}
			log.Error("NATS error", "err", err)
		}),
	}
	var err error
	c.app, err = dialNATS(ctx, cfg.NATSURL, "application", cfg.name(&cfg.NATSURL).String()+" and "+cfg.group(&cfg.App),
		cfg.App, append(base, nats.Name("ldlm"), nats.NoEcho()), log)
	// Without a system account connection, service.Start warns that it
	// relies on sweeps alone.
	if err == nil && (!cfg.System.isZero() || cfg.SystemURL != "") {
		c.system, err = dialNATS(ctx, cmp.Or(cfg.SystemURL, cfg.NATSURL), "system account", cfg.name(&cfg.SystemURL).String()+" and "+cfg.group(&cfg.System),
			cfg.System, append(base, nats.Name("ldlm-system")), log)
	}
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// natsReconnectWait is the pause between two attempts to reach NATS, at
// start as after a disconnect.
const natsReconnectWait = time.Second

// errStoppedWaiting: ctx ended while dialNATS waited for a server.
var errStoppedWaiting = errors.New("stopped while waiting for NATS")

// dialNATS connects to urls, trying again every natsReconnectWait for as
// long as no server can be reached (refused, unreachable, a name that does
// not resolve yet): under docker compose the NATS server may start after
// ldlm. Each failed attempt is logged. Any other failure — credentials,
// TLS, a missing file — is configuration that another attempt cannot fix,
// and is returned at once. what ("application" or "system account") names
// the connection in messages, settings the settings to check; creds are
// added to opts.
//
// nats.RetryOnFailedConnect would retry in the background instead, but it
// retries refused credentials just as silently, and it returns a
// connection that is not connected yet, which the service cannot start on:
// it asks the servers for its rivals and its owners' connections first.
func dialNATS(ctx context.Context, urls, what, settings string, creds natsCredentials, opts []nats.Option, log *slog.Logger) (*nats.Conn, error) {
	credOpts, err := creds.options()
	if err != nil {
		return nil, err
	}
	opts = append(opts, credOpts...)
	for attempt := 1; ; attempt++ {
		nc, err := nats.Connect(urls, opts...)
		if err == nil {
			if attempt > 1 {
				log.Info("connected to NATS", "connection", what, "url", redactURLs(nc.ConnectedUrl()), "attempts", attempt)
			}
			return nc, nil
		}
		if !unreachable(err) {
			return nil, fmt.Errorf("connecting to NATS (%s connection) at %s: %w; check %s", what, redactURLs(urls), err, settings)
		}
		log.Warn("NATS not reachable, trying again", "connection", what, "url", redactURLs(urls),
			"attempt", attempt, "retry_in", natsReconnectWait, "err", err)
		select {
		case <-ctx.Done():
			return nil, errStoppedWaiting
		case <-time.After(natsReconnectWait):
		}
	}
}

// unreachable tells the errors of nats.Connect that mean no server could be
// reached at all from those where one answered and refused.
func unreachable(err error) bool {
	// nats.go reports a refused TCP connection as ErrNoServers, and so a
	// server that accepts and at once closes (as docker's port proxy does
	// while the container starts).
	if errors.Is(err, nats.ErrNoServers) {
		return true
	}
	// Any other failure to open the TCP connection: no route, a timeout, a
	// host name that does not resolve.
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}

// redactURLs hides the credentials of a comma-separated list of NATS URLs
// (nats://user:password@host or nats://token@host) so it can be logged.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		u, err := parseNATSURL(strings.TrimSpace(p))
		switch {
		case err != nil && strings.Contains(p, "@"):
			parts[i] = "(unparsable URL)"
		case err == nil && u.User != nil:
			u.User = url.User("REDACTED")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}
