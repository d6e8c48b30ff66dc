package main

// The embedded NATS server secured: for each way to log in (user and
// password, token, nkeys, TLS, mutual TLS, a configuration file), the ldlm
// binary serves clients that bring the right credentials — the Go client
// library, the ldlm client commands and the real nats CLI — and refuses
// those that bring wrong or none. deploy/embedded.conf keeps
// administration from applications. An open server warns at start.
//
// Every wait is bounded and polls: the tests hold on a loaded 2-core
// machine under -race.

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/ldlm-io/ldlm/clientlib"
	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/internal/testpki"
	"github.com/ldlm-io/ldlm/subjects"
)

// secureCase is one way to secure the embedded server, with the
// credentials of a client that gets in and of clients that do not.
type secureCase struct {
	name string
	env  []string // the server's settings
	// Credentials as nats.go options and as flags, which the ldlm client
	// commands and the nats CLI share (--user, --password, --token, --nkey,
	// --tlsca, --tlscert, --tlskey).
	goOpts []nats.Option
	flags  []string
	// Clients that must be refused, with what the refusal mentions.
	wrong []wrongCreds
}

type wrongCreds struct {
	desc   string
	goOpts []nats.Option
	flags  []string
}

func TestEmbeddedSecurity(t *testing.T) {
	t.Parallel()
	natsCLI(t)
	dir := t.TempDir()
	pki := testpki.New(t, filepath.Join(dir, "pki"))
	nkeyPub, nkeySeedFile := writeUserNkey(t, dir, "user")
	_, otherSeedFile := writeUserNkey(t, dir, "other")
	nkeyOpt, err := nats.NkeyOptionFromSeed(nkeySeedFile)
	if err != nil {
		t.Fatal(err)
	}
	otherOpt, err := nats.NkeyOptionFromSeed(otherSeedFile)
	if err != nil {
		t.Fatal(err)
	}
	noCreds := wrongCreds{desc: "no credentials"}
	serverTLS := []string{"LDLM_EMBEDDED_TLS_CERT=" + pki.ServerCert, "LDLM_EMBEDDED_TLS_KEY=" + pki.ServerKey}
	cases := []secureCase{
		{
			name:   "user and password",
			env:    []string{"LDLM_EMBEDDED_USER=app", "LDLM_EMBEDDED_PASSWORD=app-secret"},
			goOpts: []nats.Option{nats.UserInfo("app", "app-secret")},
			flags:  []string{"--user", "app", "--password", "app-secret"},
			wrong: []wrongCreds{noCreds,
				{"wrong password", []nats.Option{nats.UserInfo("app", "nope")}, []string{"--user", "app", "--password", "nope"}},
				{"the service's user", []nats.Option{nats.UserInfo("ldlm-service", "app-secret")}, []string{"--user", "ldlm-service", "--password", "app-secret"}}},
		},
		{
			name:   "token",
			env:    []string{"LDLM_EMBEDDED_TOKEN=tok-secret"},
			goOpts: []nats.Option{nats.Token("tok-secret")},
			flags:  []string{"--token", "tok-secret"},
			wrong: []wrongCreds{noCreds,
				{"wrong token", []nats.Option{nats.Token("nope")}, []string{"--token", "nope"}}},
		},
		{
			name:   "nkeys",
			env:    []string{"LDLM_EMBEDDED_NKEYS=" + nkeyPub},
			goOpts: []nats.Option{nkeyOpt},
			flags:  []string{"--nkey", nkeySeedFile},
			wrong: []wrongCreds{noCreds,
				{"another nkey", []nats.Option{otherOpt}, []string{"--nkey", otherSeedFile}}},
		},
		{
			name:   "TLS and a password",
			env:    append([]string{"LDLM_EMBEDDED_USER=app", "LDLM_EMBEDDED_PASSWORD=app-secret"}, serverTLS...),
			goOpts: []nats.Option{nats.RootCAs(pki.CA), nats.UserInfo("app", "app-secret")},
			flags:  []string{"--tlsca", pki.CA, "--user", "app", "--password", "app-secret"},
			wrong: []wrongCreds{
				{"no CA to verify the server", []nats.Option{nats.UserInfo("app", "app-secret")}, []string{"--user", "app", "--password", "app-secret"}},
				{"no password", []nats.Option{nats.RootCAs(pki.CA)}, []string{"--tlsca", pki.CA}}},
		},
		{
			name:   "mutual TLS",
			env:    append([]string{"LDLM_EMBEDDED_TLS_CA=" + pki.CA}, serverTLS...),
			goOpts: []nats.Option{nats.RootCAs(pki.CA), nats.ClientCert(pki.ClientCert, pki.ClientKey)},
			flags:  []string{"--tlsca", pki.CA, "--tlscert", pki.ClientCert, "--tlskey", pki.ClientKey},
			wrong: []wrongCreds{
				{"no client certificate", []nats.Option{nats.RootCAs(pki.CA)}, []string{"--tlsca", pki.CA}}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startLDLMWith(t, tc.env, tc.goOpts)
			checkSecured(t, s, tc)
		})
	}
}

// checkSecured runs the three kinds of clients against s with the right
// credentials, then with each wrong set.
func checkSecured(t *testing.T, s *ldlmServer, tc secureCase) {
	t.Helper()
	name := strings.ReplaceAll(tc.name, " ", "-")

	// The Go client library.
	lockWithGo(t, s.url, name+"-go", tc.goOpts...)

	// The ldlm client commands.
	for _, args := range [][]string{
		append([]string{"trylock", "--server", s.url}, append(tc.flags, name+"-cmd", "--", "true")...),
		append([]string{"list", "--server", s.url}, tc.flags...),
		append([]string{"status", "--server", s.url}, tc.flags...),
	} {
		if code, _, stderr, _ := runLDLM(t, nil, args...); code != 0 {
			t.Errorf("ldlm %s: exit %d, stderr: %s", args[0], code, stderr)
		}
	}

	// The nats CLI.
	r := s.nats(t, append(tc.flags, reqArgs(subject(subjects.OpTryLock, name+"-cli"), "")...)...)
	g := wantGrant(t, r, name+"-cli")
	wantUnlocked(t, s.nats(t, append(tc.flags, reqArgs(subject(subjects.OpUnlock, name+"-cli"), unlockBody(t, g.Key))...)...), name+"-cli")

	for _, w := range tc.wrong {
		if nc, err := nats.Connect(s.url, append([]nats.Option{nats.NoReconnect(), nats.Timeout(10 * time.Second)}, w.goOpts...)...); err == nil {
			nc.Close()
			t.Errorf("%s: the Go client got in", w.desc)
		}
		code, _, stderr, _ := runLDLM(t, nil, append([]string{"status", "--server", s.url}, w.flags...)...)
		if code != exitFailed || !strings.Contains(stderr, "connecting to NATS") {
			t.Errorf("%s: ldlm status: exit %d, stderr %q; want %d and a refused connection", w.desc, code, stderr, exitFailed)
		}
		if r, err := s.runNats(append(w.flags, reqArgs(subject(subjects.OpTryLock, name+"-refused"), "")...)...); err == nil {
			t.Errorf("%s: the nats CLI got in: %s", w.desc, r.stdout)
		}
	}
}

// lockWithGo takes and releases lock name through clientlib.
func lockWithGo(t *testing.T, url, name string, opts ...nats.Option) {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.Timeout(10 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatalf("Go client: %v", err)
	}
	defer nc.Close()
	c, err := clientlib.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := c.TryLock(ctx, name)
	if err != nil {
		t.Fatalf("Go client TryLock: %v", err)
	}
	if err := l.Unlock(ctx); err != nil {
		t.Fatalf("Go client Unlock: %v", err)
	}
}

// writeUserNkey makes a user nkey and writes its seed to a file, as the
// nats CLI's and ldlm's --nkey read it.
func writeUserNkey(t *testing.T, dir, name string) (pub, seedFile string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	if pub, err = kp.PublicKey(); err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	seedFile = filepath.Join(dir, name+".nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return pub, seedFile
}

// TestEmbeddedPermissionsExample runs ldlm with deploy/embedded.conf:
// applications lock but may not administer, operators may, and a client
// without credentials is refused.
func TestEmbeddedPermissionsExample(t *testing.T) {
	t.Parallel()
	natsCLI(t)
	conf, err := filepath.Abs(filepath.Join("..", "..", "deploy", "embedded.conf"))
	if err != nil {
		t.Fatal(err)
	}
	app := []string{"--user", "app", "--password", "CHANGE-ME-app"}
	admin := []string{"--user", "admin", "--password", "CHANGE-ME-admin"}
	s := startLDLMWith(t, []string{"LDLM_EMBEDDED_CONFIG=" + conf}, []nats.Option{nats.UserInfo("app", "CHANGE-ME-app")})

	lockWithGo(t, s.url, "example-go", nats.UserInfo("app", "CHANGE-ME-app"))
	if code, _, stderr, _ := runLDLM(t, nil, append(append([]string{"trylock", "--server", s.url}, app...), "example-cmd", "--", "true")...); code != 0 {
		t.Errorf("ldlm trylock as app: exit %d, stderr: %s", code, stderr)
	}
	g := wantGrant(t, s.nats(t, append(app, reqArgs(subject(subjects.OpTryLock, "example-cli"), "")...)...), "example-cli")

	// Administration: refused to the application, allowed to operators.
	code, _, stderr, _ := runLDLM(t, nil, append([]string{"list", "--server", s.url}, app...)...)
	if code != exitFailed || !strings.Contains(stderr, "publish to ldlm.admin.>") {
		t.Errorf("ldlm list as app: exit %d, stderr %q; want %d and a denied request", code, stderr, exitFailed)
	}
	// The CLI reports the refused publish and gets no reply (its exit
	// status varies with the version).
	r, _ := s.runNats(append(app, "req", "--timeout", "2s", subjects.AdminSubject(subjects.DefaultPrefix, subjects.OpAdminList, ""), "")...)
	if strings.Contains(r.stdout, "example-cli") || !strings.Contains(r.stderr, "Permissions Violation") {
		t.Errorf("nats req ldlm.admin.list as app: stdout %q, stderr %q; want a permissions violation and no reply", r.stdout, r.stderr)
	}
	code, stdout, stderr, _ := runLDLM(t, nil, append([]string{"list", "--server", s.url}, admin...)...)
	if code != 0 || !strings.Contains(stdout, "example-cli") {
		t.Errorf("ldlm list as admin: exit %d, stdout %q, stderr %q; want 0 and the lock example-cli", code, stdout, stderr)
	}
	wantUnlocked(t, s.nats(t, append(app, reqArgs(subject(subjects.OpUnlock, "example-cli"), unlockBody(t, g.Key))...)...), "example-cli")

	if code, _, stderr, _ := runLDLM(t, nil, "status", "--server", s.url); code != exitFailed || !strings.Contains(stderr, "connecting to NATS") {
		t.Errorf("ldlm status without credentials: exit %d, stderr %q; want refused", code, stderr)
	}
}

// TestEmbeddedOpenWarning: an embedded server that listens beyond loopback
// and lets anyone in says so at start, naming the settings that secure it;
// a secured or loopback one does not.
func TestEmbeddedOpenWarning(t *testing.T) {
	t.Parallel()
	const warning = "listens beyond this machine and lets in every client without credentials"
	tests := []struct {
		env  []string
		warn bool
	}{
		{[]string{"LDLM_EMBEDDED_LISTEN=0.0.0.0:0"}, true},
		{[]string{"LDLM_EMBEDDED_LISTEN=:0"}, true},
		{[]string{"LDLM_EMBEDDED_LISTEN=0.0.0.0:0", "LDLM_EMBEDDED_TOKEN=t"}, false},
		{[]string{"LDLM_EMBEDDED_LISTEN=0.0.0.0:0", "LDLM_EMBEDDED_USER=u", "LDLM_EMBEDDED_PASSWORD=p"}, false},
		{[]string{"LDLM_EMBEDDED_LISTEN=127.0.0.1:0"}, false},
	}
	for _, tc := range tests {
		cfg, err := parseServerConfigFrom(tc.env, nil, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		logs := &ldlmtest.SyncBuffer{}
		conns, err := connect(context.Background(), &cfg, slog.New(slog.NewTextHandler(logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		conns.close()
		got := logs.String()
		if strings.Contains(got, warning) != tc.warn {
			t.Errorf("env %q: warned %v, want %v; log:\n%s", tc.env, !tc.warn, tc.warn, got)
		}
		if tc.warn && (!strings.Contains(got, "level=WARN") || !strings.Contains(got, "LDLM_EMBEDDED_USER (--embedded-user)")) {
			t.Errorf("env %q: the warning is not a WARN line naming the settings:\n%s", tc.env, got)
		}
	}
}
