package main

import (
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
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// serverConfig is every setting of `ldlm server`. Each comes from its LDLM_*
// variable, then from the flag of the same name, which wins.
type serverConfig struct {
	NATSURL string `env:"LDLM_NATS_URL"`

	EmbeddedListen     string `env:"LDLM_EMBEDDED_LISTEN" envDefault:"127.0.0.1:4222"`
	EmbeddedServerName string `env:"LDLM_EMBEDDED_SERVER_NAME" envDefault:"ldlm"`
	// The defaults must equal embeddednats.DefaultPingInterval and
	// DefaultMaxPingsOut (a test checks).
	EmbeddedPingInterval time.Duration `env:"LDLM_EMBEDDED_PING_INTERVAL" envDefault:"15s"`
	EmbeddedPingMax      int           `env:"LDLM_EMBEDDED_PING_MAX" envDefault:"3"`
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
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}

// validate checks what can be checked without reading the files; envPrefix
// names the variables in the message.
func (c natsCredentials) validate(envPrefix string) error {
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("TLS client certificate and key (%sTLS_CERT, %sTLS_KEY) must be given together", envPrefix, envPrefix)
	}
	return nil
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

const serverUsage = `Usage: ldlm server [flags]

Runs the lock server. Every setting is a flag and an LDLM_* variable; the
flag wins. Bad configuration prints one line and exits with status 2.

`

// renamedVars are variables of earlier versions, which would otherwise be
// ignored without a word; their flags fail as unknown flags.
var renamedVars = map[string]string{
	"LDLM_EMBEDDED_MAX_PINGS_OUT": "LDLM_EMBEDDED_PING_MAX",
}

// parseServerConfig reads the process environment, then the flags.
func parseServerConfig(args []string, stderr io.Writer) (serverConfig, error) {
	return parseServerConfigFrom(os.Environ(), args, stderr)
}

// parseServerConfigFrom reads the LDLM_* variables of environ ("KEY=value"
// entries, as os.Environ gives them), then the flags, and validates the
// result: every error it returns is bad configuration.
func parseServerConfigFrom(environ, args []string, stderr io.Writer) (serverConfig, error) {
	var cfg serverConfig
	vars := env.ToMap(environ)
	for old, now := range renamedVars {
		if _, ok := vars[old]; ok {
			return cfg, fmt.Errorf("%s is now called %s: rename it", old, now)
		}
	}
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: vars}); err != nil {
		return cfg, envError(err, vars)
	}
	fs := flag.NewFlagSet("ldlm server", flag.ContinueOnError)
	// A bad flag is reported by runServer in one line; only -help lists
	// the flags.
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS server URL(s), comma separated; while none can be reached at start, ldlm waits and tries again every second; empty runs an embedded NATS server (env LDLM_NATS_URL)")
	fs.StringVar(&cfg.EmbeddedListen, "embedded-listen", cfg.EmbeddedListen, "host:port of the embedded NATS server's client port (env LDLM_EMBEDDED_LISTEN)")
	fs.StringVar(&cfg.EmbeddedServerName, "embedded-server-name", cfg.EmbeddedServerName, "name of the embedded NATS server (env LDLM_EMBEDDED_SERVER_NAME)")
	fs.DurationVar(&cfg.EmbeddedPingInterval, "embedded-ping-interval", cfg.EmbeddedPingInterval, "how often the embedded NATS server pings a quiet client. A client that vanished without closing its socket (frozen VM, cut cable, stopped process) keeps its locks until ping max pings go unanswered: at most interval x (ping max + 1), a minute with the defaults (env LDLM_EMBEDDED_PING_INTERVAL)")
	fs.IntVar(&cfg.EmbeddedPingMax, "embedded-ping-max", cfg.EmbeddedPingMax, "unanswered pings after which the embedded NATS server drops a client, which frees its locks (env LDLM_EMBEDDED_PING_MAX)")
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
			fmt.Fprint(stderr, serverUsage)
			fs.PrintDefaults()
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return cfg, cfg.validate()
}

// envError rewrites the errors of env.Parse, which name the Go struct
// field ("parse error on field \"SweepInterval\" of type ..."), to name
// the variable and its value: `LDLM_SWEEP_INTERVAL: "abc" is not a
// duration, e.g. 30s, 2m or 1h30m`. Several bad variables give one line.
func envError(err error, vars map[string]string) error {
	errs := []error{err}
	var agg env.AggregateError
	if errors.As(err, &agg) {
		errs = agg.Errors
	}
	keys := envKeysByField()
	msgs := make([]string, 0, len(errs))
	for _, e := range errs {
		var pe env.ParseError
		if errors.As(e, &pe) && keys[pe.Name] != "" {
			key := keys[pe.Name]
			msgs = append(msgs, fmt.Sprintf("%s: %q is not %s", key, vars[key], describeType(pe.Type, pe.Err)))
			continue
		}
		msgs = append(msgs, e.Error())
	}
	return errors.New(strings.Join(msgs, "; "))
}

// envKeysByField maps the fields of serverConfig that env can fail to
// parse (every field that is not a string: they are all at the top level)
// to their variable.
func envKeysByField() map[string]string {
	keys := map[string]string{}
	typ := reflect.TypeFor[serverConfig]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if tag, ok := f.Tag.Lookup("env"); ok {
			keys[f.Name] = strings.Split(tag, ",")[0]
		}
	}
	return keys
}

// describeType says what a valid value of a setting of type t looks like.
func describeType(t reflect.Type, err error) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "a duration, e.g. 30s, 2m or 1h30m"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Int && errors.Is(err, strconv.ErrRange):
		return "a whole number in range"
	case t.Kind() == reflect.Int:
		return "a whole number"
	}
	return "valid: " + err.Error()
}

// validate reports the first setting that cannot work, in one line that
// names its variable and flag and says what would. It checks everything
// that can be checked without the network or the file system, so that bad
// configuration stops ldlm with exit status 2 before anything starts;
// whatever fails later is a runtime failure (exit status 1).
func (c serverConfig) validate() error {
	switch {
	case c.Prefix == "" || strings.ContainsAny(c.Prefix, " \t\r\n*>") || strings.HasPrefix(c.Prefix, ".") || strings.HasSuffix(c.Prefix, ".") || strings.Contains(c.Prefix, ".."):
		return fmt.Errorf("subject prefix (LDLM_SUBJECT_PREFIX, --subject-prefix) %q is not a valid NATS subject prefix: use dot-separated tokens without spaces, '*' or '>', e.g. ldlm or team.locks", c.Prefix)
	case c.MaxNameLength < 1:
		return fmt.Errorf("max name length (LDLM_MAX_NAME_LENGTH, --max-name-length) must be at least 1, got %d", c.MaxNameLength)
	case c.MaxBodyBytes < 1:
		return fmt.Errorf("max body bytes (LDLM_MAX_BODY_BYTES, --max-body-bytes) must be at least 1, got %d", c.MaxBodyBytes)
	case !validLimit(c.MaxLocks):
		return fmt.Errorf("max locks (LDLM_MAX_LOCKS, --max-locks) must be at least 1, or -1 for no limit; got %d", c.MaxLocks)
	case !validLimit(c.MaxWaitersPerLock):
		return fmt.Errorf("max waiters per lock (LDLM_MAX_WAITERS_PER_LOCK, --max-waiters-per-lock) must be at least 1, or -1 for no limit; got %d", c.MaxWaitersPerLock)
	case !validLimit(c.MaxWaitsPerConn):
		return fmt.Errorf("max waits per connection (LDLM_MAX_WAITS_PER_CONNECTION, --max-waits-per-connection) must be at least 1, or -1 for no limit; got %d", c.MaxWaitsPerConn)
	case c.AnonymousLockTimeout <= 0 || c.AnonymousLockTimeout > subjects.MaxTimeoutSeconds*time.Second:
		return fmt.Errorf("anonymous lock timeout (LDLM_ANONYMOUS_LOCK_TIMEOUT, --anonymous-lock-timeout) must be positive and at most a year (%s), got %s", subjects.MaxTimeoutSeconds*time.Second, c.AnonymousLockTimeout)
	case c.SweepInterval == 0:
		return errors.New("sweep interval (LDLM_SWEEP_INTERVAL, --sweep-interval) must not be 0: give a duration such as 30s, or a negative one to sweep only at start and after reconnects")
	case c.LogFormat != "text" && c.LogFormat != "json":
		return fmt.Errorf("log format (LDLM_LOG_FORMAT, --log-format) must be text or json, got %q", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.MetricsListen != "" {
		if _, _, err := embeddednats.ParseListen(c.MetricsListen); err != nil {
			return fmt.Errorf("metrics (LDLM_METRICS_LISTEN, --metrics-listen): %w", err)
		}
	}
	if c.NATSURL == "" {
		return c.validateEmbedded()
	}
	return c.validateExternal()
}

// validLimit: a limit is positive, or -1 for none.
func validLimit(n int) bool { return n >= 1 || n == -1 }

// validateEmbedded checks the settings of embedded mode (no NATS URL).
func (c serverConfig) validateEmbedded() error {
	switch {
	case !c.App.isZero() || !c.System.isZero() || c.SystemURL != "":
		return errors.New("NATS credentials are set but no NATS URL: set LDLM_NATS_URL, or unset the credentials to run the embedded server")
	case strings.ContainsAny(c.EmbeddedServerName, " \t\r\n"):
		return fmt.Errorf("embedded server name (LDLM_EMBEDDED_SERVER_NAME, --embedded-server-name) %q must not contain spaces", c.EmbeddedServerName)
	case c.EmbeddedPingInterval <= 0:
		return fmt.Errorf("embedded ping interval (LDLM_EMBEDDED_PING_INTERVAL, --embedded-ping-interval) must be positive, e.g. 15s; got %s", c.EmbeddedPingInterval)
	case c.EmbeddedPingMax < 1:
		return fmt.Errorf("embedded ping max (LDLM_EMBEDDED_PING_MAX, --embedded-ping-max) must be at least 1, got %d", c.EmbeddedPingMax)
	}
	if c.EmbeddedListen != "" {
		if _, _, err := embeddednats.ParseListen(c.EmbeddedListen); err != nil {
			return fmt.Errorf("embedded NATS (LDLM_EMBEDDED_LISTEN, --embedded-listen): %w", err)
		}
	}
	tenants, err := embeddednats.ParseTenants(c.EmbeddedTenants)
	switch {
	case err != nil:
		return fmt.Errorf("embedded tenants (LDLM_EMBEDDED_TENANTS, --embedded-tenants): %w", err)
	case len(tenants) == 0 && strings.TrimSpace(c.EmbeddedTenants) != "":
		return fmt.Errorf("embedded tenants (LDLM_EMBEDDED_TENANTS, --embedded-tenants) %q name no tenant: want ACCOUNT:USER:PASSWORD,…", c.EmbeddedTenants)
	case c.Tenants && len(tenants) == 0:
		return errors.New("tenants (LDLM_TENANTS, --tenants) need tenant accounts: set LDLM_EMBEDDED_TENANTS (or LDLM_NATS_URL for an external server)")
	}
	return nil
}

// validateExternal checks the settings of external mode (a NATS URL).
func (c serverConfig) validateExternal() error {
	if c.EmbeddedTenants != "" {
		return errors.New("embedded tenants are set but so is a NATS URL: configure the accounts in your NATS server (see deploy/tenants.conf) and set LDLM_TENANTS=true")
	}
	if err := checkNATSURLs(c.NATSURL); err != nil {
		return fmt.Errorf("NATS URL (LDLM_NATS_URL, --nats-url): %w", err)
	}
	if c.SystemURL != "" {
		if err := checkNATSURLs(c.SystemURL); err != nil {
			return fmt.Errorf("system URL (LDLM_SYSTEM_URL, --system-url): %w", err)
		}
	}
	if err := c.App.validate("LDLM_NATS_"); err != nil {
		return err
	}
	return c.System.validate("LDLM_SYSTEM_")
}

// natsSchemes are the URL schemes nats.go connects with.
var natsSchemes = []string{"nats", "tls", "ws", "wss"}

// checkNATSURLs checks a comma-separated list of NATS URLs as nats.go
// reads them (a URL without a scheme is nats://), without connecting.
// Whether a host exists is not checked: under docker compose, say, its name
// may not resolve until its container has started.
func checkNATSURLs(urls string) error {
	var websocket, other bool
	for _, raw := range strings.Split(urls, ",") {
		raw = strings.TrimSpace(raw)
		s := raw
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err != nil {
			// url's errors quote the URL, and with it any password.
			return fmt.Errorf("%q is not a URL: want nats://host:port", redactURLs(raw))
		}
		switch {
		case raw == "":
			return errors.New("empty URL in the list: want nats://host:port[,nats://host:port…]")
		case !slices.Contains(natsSchemes, u.Scheme):
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

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level (LDLM_LOG_LEVEL, --log-level) must be debug, info, warn or error, got %q", s)
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
	conns, err := connect(ctx, cfg, log)
	if errors.Is(err, errStoppedWaiting) {
		log.Info("stopped while waiting for NATS")
		return nil
	}
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
	metricsSrv.serve(svc.Engine().Stats, svc.Err, log)
	return runService(ctx, svc, log)
}

// runService waits until ctx ends (a signal: stop, return nil) or the
// service stops by itself (its connection closed for good, or a rival
// instance: return why, so that ldlm exits 1 and a supervisor restarts it).
func runService(ctx context.Context, svc *service.Service, log *slog.Logger) error {
	select {
	case <-ctx.Done():
		log.Info("stopping: announcing the stop, then draining requests")
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

// connect starts the embedded server and connects to it, or connects to
// the external one, waiting for it as long as it cannot be reached (see
// dialNATS). It returns errStoppedWaiting when ctx ends while it waits.
func connect(ctx context.Context, cfg serverConfig, log *slog.Logger) (*connections, error) {
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
			MaxPingsOut:  cfg.EmbeddedPingMax,
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
	appOpts, err := cfg.App.options()
	if err != nil {
		return nil, err
	}
	c.app, err = dialNATS(ctx, cfg.NATSURL, "application", "LDLM_NATS_URL and the LDLM_NATS_* credentials", append(append(base, nats.Name("ldlm"), nats.NoEcho()), appOpts...), log)
	if err != nil {
		return nil, err
	}
	if cfg.System.isZero() && cfg.SystemURL == "" {
		return c, nil // service.Start warns that it relies on sweeps alone
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
	c.system, err = dialNATS(ctx, sysURL, "system account", "LDLM_SYSTEM_URL and the LDLM_SYSTEM_* credentials", append(append(base, nats.Name("ldlm-system")), sysOpts...), log)
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
// the connection in messages, settings the settings to check.
//
// nats.RetryOnFailedConnect would retry in the background instead, but it
// retries refused credentials just as silently, and it returns a
// connection that is not connected yet, which the service cannot start on:
// it asks the servers for its rivals and its owners' connections first.
func dialNATS(ctx context.Context, urls, what, settings string, opts []nats.Option, log *slog.Logger) (*nats.Conn, error) {
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
