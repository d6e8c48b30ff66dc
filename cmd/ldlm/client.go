package main

// What the client commands (lock, trylock, list, unlock, status) share:
// where the server is, how to log in, the exit statuses, flag parsing and
// the admin request.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
	"github.com/ldlm-io/ldlm/subjects"
)

// Exit statuses of the client commands besides exitUsage (2). lock and
// trylock otherwise exit with COMMAND's own status, so a COMMAND that
// exits 1, 75 or 76 itself cannot be told from these: ldlm's own
// failures also print one line starting with "ldlm" on stderr.
const (
	exitFailed      = 1   // the server could not be reached, or refused the request
	exitNotObtained = 75  // EX_TEMPFAIL: the lock is held (trylock) or --wait passed; COMMAND did not run
	exitLost        = 76  // the lock was lost while COMMAND ran; COMMAND was sent SIGTERM
	exitCannotRun   = 126 // COMMAND exists but could not be started (as shells do)
	exitNotFound    = 127 // COMMAND was not found (as shells do)
	exitSignalBase  = 128 // 128+N: COMMAND, or ldlm while waiting, died of signal N
)

// defaultServerURL is where the client commands connect without --server
// and NATS_URL: the embedded server of `ldlm` on this machine.
const defaultServerURL = "nats://127.0.0.1:4222"

// requestTimeout bounds every request that does not wait for a lock.
const requestTimeout = 5 * time.Second

// clientConfig says how a client command reaches the lock service. Its
// flags and variables are those of the nats CLI, so a shell set up for
// `nats req` works for ldlm as it is.
type clientConfig struct {
	server string
	prefix string
	creds  natsCredentials
}

// natsFlag is one of the nats CLI's flags and variables that ldlm takes:
// the flag's default is the variable.
type natsFlag struct {
	field      *string
	flag, env  string
	helpFormat string // %s is the variable
}

func (c *clientConfig) natsFlags() []natsFlag {
	return []natsFlag{
		{&c.server, "server", "NATS_URL", "NATS server URL(s), comma separated (env %s; default " + defaultServerURL + ")"},
		{&c.creds.User, "user", "NATS_USER", "user name (env %s)"},
		{&c.creds.Password, "password", "NATS_PASSWORD", "password (env %s)"},
		{&c.creds.Token, "token", "NATS_TOKEN", "authentication token (env %s)"},
		{&c.creds.CredsFile, "creds", "NATS_CREDS", "user credentials file (env %s)"},
		{&c.creds.NKeyFile, "nkey", "NATS_NKEY", "user nkey seed file (env %s)"},
		{&c.creds.TLS.Cert, "tlscert", "NATS_CERT", "TLS client certificate file (env %s)"},
		{&c.creds.TLS.Key, "tlskey", "NATS_KEY", "TLS client key file (env %s)"},
		{&c.creds.TLS.CA, "tlsca", "NATS_CA", "TLS CA file to verify the server (env %s)"},
	}
}

// addClientFlags defines the connection flags on fs. Their defaults come
// from the nats CLI's environment variables, read by resolve after the
// flags are parsed, so that --help never prints a password.
func addClientFlags(fs *flag.FlagSet) *clientConfig {
	c := &clientConfig{}
	for _, f := range c.natsFlags() {
		fs.StringVar(f.field, f.flag, "", fmt.Sprintf(f.helpFormat, f.env))
	}
	fs.StringVar(&c.server, "s", "", "short for --server")
	fs.StringVar(&c.prefix, "prefix", subjects.DefaultPrefix, "subject prefix of the lock service (its LDLM_SUBJECT_PREFIX)")
	return c
}

// resolve fills what no flag set from the NATS_* variables and the
// defaults, then finds mistakes before anything is sent.
func (c *clientConfig) resolve() error {
	for _, f := range c.natsFlags() {
		*f.field = cmp.Or(*f.field, os.Getenv(f.env))
	}
	c.server = cmp.Or(c.server, defaultServerURL)
	if c.prefix == "" || strings.ContainsAny(c.prefix, " \t*>") || strings.HasPrefix(c.prefix, ".") || strings.HasSuffix(c.prefix, ".") {
		return fmt.Errorf("--prefix %q is not a valid subject prefix", c.prefix)
	}
	if (c.creds.TLS.Cert == "") != (c.creds.TLS.Key == "") {
		return errors.New("--tlscert and --tlskey must be given together")
	}
	return nil
}

// connect opens the NATS connection for command. name names the
// connection in the server's connection list.
func (c *clientConfig) connect(command, name string, stderr io.Writer) (*nats.Conn, error) {
	opts, err := c.creds.options()
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		nats.Name(name),
		nats.Timeout(requestTimeout),
		// nats.go reports a denied publish (no permission for
		// PREFIX.admin.>, say) only here; the request itself just times out.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			fmt.Fprintf(stderr, "%s: NATS: %s\n", command, strings.TrimPrefix(err.Error(), "nats: "))
		}),
	)
	nc, err := nats.Connect(c.server, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w (set --server or NATS_URL, and credentials if the server wants them)", redactURLs(c.server), err)
	}
	return nc, nil
}

// parseCommandFlags parses args into fs. On --help it prints usage and
// the flags to stdout; on a bad flag, one line to stderr. done reports that
// the command should return code now.
func parseCommandFlags(fs *flag.FlagSet, args []string, usage string, stdout, stderr io.Writer) (code int, done bool) {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		fmt.Fprintln(stdout, "\nFlags:")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0, true
	case err != nil:
		return usageError(stderr, fs.Name(), "%v", err), true
	}
	return 0, false
}

// usageError prints one line about a usage mistake and returns exitUsage.
func usageError(stderr io.Writer, command, format string, args ...any) int {
	fmt.Fprintf(stderr, "%s: %s (%s --help shows the usage)\n", command, fmt.Sprintf(format, args...), command)
	return exitUsage
}

// failed prints one line about a failure and returns exitFailed.
func failed(stderr io.Writer, command string, err error) int {
	fmt.Fprintf(stderr, "%s: %s\n", command, errText(err))
	return exitFailed
}

// errText is err's message without the "ldlm: " that clientlib's errors
// start with, since every line ldlm prints starts with the command already.
func errText(err error) string {
	return strings.TrimPrefix(err.Error(), "ldlm: ")
}

// adminRequest sends one request to PREFIX.admin.OP (PREFIX.admin.unlock.NAME
// for OpAdminUnlock) and decodes the reply into out. It returns the raw
// reply too, for --json, and the refusal in the reply's error field as an
// error.
func adminRequest(nc *nats.Conn, prefix, op, name string, body any, out any) ([]byte, error) {
	subject := subjects.AdminSubject(prefix, op, name)
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return nil, err
		}
	}
	msg, err := nc.Request(subject, data, requestTimeout)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("no lock service answers on %s; likely causes, most likely first: "+
			"ldlm is not running (or has just stopped); this is not its NATS server (--server %s) or not its subject prefix (--prefix %q)",
			subject, redactURLs(nc.ConnectedUrl()), prefix)
	case errors.Is(err, nats.ErrTimeout):
		return nil, fmt.Errorf("no reply on %s within %s; likely causes, most likely first: "+
			"ldlm is not running, or is stopping or overloaded; this is not its NATS server (--server %s) or not its subject prefix (--prefix %q); "+
			"this user may not publish to %s.admin.> (NATS permissions: a denied request gets no reply)",
			subject, requestTimeout, redactURLs(nc.ConnectedUrl()), prefix, prefix)
	case err != nil:
		return nil, fmt.Errorf("request on %s: %w", subject, err)
	}
	var refusal struct {
		Error *subjects.Error `json:"error"`
	}
	err = json.Unmarshal(msg.Data, out)
	if err == nil {
		err = json.Unmarshal(msg.Data, &refusal)
	}
	if err != nil {
		return nil, fmt.Errorf("unreadable reply on %s: %.200q: %w", subject, msg.Data, err)
	}
	if e := refusal.Error; e != nil {
		return nil, fmt.Errorf("the lock service refused: %s: %s", e.Code, e.Message)
	}
	return msg.Data, nil
}

// withLikelyCauses adds to an error of a lock request that got no answer
// the likely causes, most likely first, so that the line says what to
// check. Other errors are returned as they are.
func withLikelyCauses(err error, prefix string) error {
	switch {
	case errors.Is(err, clientlib.ErrNoService) || errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("%w; likely causes, most likely first: ldlm is not running (or has just stopped); "+
			"this is not its NATS server (--server) or not its subject prefix (--prefix %q)", err, prefix)
	case errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w; likely causes, most likely first: ldlm is stopping or overloaded; "+
			"this is not its NATS server (--server) or not its subject prefix (--prefix %q); "+
			"this user may not publish to %s.lock.> and %s.trylock.> (NATS permissions: a denied request gets no reply)", err, prefix, prefix, prefix)
	}
	return err
}
