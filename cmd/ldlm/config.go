package main

// The settings of `ldlm server`, each declared once, as a field of
// serverConfig: its env tag names the variable, envDefault gives the
// default and help the text of --help; envPrefix prefixes the variables of
// a nested struct. The variables, the flags, the help, the README table's
// test and every message about a setting come from these tags.

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// serverConfig is every setting of `ldlm server`. Each comes from its LDLM_*
// variable, then from the flag of the same name (LDLM_MAX_LOCKS,
// --max-locks), which wins.
type serverConfig struct {
	NATSURL string `env:"LDLM_NATS_URL" help:"external NATS server URL(s), comma separated; while none can be reached at start, ldlm waits and tries again every second; empty runs the embedded NATS server"`

	EmbeddedListen     string `env:"LDLM_EMBEDDED_LISTEN" envDefault:"127.0.0.1:4222" help:"host:port of the embedded NATS server's client port, opened once the lock service answers"`
	EmbeddedServerName string `env:"LDLM_EMBEDDED_SERVER_NAME" envDefault:"ldlm" help:"name of the embedded NATS server"`
	// The defaults must equal embeddednats.DefaultPingInterval and
	// DefaultMaxPingsOut (a test checks).
	EmbeddedPingInterval  time.Duration `env:"LDLM_EMBEDDED_PING_INTERVAL" envDefault:"15s" help:"how often the embedded NATS server pings a quiet client; a client that vanished without closing its socket keeps its locks until ping max pings go unanswered: at most interval x (ping max + 1), a minute by default"`
	EmbeddedPingMax       int           `env:"LDLM_EMBEDDED_PING_MAX" envDefault:"3" help:"unanswered pings after which the embedded NATS server drops a client, which frees its locks"`
	EmbeddedTLSCert       string        `env:"LDLM_EMBEDDED_TLS_CERT" help:"certificate file (PEM) of the embedded NATS server: its clients must then use TLS"`
	EmbeddedTLSKey        string        `env:"LDLM_EMBEDDED_TLS_KEY" help:"key file (PEM) of that certificate"`
	EmbeddedTLSCA         string        `env:"LDLM_EMBEDDED_TLS_CA" help:"CA file (PEM): the embedded NATS server then requires client certificates signed by it (mutual TLS)"`
	EmbeddedUser          string        `env:"LDLM_EMBEDDED_USER" help:"user as which clients log in to the embedded NATS server, with the password below"`
	EmbeddedPassword      string        `env:"LDLM_EMBEDDED_PASSWORD" help:"that user's password, plain or a bcrypt hash (nats server passwd)"`
	EmbeddedToken         string        `env:"LDLM_EMBEDDED_TOKEN" help:"token with which clients log in to the embedded NATS server (excludes a user and nkeys)"`
	EmbeddedNkeys         string        `env:"LDLM_EMBEDDED_NKEYS" help:"public user nkeys (U...), comma separated, with which clients may log in to the embedded NATS server"`
	EmbeddedConfig        string        `env:"LDLM_EMBEDDED_CONFIG" help:"nats-server configuration file for the embedded server: accounts, users and permissions, JetStream, clustering (README: Embedded security)"`
	EmbeddedClusterListen string        `env:"LDLM_EMBEDDED_CLUSTER_LISTEN" help:"host:port on which the embedded NATS server takes routes from the other members of its NATS cluster; empty: no cluster. Each member then needs a server name of its own (default: the host name)"`
	EmbeddedClusterRoutes string        `env:"LDLM_EMBEDDED_CLUSTER_ROUTES" help:"route URLs of the cluster's members, comma separated (nats-route://host:port); a member may list itself"`
	EmbeddedClusterName   string        `env:"LDLM_EMBEDDED_CLUSTER_NAME" envDefault:"ldlm" help:"name of the embedded NATS cluster, the same on every member"`
	EmbeddedTenants       string        `env:"LDLM_EMBEDDED_TENANTS" help:"ACCOUNT:USER:PASSWORD,... : run the embedded NATS server with one account and lock namespace per tenant"`
	Tenants               bool          `env:"LDLM_TENANTS" envDefault:"false" help:"one lock namespace per NATS account; requests must come through account imports with share: true"`

	State         string `env:"LDLM_STATE" envDefault:"memory" help:"where the locks live: memory (they end with the process) or jetstream (a stream of the NATS server: locks, waiters and token order outlive restarts; docs/ha.md)"`
	StateReplicas int    `env:"LDLM_STATE_REPLICAS" envDefault:"3" help:"copies of the jetstream state, capped by the JetStream servers present (logged); 1 with LDLM_DATA_DIR"`
	DataDir       string `env:"LDLM_DATA_DIR" help:"folder of the embedded NATS server's JetStream file storage, where the lock state is kept: implies LDLM_STATE=jetstream with one replica, so locks survive a restart"`

	Prefix               string        `env:"LDLM_SUBJECT_PREFIX" envDefault:"ldlm" help:"first token of every lock subject"`
	MaxNameLength        int           `env:"LDLM_MAX_NAME_LENGTH" envDefault:"1024" help:"longest lock name in bytes"`
	MaxBodyBytes         int           `env:"LDLM_MAX_BODY_BYTES" envDefault:"65536" help:"largest request body in bytes"`
	MaxLocks             int           `env:"LDLM_MAX_LOCKS" envDefault:"1000000" help:"most locks held or waited for at once; -1: no limit"`
	MaxWaitersPerLock    int           `env:"LDLM_MAX_WAITERS_PER_LOCK" envDefault:"100000" help:"most waiters on one lock; -1: no limit"`
	MaxWaitsPerConn      int           `env:"LDLM_MAX_WAITS_PER_CONNECTION" envDefault:"10000" help:"most waits of one connection; -1: no limit"`
	AnonymousLockTimeout time.Duration `env:"LDLM_ANONYMOUS_LOCK_TIMEOUT" envDefault:"60s" help:"lock timeout of locks that name none and belong to no connection"`
	NoClearOnDisconnect  bool          `env:"LDLM_NO_CLEAR_ON_DISCONNECT" envDefault:"false" help:"keep locks when their connection closes; they then rely on timeouts"`
	SweepInterval        time.Duration `env:"LDLM_SWEEP_INTERVAL" envDefault:"30s" help:"how often to compare lock owners with live connections; negative: only at start and after reconnects"`
	ReconnectGrace       time.Duration `env:"LDLM_RECONNECT_GRACE" envDefault:"5s" help:"how long a client whose connection its NATS server cut keeps its locks while it reconnects"`
	Events               bool          `env:"LDLM_EVENTS" envDefault:"false" help:"publish every grant, release and end of a wait on PREFIX.events.KIND.NAME"`
	MetricsListen        string        `env:"LDLM_METRICS_LISTEN" help:"host:port to serve Prometheus metrics on, at /metrics; empty: no metrics"`

	LogLevel  string `env:"LDLM_LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat string `env:"LDLM_LOG_FORMAT" envDefault:"text" help:"text or json"`

	App natsCredentials `envPrefix:"LDLM_NATS_" help:"external NATS, the service's connection:"`
	// SystemURL is where the system account connection goes; empty: NATSURL.
	SystemURL string          `env:"LDLM_SYSTEM_URL" help:"NATS URL for the system account connection; empty: the external NATS URL"`
	System    natsCredentials `envPrefix:"LDLM_SYSTEM_" help:"external NATS, the system account connection:"`
}

// natsCredentials are the ways to authenticate one connection to an
// external NATS server. The client commands use them too, with the nats
// CLI's flags and variables.
type natsCredentials struct {
	User      string   `env:"USER" help:"user"`
	Password  string   `env:"PASSWORD" help:"password"`
	Token     string   `env:"TOKEN" help:"token"`
	CredsFile string   `env:"CREDS" help:"credentials file (JWT)"`
	NKeyFile  string   `env:"NKEY" help:"nkey seed file"`
	TLS       tlsFiles `envPrefix:"TLS_"`
}

// tlsFiles are the TLS files of a client connection.
type tlsFiles struct {
	CA   string `env:"CA" help:"CA file to verify the server"`
	Cert string `env:"CERT" help:"TLS client certificate file"`
	Key  string `env:"KEY" help:"TLS client key file"`
}

// setting is one field of serverConfig as its tags declare it.
type setting struct {
	env   string        // the variable, e.g. LDLM_MAX_LOCKS
	flag  string        // the flag without dashes, e.g. max-locks
	def   string        // the default as text; "" for none
	help  string        // what --help says
	value reflect.Value // the field of the config the setting was made from
}

// String names the setting in messages: "LDLM_MAX_LOCKS (--max-locks)".
func (s setting) String() string { return s.env + " (--" + s.flag + ")" }

// settingsOf lists the settings of cfg in declaration order; their values
// are cfg's fields.
func settingsOf(cfg *serverConfig) []setting {
	return collectSettings(reflect.ValueOf(cfg).Elem(), "", "")
}

func collectSettings(v reflect.Value, envPrefix, helpPrefix string) []setting {
	var out []setting
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if p, ok := f.Tag.Lookup("envPrefix"); ok {
			help := strings.TrimSpace(helpPrefix+f.Tag.Get("help")) + " "
			out = append(out, collectSettings(v.Field(i), envPrefix+p, help)...)
			continue
		}
		name := envPrefix + f.Tag.Get("env")
		out = append(out, setting{
			env:   name,
			flag:  strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "LDLM_")), "_", "-"),
			def:   f.Tag.Get("envDefault"),
			help:  helpPrefix + f.Tag.Get("help"),
			value: v.Field(i),
		})
	}
	return out
}

// name returns the setting whose field field (a pointer into c) is, for
// messages. A field that is no setting is a mistake in this file.
func (c *serverConfig) name(field any) setting {
	p := reflect.ValueOf(field).Pointer()
	for _, s := range settingsOf(c) {
		if s.value.Addr().Pointer() == p && s.value.Addr().Type() == reflect.TypeOf(field) {
			return s
		}
	}
	panic(fmt.Sprintf("ldlm: %T at %#x is not a setting", field, p))
}

// bad is the error for a setting that cannot work: "LDLM_X (--x): why".
func (c *serverConfig) bad(field any, format string, args ...any) error {
	return fmt.Errorf("%s: %s", c.name(field), fmt.Sprintf(format, args...))
}

// group names the settings of one natsCredentials of c: "LDLM_NATS_*".
func (c *serverConfig) group(creds *natsCredentials) string {
	return strings.TrimSuffix(c.name(&creds.User).env, "USER") + "*"
}

// retiredVars are LDLM_* variables that ldlm does not read: settings of
// the original LDLM (go-ldlm) and of earlier versions of this one. Each
// names the settings that take its place (a test checks they exist), or
// says why none does.
var retiredVars = map[string]struct {
	now []string
	why string
}{
	"LDLM_PASSWORD":               {now: []string{"LDLM_EMBEDDED_PASSWORD", "LDLM_EMBEDDED_TOKEN"}},
	"LDLM_TLS_CERT":               {now: []string{"LDLM_EMBEDDED_TLS_CERT"}},
	"LDLM_TLS_KEY":                {now: []string{"LDLM_EMBEDDED_TLS_KEY"}},
	"LDLM_CLIENT_CA":              {now: []string{"LDLM_EMBEDDED_TLS_CA"}},
	"LDLM_CLIENT_CERT_VERIFY":     {now: []string{"LDLM_EMBEDDED_TLS_CA"}, why: "a CA requires client certificates"},
	"LDLM_LISTEN_ADDRESS":         {now: []string{"LDLM_EMBEDDED_LISTEN"}},
	"LDLM_KEEPALIVE_INTERVAL":     {now: []string{"LDLM_EMBEDDED_PING_INTERVAL"}},
	"LDLM_KEEPALIVE_TIMEOUT":      {now: []string{"LDLM_EMBEDDED_PING_MAX"}, why: "a number of unanswered pings"},
	"LDLM_EMBEDDED_MAX_PINGS_OUT": {now: []string{"LDLM_EMBEDDED_PING_MAX"}},
	"LDLM_STATE_FILE":             {now: []string{"LDLM_DATA_DIR"}, why: "the lock state is kept in JetStream file storage in that folder"},
	"LDLM_DEFAULT_LOCK_TIMEOUT":   {why: "no replacement: it applied to locks loaded from a state file, which this ldlm has not"},
	"LDLM_LOCK_GC_INTERVAL":       {why: "no replacement: a lock is deleted as soon as no one holds or waits for it"},
	"LDLM_LOCK_GC_MIN_IDLE":       {why: "no replacement: a lock is deleted as soon as no one holds or waits for it"},
	"LDLM_SHARDS":                 {why: "no replacement: one engine behind one mutex serves every lock"},
	"LDLM_IPC_SOCKET_FILE":        {why: "no replacement: ldlm list and ldlm unlock --force talk to the service over NATS"},
	"LDLM_REST_LISTEN_ADDRESS":    {why: "no replacement: clients speak NATS (any NATS client can send a lock request)"},
	"LDLM_REST_SESSION_TIMEOUT":   {why: "no replacement: clients speak NATS (any NATS client can send a lock request)"},
	"LDLM_CONFIG_FILE":            {why: "no replacement: settings are variables and flags only (a nats-server configuration goes in LDLM_EMBEDDED_CONFIG)"},
	"LDLM_LATE_REQUEST_WINDOW":    {why: "removed: the service reads each connection's requests in order, so none arrives late"},
	"LDLM_LATE_REQUEST_MEMORY":    {why: "removed: the service reads each connection's requests in order, so none arrives late"},
}

// childVars are the LDLM_* variables that `ldlm lock` gives its COMMAND:
// a server started as that COMMAND inherits them, and they are no settings.
var childVars = []string{envLockName, envLockToken}

// checkVars refuses every LDLM_* variable of vars that is no setting, in
// one line, so that a typo or a setting of another version is never
// silently ignored.
func checkVars(vars map[string]string, all []setting) error {
	known := map[string]setting{}
	for _, s := range all {
		known[s.env] = s
	}
	var msgs []string
	for name := range vars {
		if _, ok := known[name]; ok || !strings.HasPrefix(name, "LDLM_") || slices.Contains(childVars, name) {
			continue
		}
		r, ok := retiredVars[name]
		if !ok {
			msgs = append(msgs, name+" is not a setting of ldlm (ldlm server --help lists them)")
			continue
		}
		var now []string
		for _, n := range r.now {
			now = append(now, known[n].String())
		}
		msg := name + " is not read by this ldlm"
		if len(now) > 0 {
			msg += ": use " + strings.Join(now, " or ")
		}
		if r.why != "" {
			msg += ": " + r.why
		}
		msgs = append(msgs, msg)
	}
	slices.Sort(msgs)
	if len(msgs) > 0 {
		return errors.New(strings.Join(msgs, "; "))
	}
	return nil
}

const serverUsage = `Usage: ldlm server [flags]

Runs the lock server. Every setting is a flag and an LDLM_* variable; the
flag wins. Bad configuration prints one line and exits with status 2.

Settings:
`

// printServerHelp lists every setting with its variable and default.
func printServerHelp(w io.Writer, all []setting) {
	fmt.Fprint(w, serverUsage)
	for _, s := range all {
		typ := " " + strings.ToLower(s.value.Type().Name()) // int, string, duration
		if s.value.Kind() == reflect.Bool {
			typ = ""
		}
		fmt.Fprintf(w, "  --%s%s\n        %s (env %s", s.flag, typ, s.help, s.env)
		if s.def != "" && s.def != "false" {
			fmt.Fprintf(w, ", default %s", s.def)
		}
		fmt.Fprint(w, ")\n")
	}
}

// set parses text into the setting's field; the error names the setting
// and says what a valid value looks like.
func (s setting) set(text string) error {
	if err := setValue(s.value, text); err != nil {
		return fmt.Errorf("%s: %q is not %s", s, text, describeType(s.value.Type(), err))
	}
	return nil
}

// setValue parses text into the field f, of one of the types settings have.
func setValue(f reflect.Value, text string) error {
	var v any
	var err error
	switch f.Interface().(type) {
	case time.Duration:
		v, err = time.ParseDuration(text)
	case int:
		v, err = strconv.Atoi(text)
	case bool:
		v, err = strconv.ParseBool(text)
	case string:
		v = text
	default:
		return fmt.Errorf("ldlm: a setting of type %s has no parser", f.Type())
	}
	if err == nil {
		f.Set(reflect.ValueOf(v))
	}
	return err
}

// parseServerConfigFrom reads the LDLM_* variables of environ ("KEY=value"
// entries, as os.Environ gives them), then the flags, and validates the
// result: every error it returns is bad configuration, in one line. On
// --help it writes the settings to help and returns flag.ErrHelp.
func parseServerConfigFrom(environ, args []string, help io.Writer) (serverConfig, error) {
	var cfg serverConfig
	all := settingsOf(&cfg)
	vars := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	if err := checkVars(vars, all); err != nil {
		return cfg, err
	}
	// An empty variable is an unset one: the setting keeps its default.
	// Every variable that does not parse is named, in one line.
	var bad []string
	for _, s := range all {
		if text := cmp.Or(vars[s.env], s.def); text != "" {
			if err := s.set(text); err != nil {
				bad = append(bad, err.Error())
			}
		}
	}
	if len(bad) > 0 {
		return cfg, errors.New(strings.Join(bad, "; "))
	}
	fs := flag.NewFlagSet("ldlm server", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the caller prints the one line
	// A flag parses as its variable does. flag wraps the error of the one
	// value that does not parse; flagErr keeps it in the setting's words.
	var flagErr error
	for _, s := range all {
		set := func(text string) error {
			flagErr = s.set(text)
			return flagErr
		}
		if s.value.Kind() == reflect.Bool {
			fs.BoolFunc(s.flag, s.help, set)
		} else {
			fs.Func(s.flag, s.help, set)
		}
	}
	if err := fs.Parse(args); err != nil {
		switch {
		case errors.Is(err, flag.ErrHelp):
			printServerHelp(help, all)
		case flagErr != nil:
			err = flagErr
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return cfg, cfg.validate()
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
