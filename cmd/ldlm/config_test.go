package main

// Tests of `ldlm server`'s configuration: LDLM_* variables and flags are
// checked up front (bad configuration: one line, exit status 2, nothing
// started), the embedded server gets the ping settings, and in external
// mode the service waits for a NATS server that is not up yet but fails at
// once on anything another attempt cannot fix.
//
// Every wait is bounded and polls: the tests hold on a loaded 2-core
// machine under -race.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/internal/testpki"
)

// TestConfigDataDir: a data folder makes the single binary keep its state
// in JetStream, with one copy (there is one server).
func TestConfigDataDir(t *testing.T) {
	t.Parallel()
	cfg, err := parseServerConfigFrom([]string{"LDLM_DATA_DIR=/var/lib/ldlm"}, nil, io.Discard)
	if err != nil || cfg.State != "jetstream" || cfg.StateReplicas != 1 || cfg.DataDir != "/var/lib/ldlm" {
		t.Fatalf("LDLM_DATA_DIR: state %q, replicas %d, dir %q, err %v; want jetstream, 1", cfg.State, cfg.StateReplicas, cfg.DataDir, err)
	}
	if cfg, err := parseServerConfigFrom(nil, nil, io.Discard); err != nil || cfg.State != "memory" || cfg.StateReplicas != 3 {
		t.Fatalf("defaults: state %q, replicas %d, err %v; want memory, 3", cfg.State, cfg.StateReplicas, err)
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := parseServerConfigFrom(nil, nil, io.Discard)
	if err != nil {
		t.Fatalf("no settings at all: %v", err)
	}
	// The envDefault tags repeat embeddednats' defaults: they must agree.
	if cfg.EmbeddedPingInterval != embeddednats.DefaultPingInterval || cfg.EmbeddedPingMax != embeddednats.DefaultMaxPingsOut {
		t.Errorf("default ping interval %s and max %d; embeddednats has %s and %d",
			cfg.EmbeddedPingInterval, cfg.EmbeddedPingMax, embeddednats.DefaultPingInterval, embeddednats.DefaultMaxPingsOut)
	}
}

// TestConfigEnvErrors: a variable that does not parse is named with its
// value, never by the Go field it lands in.
func TestConfigEnvErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env  []string
		want string // the whole message
	}{
		{[]string{"LDLM_SWEEP_INTERVAL=abc"}, `LDLM_SWEEP_INTERVAL (--sweep-interval): "abc" is not a duration, e.g. 30s, 2m or 1h30m`},
		{[]string{"LDLM_EMBEDDED_PING_INTERVAL=20"}, `LDLM_EMBEDDED_PING_INTERVAL (--embedded-ping-interval): "20" is not a duration, e.g. 30s, 2m or 1h30m`},
		{[]string{"LDLM_MAX_LOCKS=many"}, `LDLM_MAX_LOCKS (--max-locks): "many" is not a whole number`},
		{[]string{"LDLM_EMBEDDED_PING_MAX=1.5"}, `LDLM_EMBEDDED_PING_MAX (--embedded-ping-max): "1.5" is not a whole number`},
		{[]string{"LDLM_MAX_BODY_BYTES=99999999999999999999"}, `LDLM_MAX_BODY_BYTES (--max-body-bytes): "99999999999999999999" is not a whole number in range`},
		{[]string{"LDLM_EVENTS=maybe"}, `LDLM_EVENTS (--events): "maybe" is not true or false`},
		{[]string{"LDLM_TENANTS=yes", "LDLM_ANONYMOUS_LOCK_TIMEOUT=1 minute"},
			`LDLM_TENANTS (--tenants): "yes" is not true or false; LDLM_ANONYMOUS_LOCK_TIMEOUT (--anonymous-lock-timeout): "1 minute" is not a duration, e.g. 30s, 2m or 1h30m`},
	}
	for _, tc := range tests {
		_, err := parseServerConfigFrom(tc.env, nil, io.Discard)
		if err == nil || err.Error() != tc.want {
			t.Errorf("env %q: %v\nwant: %s", tc.env, err, tc.want)
		}
	}
}

// TestConfigFlagErrors: a flag value that does not parse is named as a
// variable is, with its flag.
func TestConfigFlagErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string // the whole message
	}{
		{[]string{"--sweep-interval=abc"}, `LDLM_SWEEP_INTERVAL (--sweep-interval): "abc" is not a duration, e.g. 30s, 2m or 1h30m`},
		{[]string{"--max-locks", "many"}, `LDLM_MAX_LOCKS (--max-locks): "many" is not a whole number`},
		{[]string{"--events=maybe"}, `LDLM_EVENTS (--events): "maybe" is not true or false`},
		{[]string{"--late-request-window=1s"}, `flag provided but not defined: -late-request-window`},
	}
	for _, tc := range tests {
		_, err := parseServerConfigFrom(nil, tc.args, io.Discard)
		if err == nil || err.Error() != tc.want {
			t.Errorf("args %q: %v\nwant: %s", tc.args, err, tc.want)
		}
	}
}

// TestConfigUnknownVariables: an LDLM_* variable that is no setting stops
// ldlm, named with what replaces it; the variables `ldlm lock` gives its
// COMMAND are not settings but pass.
func TestConfigUnknownVariables(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env  []string
		want string // the whole message; "" none
	}{
		{[]string{"LDLM_PASSWORD=x"}, `LDLM_PASSWORD is not read by this ldlm: use LDLM_EMBEDDED_PASSWORD (--embedded-password) or LDLM_EMBEDDED_TOKEN (--embedded-token)`},
		{[]string{"LDLM_TLS_CERT=c.pem"}, `LDLM_TLS_CERT is not read by this ldlm: use LDLM_EMBEDDED_TLS_CERT (--embedded-tls-cert)`},
		{[]string{"LDLM_STATE_FILE=/var/lib/ldlm"}, `LDLM_STATE_FILE is not read by this ldlm: use LDLM_DATA_DIR (--data-dir): the lock state is kept in JetStream file storage in that folder`},
		{[]string{"LDLM_LATE_REQUEST_WINDOW=10s"}, `LDLM_LATE_REQUEST_WINDOW is not read by this ldlm: removed: the service reads each connection's requests in order, so none arrives late`},
		{[]string{"LDLM_EMBEDDED_MAX_PINGS_OUT=3"}, `LDLM_EMBEDDED_MAX_PINGS_OUT is not read by this ldlm: use LDLM_EMBEDDED_PING_MAX (--embedded-ping-max)`},
		{[]string{"LDLM_MAX_LOKS=5"}, `LDLM_MAX_LOKS is not a setting of ldlm (ldlm server --help lists them)`},
		{[]string{"LDLM_TLS_KEY=k", "LDLM_MAX_LOCKS=many", "LDLM_CLIENT_CA=ca"},
			`LDLM_CLIENT_CA is not read by this ldlm: use LDLM_EMBEDDED_TLS_CA (--embedded-tls-ca); LDLM_TLS_KEY is not read by this ldlm: use LDLM_EMBEDDED_TLS_KEY (--embedded-tls-key)`},
		{[]string{"LDLM_LOCK_NAME=job", "LDLM_LOCK_TOKEN=7", "NOT_LDLM_X=1"}, ""},
	}
	for _, tc := range tests {
		_, err := parseServerConfigFrom(tc.env, nil, io.Discard)
		if got := fmt.Sprint(err); (tc.want == "" && err != nil) || (tc.want != "" && got != tc.want) {
			t.Errorf("env %q: %v\nwant: %s", tc.env, err, tc.want)
		}
	}
}

// TestConfigDeclarations: every setting has help text, an LDLM_* name and a
// flag of its own, and a type that flags can parse.
func TestConfigDeclarations(t *testing.T) {
	t.Parallel()
	envs, flags := map[string]bool{}, map[string]bool{}
	for _, s := range settingsOf(&serverConfig{}) {
		switch {
		case !strings.HasPrefix(s.env, "LDLM_"):
			t.Errorf("%s: not an LDLM_* variable", s.env)
		case strings.TrimSpace(s.help) == "" || strings.HasSuffix(s.help, ": "):
			t.Errorf("%s: no help tag", s.env)
		case envs[s.env] || flags[s.flag]:
			t.Errorf("%s: declared twice", s)
		}
		envs[s.env], flags[s.flag] = true, true
		if err := setValue(reflect.New(s.value.Type()).Elem(), s.def); err != nil && s.def != "" {
			t.Errorf("%s: the default %q does not parse as a flag value: %v", s, s.def, err)
		}
	}
}

// TestConfigRetiredReplacements: every replacement named for a retired
// variable is a setting, so its message can name the flag too.
func TestConfigRetiredReplacements(t *testing.T) {
	t.Parallel()
	known := map[string]bool{}
	for _, s := range settingsOf(&serverConfig{}) {
		known[s.env] = true
	}
	for old, r := range retiredVars {
		if known[old] {
			t.Errorf("%s is retired and a setting", old)
		}
		if len(r.now) == 0 && r.why == "" {
			t.Errorf("%s names no replacement and says not why", old)
		}
		for _, n := range r.now {
			if !known[n] {
				t.Errorf("%s's replacement %s is not a setting", old, n)
			}
		}
	}
}

// TestConfigValidate: every setting that cannot work is refused before
// anything starts, with a message that names it; settings that can work
// pass.
func TestConfigValidate(t *testing.T) {
	t.Parallel()
	const ext = "--nats-url=nats://127.0.0.1:4222"
	bad := []struct {
		desc string
		env  []string
		args []string
		want []string // in the message
	}{
		{"listen without port", nil, []string{"--embedded-listen=nonsense"}, []string{"LDLM_EMBEDDED_LISTEN", `"nonsense"`, "host:port"}},
		{"listen port out of range", []string{"LDLM_EMBEDDED_LISTEN=127.0.0.1:99999"}, nil, []string{"LDLM_EMBEDDED_LISTEN", "0 to 65535"}},
		{"listen port not a number", nil, []string{"--embedded-listen=127.0.0.1:nats"}, []string{"--embedded-listen", "0 to 65535"}},
		{"listen given as a URL", nil, []string{"--embedded-listen=nats://127.0.0.1:4222"}, []string{"--embedded-listen"}},
		{"server name with a space", nil, []string{"--embedded-server-name=my ldlm"}, []string{"LDLM_EMBEDDED_SERVER_NAME", "spaces"}},
		{"ping interval 0", nil, []string{"--embedded-ping-interval=0s"}, []string{"LDLM_EMBEDDED_PING_INTERVAL", "positive"}},
		{"ping interval negative", []string{"LDLM_EMBEDDED_PING_INTERVAL=-5s"}, nil, []string{"--embedded-ping-interval", "positive"}},
		{"ping max 0", nil, []string{"--embedded-ping-max=0"}, []string{"LDLM_EMBEDDED_PING_MAX", "at least 1"}},
		{"cluster routes without a listen address", nil, []string{"--embedded-cluster-routes=nats-route://a:6222"}, []string{"LDLM_EMBEDDED_CLUSTER_ROUTES", "LDLM_EMBEDDED_CLUSTER_LISTEN"}},
		{"cluster listen without port", nil, []string{"--embedded-cluster-listen=a"}, []string{"LDLM_EMBEDDED_CLUSTER_LISTEN", "host:port"}},
		{"cluster route not a route URL", nil, []string{"--embedded-cluster-listen=:6222", "--embedded-cluster-routes=nats://a:4222"}, []string{"LDLM_EMBEDDED_CLUSTER_ROUTES", "nats-route://host:port"}},
		{"cluster name with a dot", nil, []string{"--embedded-cluster-listen=:6222", "--embedded-cluster-name=a.b"}, []string{"LDLM_EMBEDDED_CLUSTER_NAME", `"a.b"`}},
		{"tenants that do not parse", nil, []string{"--embedded-tenants=A:alice"}, []string{"LDLM_EMBEDDED_TENANTS", "ACCOUNT:USER:PASSWORD"}},
		{"tenant with a reserved account", nil, []string{"--embedded-tenants=LDLM:u:p"}, []string{"LDLM_EMBEDDED_TENANTS", "reserved"}},
		{"tenant account twice", nil, []string{"--embedded-tenants=A:u:p,A:v:q"}, []string{"LDLM_EMBEDDED_TENANTS", "twice"}},
		{"tenant user twice", nil, []string{"--embedded-tenants=A:u:p,B:u:q"}, []string{"LDLM_EMBEDDED_TENANTS", `"u"`}},
		{"tenants that name none", nil, []string{"--embedded-tenants= , "}, []string{"LDLM_EMBEDDED_TENANTS", "no tenant"}},
		{"tenants without accounts", nil, []string{"--tenants"}, []string{"LDLM_EMBEDDED_TENANTS"}},
		{"embedded tenants with a URL", nil, []string{ext, "--embedded-tenants=A:u:p"}, []string{"deploy/tenants.conf"}},
		{"max locks -2", nil, []string{"--max-locks=-2"}, []string{"LDLM_MAX_LOCKS", "-1 for no limit", "-2"}},
		{"max waiters 0", nil, []string{"--max-waiters-per-lock=0"}, []string{"LDLM_MAX_WAITERS_PER_LOCK", "-1 for no limit"}},
		{"max waits negative", []string{"LDLM_MAX_WAITS_PER_CONNECTION=-10"}, nil, []string{"LDLM_MAX_WAITS_PER_CONNECTION"}},
		{"max name length negative", nil, []string{"--max-name-length=-1"}, []string{"LDLM_MAX_NAME_LENGTH (--max-name-length): must be from 1 to 2048"}},
		{"max name length over the cap", []string{"LDLM_MAX_NAME_LENGTH=2049"}, nil, []string{"LDLM_MAX_NAME_LENGTH (--max-name-length): must be from 1 to 2048", "2049"}},
		{"subject prefix too long", nil, []string{"--subject-prefix=" + strings.Repeat("p", 257)}, []string{"LDLM_SUBJECT_PREFIX (--subject-prefix): is 257 bytes long; at most 256"}},
		{"max body bytes 0", nil, []string{"--max-body-bytes=0"}, []string{"LDLM_MAX_BODY_BYTES"}},
		{"anonymous lock timeout 0", nil, []string{"--anonymous-lock-timeout=0s"}, []string{"LDLM_ANONYMOUS_LOCK_TIMEOUT", "positive"}},
		{"anonymous lock timeout over a year", nil, []string{"--anonymous-lock-timeout=9000h"}, []string{"LDLM_ANONYMOUS_LOCK_TIMEOUT", "a year"}},
		{"sweep interval 0", nil, []string{"--sweep-interval=0s"}, []string{"LDLM_SWEEP_INTERVAL (--sweep-interval)", "negative"}},
		{"reconnect grace 0", []string{"LDLM_RECONNECT_GRACE=0s"}, nil, []string{"LDLM_RECONNECT_GRACE (--reconnect-grace)", "positive"}},
		{"reconnect grace over an hour", nil, []string{"--reconnect-grace=2h"}, []string{"LDLM_RECONNECT_GRACE", "an hour"}},
		{"log level", nil, []string{"--log-level=loud"}, []string{"LDLM_LOG_LEVEL", `"loud"`}},
		{"log format", []string{"LDLM_LOG_FORMAT=xml"}, nil, []string{"--log-format", `"xml"`}},
		{"subject prefix", nil, []string{"--subject-prefix=a..b"}, []string{"LDLM_SUBJECT_PREFIX", `"a..b"`}},
		{"metrics listen without port", nil, []string{"--metrics-listen=metrics"}, []string{"LDLM_METRICS_LISTEN", "host:port"}},
		{"metrics listen port out of range", []string{"LDLM_METRICS_LISTEN=:70000"}, nil, []string{"--metrics-listen", "0 to 65535"}},
		{"credentials without URL", nil, []string{"--nats-user=me"}, []string{"LDLM_NATS_URL"}},
		{"NATS URL with another scheme", nil, []string{"--nats-url=http://127.0.0.1:4222"}, []string{"LDLM_NATS_URL", "nats, tls, ws or wss"}},
		{"NATS URL port not a number", nil, []string{"--nats-url=nats://127.0.0.1:port"}, []string{"LDLM_NATS_URL", "not a URL"}},
		{"NATS URL port out of range", nil, []string{"--nats-url=127.0.0.1:0"}, []string{"LDLM_NATS_URL", "1 to 65535"}},
		{"NATS URL without host", nil, []string{"--nats-url=nats://:4222"}, []string{"LDLM_NATS_URL", "no host"}},
		{"NATS URL with a path", nil, []string{"--nats-url=nats://127.0.0.1:4222/x"}, []string{"LDLM_NATS_URL", "no path"}},
		{"NATS URL list with an empty entry", nil, []string{"--nats-url=nats://a:4222,,nats://b:4222"}, []string{"LDLM_NATS_URL", "empty URL"}},
		{"NATS URL list mixing websocket", nil, []string{"--nats-url=nats://a:4222,ws://b:8080"}, []string{"LDLM_NATS_URL", "websocket"}},
		{"system URL", nil, []string{ext, "--system-url=ftp://x"}, []string{"LDLM_SYSTEM_URL"}},
		{"TLS certificate without key", nil, []string{ext, "--nats-tls-cert=c.pem"}, []string{"LDLM_NATS_TLS_CERT", "LDLM_NATS_TLS_KEY"}},
		{"system TLS key without certificate", nil, []string{ext, "--system-tls-key=k.pem"}, []string{"LDLM_SYSTEM_TLS_CERT"}},
		{"embedded user without password", nil, []string{"--embedded-user=u"}, []string{"LDLM_EMBEDDED_USER (--embedded-user): needs a password", "LDLM_EMBEDDED_PASSWORD"}},
		{"embedded password without user", []string{"LDLM_EMBEDDED_PASSWORD=p"}, nil, []string{"LDLM_EMBEDDED_PASSWORD (--embedded-password): needs a user", "LDLM_EMBEDDED_TOKEN"}},
		{"embedded user named as the service", nil, []string{"--embedded-user=ldlm-system", "--embedded-password=p"}, []string{"LDLM_EMBEDDED_USER", "lock service's own"}},
		{"embedded token and user", nil, []string{"--embedded-token=t", "--embedded-user=u", "--embedded-password=p"}, []string{"LDLM_EMBEDDED_TOKEN (--embedded-token): excludes"}},
		{"embedded nkey that is no public user key", nil, []string{"--embedded-nkeys=SUABC"}, []string{"LDLM_EMBEDDED_NKEYS (--embedded-nkeys)", "not a public user nkey"}},
		{"embedded TLS certificate without key", nil, []string{"--embedded-tls-cert=c.pem"}, []string{"LDLM_EMBEDDED_TLS_CERT (--embedded-tls-cert): needs its key"}},
		{"embedded TLS key without certificate", nil, []string{"--embedded-tls-key=k.pem"}, []string{"LDLM_EMBEDDED_TLS_KEY (--embedded-tls-key): needs its certificate"}},
		{"embedded TLS CA without certificate", nil, []string{"--embedded-tls-ca=ca.pem"}, []string{"LDLM_EMBEDDED_TLS_CA (--embedded-tls-ca)"}},
		{"embedded TLS files missing", nil, []string{"--embedded-tls-cert=/nonexistent/c.pem", "--embedded-tls-key=/nonexistent/k.pem"}, []string{"LDLM_EMBEDDED_TLS_CERT", "/nonexistent/c.pem"}},
		{"embedded configuration file missing", nil, []string{"--embedded-config=/nonexistent/nats.conf"}, []string{"LDLM_EMBEDDED_CONFIG (--embedded-config)", "/nonexistent/nats.conf"}},
		{"embedded tenants and a user", nil, []string{"--embedded-tenants=A:a:p", "--embedded-user=u", "--embedded-password=p"}, []string{"LDLM_EMBEDDED_USER", "LDLM_EMBEDDED_TENANTS"}},
		{"state neither memory nor jetstream", nil, []string{"--state=disk"}, []string{"LDLM_STATE (--state)", `"disk"`, "memory or jetstream"}},
		{"state replicas 0", nil, []string{ext, "--state=jetstream", "--state-replicas=0"}, []string{"LDLM_STATE_REPLICAS", "at least 1"}},
		{"jetstream state embedded without a data folder", nil, []string{"--state=jetstream"}, []string{"LDLM_STATE (--state)", "LDLM_DATA_DIR"}},
		{"data folder with an external server", nil, []string{ext, "--data-dir=/tmp/x"}, []string{"LDLM_DATA_DIR (--data-dir)", "LDLM_NATS_URL", "LDLM_STATE=jetstream"}},
		{"jetstream state with the $LDLM prefix", nil, []string{ext, "--state=jetstream", "--subject-prefix=$LDLM"}, []string{"LDLM_SUBJECT_PREFIX", "$LDLM"}},
		{"embedded security with an external server", nil, []string{ext, "--embedded-token=t"}, []string{"LDLM_EMBEDDED_TOKEN (--embedded-token)", "LDLM_NATS_URL"}},
	}
	for _, tc := range bad {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := parseServerConfigFrom(tc.env, tc.args, io.Discard)
			if err == nil {
				t.Fatalf("env %q, args %q: accepted", tc.env, tc.args)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v\nwant a message that mentions %s", err, w)
				}
			}
		})
	}

	pki := testpki.New(t, t.TempDir())
	nkeyPub, _ := writeUserNkey(t, t.TempDir(), "user")
	good := []struct {
		desc string
		env  []string
		args []string
	}{
		{"listen on every interface", nil, []string{"--embedded-listen=:4222"}},
		{"listen on IPv6 loopback, any port", nil, []string{"--embedded-listen=[::1]:0"}},
		{"listen by host name", nil, []string{"--embedded-listen=localhost:4222"}},
		{"no listener at all", []string{"LDLM_EMBEDDED_LISTEN="}, []string{"--embedded-listen="}},
		{"no limits", nil, []string{"--max-locks=-1", "--max-waiters-per-lock=-1", "--max-waits-per-connection=-1"}},
		{"sweep only at start", nil, []string{"--sweep-interval=-1s"}},
		{"short pings", nil, []string{"--embedded-ping-interval=1s", "--embedded-ping-max=1"}},
		{"tenants", nil, []string{"--embedded-tenants=A:alice:p:a, B:bob:pb"}},
		{"metrics on every interface", nil, []string{"--metrics-listen=:9464"}},
		{"URL list without schemes", nil, []string{"--nats-url=a:4222, b"}},
		{"TLS and websocket URLs", nil, []string{"--nats-url=wss://nats.example.com/ws,ws://b:8080"}},
		{"credentials in the URL", nil, []string{"--nats-url=nats://u:p@nats:4222"}},
		// In external mode the embedded server's settings are not used, so
		// they are not checked: the Docker image sets LDLM_EMBEDDED_LISTEN.
		{"external mode ignores embedded settings", []string{"LDLM_EMBEDDED_LISTEN=nonsense", "LDLM_EMBEDDED_PING_MAX=0"}, []string{ext}},
		{"external mode with TLS", nil, []string{ext, "--nats-tls-cert=c.pem", "--nats-tls-key=k.pem", "--system-url=tls://127.0.0.1:4223"}},
		{"tenants through an external server", []string{"LDLM_TENANTS=true"}, []string{ext}},
		{"embedded user and nkeys", nil, []string{"--embedded-user=u", "--embedded-password=p", "--embedded-nkeys=" + nkeyPub + ", "}},
		{"embedded token", []string{"LDLM_EMBEDDED_TOKEN=t"}, nil},
		{"embedded cluster member", []string{"LDLM_EMBEDDED_CLUSTER_LISTEN=127.0.0.1:6222", "LDLM_EMBEDDED_CLUSTER_ROUTES=nats-route://127.0.0.1:6222, nats-route://b:6222"}, nil},
		{"embedded configuration example", nil, []string{"--embedded-config=../../deploy/embedded.conf"}},
		{"embedded TLS with tenants", nil, []string{"--embedded-tenants=A:a:p", "--embedded-tls-cert=" + pki.ServerCert, "--embedded-tls-key=" + pki.ServerKey}},
		{"embedded mutual TLS", nil, []string{"--embedded-tls-cert=" + pki.ServerCert, "--embedded-tls-key=" + pki.ServerKey, "--embedded-tls-ca=" + pki.CA}},
	}
	for _, tc := range good {
		t.Run(tc.desc, func(t *testing.T) {
			if _, err := parseServerConfigFrom(tc.env, tc.args, io.Discard); err != nil {
				t.Errorf("env %q, args %q: %v", tc.env, tc.args, err)
			}
		})
	}
}

// TestConfigErrorsExitStatus: the ldlm binary stops on bad configuration
// with exit status 2 and one line, before it starts anything.
func TestConfigErrorsExitStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env  []string
		args []string
		want string // the whole line
	}{
		{nil, []string{"--embedded-listen=nonsense"},
			`ldlm: configuration: LDLM_EMBEDDED_LISTEN (--embedded-listen): listen address "nonsense": want host:port, e.g. 127.0.0.1:4222 or :4222`},
		{[]string{"LDLM_SWEEP_INTERVAL=abc"}, nil,
			`ldlm: configuration: LDLM_SWEEP_INTERVAL (--sweep-interval): "abc" is not a duration, e.g. 30s, 2m or 1h30m`},
		{nil, []string{"server", "--embedded-tenants=SYS:u:p"},
			`ldlm: configuration: LDLM_EMBEDDED_TENANTS (--embedded-tenants): tenant account "SYS": the name is reserved, choose another`},
		{nil, []string{"--nats-url=nats://u:secret@127.0.0.1:99999"},
			`ldlm: configuration: LDLM_NATS_URL (--nats-url): "nats://REDACTED@127.0.0.1:99999": the port must be a number from 1 to 65535`},
		{[]string{"LDLM_PASSWORD=secret"}, nil,
			`ldlm: configuration: LDLM_PASSWORD is not read by this ldlm: use LDLM_EMBEDDED_PASSWORD (--embedded-password) or LDLM_EMBEDDED_TOKEN (--embedded-token)`},
		{[]string{"LDLM_STATE_FILE=/tmp/state"}, nil,
			`ldlm: configuration: LDLM_STATE_FILE is not read by this ldlm: use LDLM_DATA_DIR (--data-dir): the lock state is kept in JetStream file storage in that folder`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(append(tc.env, tc.args...), " "), func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr, _ := runLDLM(t, tc.env, tc.args...)
			if code != exitUsage || stdout != "" || stderr != tc.want+"\n" {
				t.Errorf("exit %d, stdout %q, stderr %q\nwant exit %d and only the line %s", code, stdout, stderr, exitUsage, tc.want)
			}
		})
	}
}

// TestConfigPingSettingsReachServer: the embedded server runs with the ping
// settings of the variables and flags.
func TestConfigPingSettingsReachServer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env          []string
		args         []string
		wantInterval time.Duration
		wantMax      int
	}{
		{nil, nil, embeddednats.DefaultPingInterval, embeddednats.DefaultMaxPingsOut},
		{[]string{"LDLM_EMBEDDED_PING_INTERVAL=7s", "LDLM_EMBEDDED_PING_MAX=5"}, nil, 7 * time.Second, 5},
		// Not a short interval: a server that pings before a loaded
		// machine has finished the in-process connection's handshake
		// breaks it ("expected 'PONG', got 'PING'").
		{[]string{"LDLM_EMBEDDED_PING_INTERVAL=7s"}, []string{"--embedded-ping-interval=3s", "--embedded-ping-max=1"}, 3 * time.Second, 1},
	}
	for _, tc := range tests {
		cfg, err := parseServerConfigFrom(append(tc.env, "LDLM_EMBEDDED_LISTEN=127.0.0.1:0"), tc.args, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		conns, err := connect(context.Background(), &cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		v, err := conns.embedded.NATSServer().Varz(nil)
		conns.close()
		if err != nil {
			t.Fatal(err)
		}
		if v.PingInterval != tc.wantInterval || v.MaxPingsOut != tc.wantMax {
			t.Errorf("env %q, args %q: the server pings every %s, max %d; want %s, %d",
				tc.env, tc.args, v.PingInterval, v.MaxPingsOut, tc.wantInterval, tc.wantMax)
		}
	}
}

// TestExternalWaitsForNATS: a NATS server that is not up yet at start (as
// under docker compose) is waited for, each attempt logged; once it is up,
// the service answers. Stopping the service then logs no "disconnected"
// line with a nil error, while losing the server does log one with the
// cause.
func TestExternalWaitsForNATS(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	opts, pw := extUserOptions(t, false)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	svc := extStartServe(t, extConfig(t, extEnv{
		url:    url,
		app:    natsCredentials{User: "ldlm", Password: pw.service},
		system: natsCredentials{User: "ldlm-system", Password: pw.system},
	}, "--sweep-interval=1h"))
	extWaitLogCount(t, svc.logs, "NATS not reachable, trying again", 2)

	opts.Port = port
	ns := extStartNATSOn(t, opts)
	admin := extDial(t, url, nats.UserInfo("admin", pw.admin), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	extWaitReady(t, svc, admin)
	extWaitLog(t, svc.logs, "connected to NATS")

	// Losing the server is logged with its cause.
	ns.Shutdown()
	ns.WaitForShutdown()
	extWaitLog(t, svc.logs, `level=WARN msg="disconnected from NATS" err=`)
	again, _ := extUserOptionsWith(pw, false)
	again.Port = port
	extStartNATSOn(t, again)
	extWaitLog(t, svc.logs, "reconnected to NATS")
	extWaitReady(t, svc, admin)

	svc.stop()
	logs := svc.logs.String()
	if strings.Contains(logs, "err=<nil>") {
		t.Errorf("the log shows a nil error:\n%s", logs)
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "not reachable") && !strings.Contains(line, "127.0.0.1:"+strconv.Itoa(port)) {
			t.Errorf("an attempt's log line does not name the URL: %s", line)
		}
	}
	extCheckNoSecrets(t, svc.logs, pw.service, pw.system)
}

// TestExternalStopWhileWaiting: SIGTERM (ctx) while the service waits for
// NATS ends it cleanly.
func TestExternalStopWhileWaiting(t *testing.T) {
	t.Parallel()
	svc := extStartServe(t, extConfig(t, extEnv{url: "nats://127.0.0.1:" + strconv.Itoa(freePort(t))}))
	extWaitLog(t, svc.logs, "NATS not reachable, trying again")
	svc.stop() // fails the test unless serve returns nil in time
	extWaitLog(t, svc.logs, "stopped while waiting for NATS")
}

// TestExternalFailFast: what another attempt cannot fix ends serve at once
// even though an unreachable server is waited for.
func TestExternalFailFast(t *testing.T) {
	t.Parallel()
	opts, pw := extUserOptions(t, false)
	ns := extStartNATS(t, opts)
	missing := t.TempDir() + "/missing.creds"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"refused password", []string{"--nats-url", ns.ClientURL(), "--nats-user=ldlm", "--nats-password=wrong"}, "Authorization Violation"},
		{"missing creds file", []string{"--nats-url", ns.ClientURL(), "--nats-creds=" + missing}, "missing.creds"},
		{"missing TLS CA file", []string{"--nats-url", ns.ClientURL(), "--nats-tls-ca=" + missing}, "missing.creds"},
		{"refused system password", []string{"--nats-url", ns.ClientURL(), "--nats-user=ldlm", "--nats-password=" + pw.service,
			"--system-user=ldlm-system", "--system-password=wrong"}, "system account"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseServerConfig(tc.args, io.Discard)
			if err != nil {
				t.Fatalf("configuration: %v", err)
			}
			logs := &ldlmtest.SyncBuffer{}
			err = extServeFails(t, cfg, logs)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("serve: %v\nwant an error that mentions %q", err, tc.want)
			}
			if strings.Contains(logs.String(), "not reachable") {
				t.Errorf("serve waited instead of failing:\n%s", logs)
			}
		})
	}
}

// extWaitLogCount polls logs until s occurs n times.
func extWaitLogCount(t *testing.T, logs *ldlmtest.SyncBuffer, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(extWaitTimeout)
	for strings.Count(logs.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the service's log has %q fewer than %d times within %s:\n%s", s, n, extWaitTimeout, logs)
		}
		time.Sleep(extPoll)
	}
}

// TestConfigREADMETable: the configuration table of README.md lists every
// setting, with its flag and default, and nothing else. A row may list
// several variables of one group as `LDLM_NATS_USER`, `_PASSWORD`, ….
func TestConfigREADMETable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Configuration\n")
	if !ok {
		t.Fatal("README.md has no ## Configuration section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	type row struct{ flag, def string }
	rows := map[string]row{} // by variable
	code := regexp.MustCompile("`([^`]*)`")
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `LDLM_") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 5 {
			t.Fatalf("README row with fewer than 4 cells: %s", line)
		}
		names := code.FindAllStringSubmatch(cells[1], -1)
		first := names[0][1]
		base := first[:strings.LastIndex(first, "_")]
		for i, m := range names {
			name := m[1]
			if i > 0 {
				name = base + name // `_PASSWORD` after `LDLM_NATS_USER`
			}
			if _, dup := rows[name]; dup {
				t.Errorf("README lists %s twice", name)
			}
			r := row{flag: "?", def: "?"} // rows of several variables: not checked
			if len(names) == 1 {
				r = row{flag: strings.TrimSpace(cells[2]), def: strings.TrimSpace(cells[3])}
			}
			rows[name] = r
		}
	}
	if len(rows) == 0 {
		t.Fatal("no LDLM_* rows in README's configuration table")
	}
	for _, s := range settingsOf(&serverConfig{}) {
		r, ok := rows[s.env]
		switch {
		case !ok:
			t.Errorf("README's configuration table lacks %s", s.env)
			continue
		case r.flag != "?" && r.flag != "`--"+s.flag+"`":
			t.Errorf("README gives %s the flag %s, want `--%s`", s.env, r.flag, s.flag)
		case r.def != "?" && s.def != "" && r.def != "`"+s.def+"`":
			t.Errorf("README gives %s the default %s, want `%s`", s.env, r.def, s.def)
		}
		delete(rows, s.env)
	}
	for name := range rows {
		t.Errorf("README's configuration table lists %s, which is no setting of ldlm", name)
	}
}

// parseServerConfig reads the process environment, then the flags.
func parseServerConfig(args []string, help io.Writer) (serverConfig, error) {
	return parseServerConfigFrom(os.Environ(), args, help)
}
