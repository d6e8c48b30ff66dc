package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/service"
)

// serverConfig is every setting of `ldlm server`. Each comes from its LDLM_*
// variable, then from the flag of the same name, which wins.
type serverConfig struct {
	NATSURL string `env:"LDLM_NATS_URL"`

	EmbeddedListen       string        `env:"LDLM_EMBEDDED_LISTEN" envDefault:"127.0.0.1:4222"`
	EmbeddedServerName   string        `env:"LDLM_EMBEDDED_SERVER_NAME" envDefault:"ldlm"`
	EmbeddedPingInterval time.Duration `env:"LDLM_EMBEDDED_PING_INTERVAL" envDefault:"2m"`
	EmbeddedMaxPingsOut  int           `env:"LDLM_EMBEDDED_MAX_PINGS_OUT" envDefault:"2"`
	EmbeddedTenants      string        `env:"LDLM_EMBEDDED_TENANTS"`
	Tenants              bool          `env:"LDLM_TENANTS" envDefault:"false"`

	Prefix               string        `env:"LDLM_SUBJECT_PREFIX" envDefault:"ldlm"`
	MaxNameLength        int           `env:"LDLM_MAX_NAME_LENGTH" envDefault:"1024"`
	MaxBodyBytes         int           `env:"LDLM_MAX_BODY_BYTES" envDefault:"65536"`
	MaxLocks             int           `env:"LDLM_MAX_LOCKS" envDefault:"1000000"`
	MaxWaitersPerLock    int           `env:"LDLM_MAX_WAITERS_PER_LOCK" envDefault:"100000"`
	MaxWaitsPerConn      int           `env:"LDLM_MAX_WAITS_PER_CONNECTION" envDefault:"10000"`
	AnonymousLockTimeout time.Duration `env:"LDLM_ANONYMOUS_LOCK_TIMEOUT" envDefault:"60s"`
	NoClearOnDisconnect  bool          `env:"LDLM_NO_CLEAR_ON_DISCONNECT" envDefault:"false"`
	SweepInterval        time.Duration `env:"LDLM_SWEEP_INTERVAL" envDefault:"30s"`
	Events               bool          `env:"LDLM_EVENTS" envDefault:"false"`
	MetricsListen        string        `env:"LDLM_METRICS_LISTEN"`

	LogLevel  string `env:"LDLM_LOG_LEVEL" envDefault:"info"`
	LogFormat string `env:"LDLM_LOG_FORMAT" envDefault:"text"`

	App    natsCredentials `envPrefix:"LDLM_NATS_"`
	System natsCredentials `envPrefix:"LDLM_SYSTEM_"`
	// SystemURL is where the system account connection goes; empty: NATSURL.
	SystemURL string `env:"LDLM_SYSTEM_URL"`
}

// natsCredentials are the ways to authenticate one connection to an
// external NATS server.
type natsCredentials struct {
	User      string `env:"USER"`
	Password  string `env:"PASSWORD"`
	Token     string `env:"TOKEN"`
	CredsFile string `env:"CREDS"`
	NKeyFile  string `env:"NKEY"`
	TLSCA     string `env:"TLS_CA"`
	TLSCert   string `env:"TLS_CERT"`
	TLSKey    string `env:"TLS_KEY"`
}

func (c natsCredentials) isZero() bool { return c == natsCredentials{} }

func (c natsCredentials) options() ([]nats.Option, error) {
	var opts []nats.Option
	if c.User != "" || c.Password != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
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
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, errors.New("TLS client certificate and key must be given together")
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}

func (c *natsCredentials) flags(fs *flag.FlagSet, flagPrefix, envPrefix, what string) {
	fs.StringVar(&c.User, flagPrefix+"user", c.User, what+" user (env "+envPrefix+"USER)")
	fs.StringVar(&c.Password, flagPrefix+"password", c.Password, what+" password (env "+envPrefix+"PASSWORD)")
	fs.StringVar(&c.Token, flagPrefix+"token", c.Token, what+" token (env "+envPrefix+"TOKEN)")
	fs.StringVar(&c.CredsFile, flagPrefix+"creds", c.CredsFile, what+" credentials file (env "+envPrefix+"CREDS)")
	fs.StringVar(&c.NKeyFile, flagPrefix+"nkey", c.NKeyFile, what+" nkey seed file (env "+envPrefix+"NKEY)")
	fs.StringVar(&c.TLSCA, flagPrefix+"tls-ca", c.TLSCA, what+" TLS CA file to verify the server (env "+envPrefix+"TLS_CA)")
	fs.StringVar(&c.TLSCert, flagPrefix+"tls-cert", c.TLSCert, what+" TLS client certificate file (env "+envPrefix+"TLS_CERT)")
	fs.StringVar(&c.TLSKey, flagPrefix+"tls-key", c.TLSKey, what+" TLS client key file (env "+envPrefix+"TLS_KEY)")
}

// parseServerConfig reads the environment, then the flags.
func parseServerConfig(args []string, stderr io.Writer) (serverConfig, error) {
	var cfg serverConfig
	if err := env.Parse(&cfg); err != nil {
		return cfg, err
	}
	fs := flag.NewFlagSet("ldlm server", flag.ContinueOnError)
	// A bad flag is reported by runServer in one line; only -help lists
	// the flags.
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS server URL(s), comma separated; empty runs an embedded NATS server (env LDLM_NATS_URL)")
	fs.StringVar(&cfg.EmbeddedListen, "embedded-listen", cfg.EmbeddedListen, "host:port of the embedded NATS server's client port (env LDLM_EMBEDDED_LISTEN)")
	fs.StringVar(&cfg.EmbeddedServerName, "embedded-server-name", cfg.EmbeddedServerName, "name of the embedded NATS server (env LDLM_EMBEDDED_SERVER_NAME)")
	fs.DurationVar(&cfg.EmbeddedPingInterval, "embedded-ping-interval", cfg.EmbeddedPingInterval, "embedded NATS ping interval; with max pings out it bounds how long a silently vanished client keeps its locks (env LDLM_EMBEDDED_PING_INTERVAL)")
	fs.IntVar(&cfg.EmbeddedMaxPingsOut, "embedded-max-pings-out", cfg.EmbeddedMaxPingsOut, "embedded NATS unanswered pings before a client is dropped (env LDLM_EMBEDDED_MAX_PINGS_OUT)")
	fs.StringVar(&cfg.EmbeddedTenants, "embedded-tenants", cfg.EmbeddedTenants, "ACCOUNT:USER:PASSWORD,… : run the embedded server with one account and lock namespace per tenant (env LDLM_EMBEDDED_TENANTS)")
	fs.BoolVar(&cfg.Tenants, "tenants", cfg.Tenants, "one lock namespace per NATS account; requests must come through account imports with share: true (env LDLM_TENANTS)")
	fs.StringVar(&cfg.Prefix, "subject-prefix", cfg.Prefix, "first token of every lock subject (env LDLM_SUBJECT_PREFIX)")
	fs.IntVar(&cfg.MaxNameLength, "max-name-length", cfg.MaxNameLength, "longest lock name in bytes (env LDLM_MAX_NAME_LENGTH)")
	fs.IntVar(&cfg.MaxBodyBytes, "max-body-bytes", cfg.MaxBodyBytes, "largest request body in bytes (env LDLM_MAX_BODY_BYTES)")
	fs.IntVar(&cfg.MaxLocks, "max-locks", cfg.MaxLocks, "most locks held or waited for at once; -1: no limit (env LDLM_MAX_LOCKS)")
	fs.IntVar(&cfg.MaxWaitersPerLock, "max-waiters-per-lock", cfg.MaxWaitersPerLock, "most waiters on one lock; -1: no limit (env LDLM_MAX_WAITERS_PER_LOCK)")
	fs.IntVar(&cfg.MaxWaitsPerConn, "max-waits-per-connection", cfg.MaxWaitsPerConn, "most waits of one connection; -1: no limit (env LDLM_MAX_WAITS_PER_CONNECTION)")
	fs.DurationVar(&cfg.AnonymousLockTimeout, "anonymous-lock-timeout", cfg.AnonymousLockTimeout, "lock timeout of locks that name none and belong to no connection (env LDLM_ANONYMOUS_LOCK_TIMEOUT)")
	fs.BoolVar(&cfg.NoClearOnDisconnect, "no-clear-on-disconnect", cfg.NoClearOnDisconnect, "keep locks when their connection closes; they then rely on timeouts (env LDLM_NO_CLEAR_ON_DISCONNECT)")
	fs.DurationVar(&cfg.SweepInterval, "sweep-interval", cfg.SweepInterval, "how often to compare lock owners with live connections; negative: only at start and after reconnects (env LDLM_SWEEP_INTERVAL)")
	fs.BoolVar(&cfg.Events, "events", cfg.Events, "publish every grant, release and end of a wait on PREFIX.events.KIND.NAME (env LDLM_EVENTS)")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", cfg.MetricsListen, "host:port to serve Prometheus metrics on, at /metrics; empty: no metrics (env LDLM_METRICS_LISTEN)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error (env LDLM_LOG_LEVEL)")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "text or json (env LDLM_LOG_FORMAT)")
	cfg.App.flags(fs, "nats-", "LDLM_NATS_", "external NATS:")
	fs.StringVar(&cfg.SystemURL, "system-url", cfg.SystemURL, "NATS URL for the system account connection; empty: --nats-url (env LDLM_SYSTEM_URL)")
	cfg.System.flags(fs, "system-", "LDLM_SYSTEM_", "system account:")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintf(stderr, "Usage of %s:\n", fs.Name())
			fs.PrintDefaults()
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return cfg, cfg.validate()
}

func (c serverConfig) validate() error {
	switch {
	case c.Prefix == "" || strings.ContainsAny(c.Prefix, " \t*>") || strings.HasPrefix(c.Prefix, ".") || strings.HasSuffix(c.Prefix, ".") || strings.Contains(c.Prefix, ".."):
		return fmt.Errorf("subject prefix %q is not a valid NATS subject prefix", c.Prefix)
	case c.MaxNameLength < 1:
		return fmt.Errorf("max name length must be at least 1, got %d", c.MaxNameLength)
	case c.MaxBodyBytes < 1:
		return fmt.Errorf("max body bytes must be at least 1, got %d", c.MaxBodyBytes)
	case c.MaxLocks == 0 || c.MaxWaitersPerLock == 0 || c.MaxWaitsPerConn == 0:
		return errors.New("max locks, waiters per lock and waits per connection must be positive, or -1 for no limit")
	case c.AnonymousLockTimeout <= 0:
		return fmt.Errorf("anonymous lock timeout must be positive, got %s", c.AnonymousLockTimeout)
	case c.SweepInterval == 0:
		return errors.New("sweep interval must not be 0 (use a negative value to sweep only at start and after reconnects)")
	case c.EmbeddedPingInterval <= 0 || c.EmbeddedMaxPingsOut < 1:
		return errors.New("embedded ping interval must be positive and max pings out at least 1")
	case c.NATSURL == "" && (!c.App.isZero() || !c.System.isZero() || c.SystemURL != ""):
		return errors.New("NATS credentials are set but no NATS URL: set LDLM_NATS_URL, or unset the credentials to run the embedded server")
	}
	if c.EmbeddedTenants != "" {
		if c.NATSURL != "" {
			return errors.New("embedded tenants are set but so is a NATS URL: configure the accounts in your NATS server (see deploy/tenants.conf) and set LDLM_TENANTS=true")
		}
		if _, err := embeddednats.ParseTenants(c.EmbeddedTenants); err != nil {
			return err
		}
	} else if c.Tenants && c.NATSURL == "" {
		return errors.New("tenants need tenant accounts: set LDLM_EMBEDDED_TENANTS (or LDLM_NATS_URL for an external server)")
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("log format must be text or json, got %q", c.LogFormat)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level must be debug, info, warn or error, got %q", s)
	}
	return l, nil
}

func newLogger(cfg serverConfig, w io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func runServer(args []string, _, stderr io.Writer) int {
	cfg, err := parseServerConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ldlm: configuration: %v\n", err)
		return exitUsage
	}
	log := newLogger(cfg, stderr)
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
		return err
	}
	defer metricsSrv.close(log)
	conns, err := connect(cfg, log)
	if err != nil {
		return err
	}
	defer conns.close()

	svc, err := service.Start(service.Config{
		Prefix:                cfg.Prefix,
		MaxNameLength:         cfg.MaxNameLength,
		MaxBodyBytes:          cfg.MaxBodyBytes,
		MaxLocks:              cfg.MaxLocks,
		MaxWaitersPerLock:     cfg.MaxWaitersPerLock,
		MaxWaitsPerConnection: cfg.MaxWaitsPerConn,
		AnonymousLockTimeout:  cfg.AnonymousLockTimeout,
		NoClearOnDisconnect:   cfg.NoClearOnDisconnect,
		SweepInterval:         cfg.SweepInterval,
		Events:                cfg.Events,
		Tenants:               cfg.Tenants || cfg.EmbeddedTenants != "",
		Version:               version(),
		Observer:              metricsSrv.observer(),
	}, conns.app, conns.system, log)
	if err != nil {
		return err
	}
	metricsSrv.serve(svc.Engine().Stats, log)
	select {
	case <-ctx.Done():
		log.Info("stopping: draining requests")
		svc.Stop()
		return nil
	case <-svc.Done():
		svc.Stop()
		return svc.Err()
	}
}

// connections are the service's NATS connections and, in embedded mode,
// the server they go to.
type connections struct {
	embedded *embeddednats.Server
	app      *nats.Conn
	system   *nats.Conn
}

func (c *connections) close() {
	// The service has stopped answering by now: nothing is left to drain.
	if c.app != nil {
		c.app.Close()
	}
	if c.system != nil {
		c.system.Close()
	}
	if c.embedded != nil {
		c.embedded.Shutdown()
	}
}

func connect(cfg serverConfig, log *slog.Logger) (*connections, error) {
	c := &connections{}
	if cfg.NATSURL == "" {
		tenants, err := embeddednats.ParseTenants(cfg.EmbeddedTenants)
		if err != nil {
			return nil, err
		}
		srv, err := embeddednats.Start(embeddednats.Config{
			Tenants:      tenants,
			Prefix:       cfg.Prefix,
			Listen:       cfg.EmbeddedListen,
			ServerName:   cfg.EmbeddedServerName,
			PingInterval: cfg.EmbeddedPingInterval,
			MaxPingsOut:  cfg.EmbeddedMaxPingsOut,
			Logger:       log,
		})
		if err != nil {
			return nil, err
		}
		c.embedded = srv
		if c.app, err = srv.ConnectApp(); err == nil {
			c.system, err = srv.ConnectSystem()
		}
		if err != nil {
			c.close()
			return nil, fmt.Errorf("connecting to the embedded NATS server: %w", err)
		}
		log.Info("embedded NATS server ready", "url", srv.ClientURL(), "server_name", srv.Name())
		return c, nil
	}

	base := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		// Forever means forever: by default nats.go closes the connection
		// for good when a server refuses its credentials twice in a row
		// (a password rotated on the server first), and the service would
		// live on without answering.
		nats.IgnoreAuthErrorAbort(),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("disconnected from NATS", "err", err) }),
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
	appOpts, err := cfg.App.options()
	if err != nil {
		return nil, err
	}
	c.app, err = nats.Connect(cfg.NATSURL, append(append(base, nats.Name("ldlm")), appOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", redactURLs(cfg.NATSURL), err)
	}
	if cfg.System.isZero() && cfg.SystemURL == "" {
		log.Warn("no LDLM_SYSTEM_* credentials: not following disconnect advisories")
		return c, nil
	}
	sysOpts, err := cfg.System.options()
	if err != nil {
		c.close()
		return nil, err
	}
	sysURL := cfg.SystemURL
	if sysURL == "" {
		sysURL = cfg.NATSURL
	}
	c.system, err = nats.Connect(sysURL, append(append(base, nats.Name("ldlm-system")), sysOpts...)...)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("connecting to NATS system account at %s: %w", redactURLs(sysURL), err)
	}
	return c, nil
}

// redactURLs hides the credentials of a comma-separated list of NATS URLs
// (nats://user:password@host or nats://token@host) so it can be logged.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		s := strings.TrimSpace(p)
		if !strings.Contains(s, "://") {
			s = "nats://" + s // as nats.go reads a URL without a scheme
		}
		u, err := url.Parse(s)
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
