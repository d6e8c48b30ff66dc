package main

// External-mode tests: serve, configured through parseServerConfig as
// `ldlm server --nats-url …` would be, connects to a real nats-server started
// in this process on a random port, with every kind of NATS credential
// (user/password, token, nkey seed file, JWT creds file in operator mode) and
// with TLS (server verification, mutual TLS). The service must then answer
// lock requests of a client that has its own credentials; given system
// account credentials, it must free a closed connection's locks from the
// server's disconnect advisories (its periodic sweep is set to an hour, so
// nothing else could); without them, from its account-scoped sweep. Bad
// credentials must make serve fail at once, naming the URL but not the
// secret. No secret, and no lock key, may reach the service's log.
//
// Every wait is bounded and polls: the tests hold on a loaded 2-core
// machine under -race.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/internal/testpki"
	"github.com/ldlm-io/ldlm/subjects"
)

// Bounds of the waits. They only turn a hang into a failure.
const (
	extStartTimeout = 60 * time.Second // a server or the service becoming ready
	extWaitTimeout  = 30 * time.Second // a release, a notice, a log line, a failure
	extReqTimeout   = 10 * time.Second // one request
	extPoll         = 50 * time.Millisecond
)

// extServerName is the name of every test nats-server: what advisories and
// owners carry.
const extServerName = "ext-nats"

// extEnv is one way of reaching a nats-server: what the service is given,
// and how a test client of the applications' account connects.
type extEnv struct {
	url       string
	app       natsCredentials    // LDLM_NATS_*
	system    natsCredentials    // LDLM_SYSTEM_*; zero: no system connection
	systemURL string             // LDLM_SYSTEM_URL
	client    []nats.Option      // a lock client with its own credentials
	admin     []nats.Option      // may send ldlm.admin.>; nil: client
	more      func(t *testing.T) // further checks while the service runs
	// secrets must never appear in the service's log.
	secrets []string
}

func TestExternalCredentials(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		setup func(t *testing.T) extEnv
	}{
		{"user-password", extUserPasswordEnv},
		{"token", extTokenEnv},
		{"nkey", extNKeyEnv},
		{"creds-jwt", extJWTEnv},
		{"tls-server-verify", func(t *testing.T) extEnv { return extTLSEnv(t, false) }},
		{"tls-mutual", func(t *testing.T) extEnv { return extTLSEnv(t, true) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			extCheckService(t, tc.setup(t))
		})
	}
}

// extCheckService runs the service in env and checks that it answers, and
// that a closed holder's lock is freed: by advisories with system
// credentials, by the account-scoped sweep without.
func extCheckService(t *testing.T, env extEnv) {
	t.Helper()
	advisories := !env.system.isZero() || env.systemURL != ""
	sweep := "1h" // with advisories, nothing but an advisory may free the lock
	if !advisories {
		sweep = "100ms"
	}
	svc := extStartServe(t, extConfig(t, env, "--sweep-interval="+sweep))

	adminOpts := env.admin
	if adminOpts == nil {
		adminOpts = env.client
	}
	st := extWaitReady(t, svc, extDial(t, env.url, adminOpts...))
	wantLiveness := "sweep"
	if advisories {
		wantLiveness = "advisories+sweep"
	}
	if st.Liveness != wantLiveness {
		t.Errorf("status liveness = %q, want %q", st.Liveness, wantLiveness)
	}
	if st.LastSweep.IsZero() {
		t.Errorf("status has no last sweep: the service could not list connections (%+v)", st)
	}

	holder := extDial(t, env.url, env.client...)
	other := extDial(t, env.url, env.client...)
	watcher := extDial(t, env.url, env.client...)
	owner := extOwner(t, holder)
	lost, err := watcher.SubscribeSync(subjects.LostSubject(subjects.DefaultPrefix, owner))
	if err != nil {
		t.Fatal(err)
	}
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}

	first := extTryLock(t, holder, "x", owner)
	if !first.Locked || first.Key == "" || first.Token == 0 || first.Name != "x" {
		t.Fatalf("trylock x: %+v, want a grant", first)
	}
	if !first.ExpiresAt.IsZero() {
		t.Fatalf("trylock x with an owner got a lock timeout (%v): the owner header was not used", first.ExpiresAt)
	}
	otherOwner := extOwner(t, other)
	if r := extTryLock(t, other, "x", otherOwner); r.Locked {
		t.Fatalf("second trylock x while held: %+v, want locked false", r)
	}

	holder.Close()
	var second subjects.LockResponse
	deadline := time.Now().Add(extWaitTimeout)
	for {
		second = extTryLock(t, other, "x", otherOwner)
		if second.Locked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the closed holder's lock was not freed within %s (liveness %s)", extWaitTimeout, wantLiveness)
		}
		time.Sleep(extPoll)
	}
	if second.Token <= first.Token {
		t.Errorf("fencing token went from %d to %d", first.Token, second.Token)
	}

	msg, err := lost.NextMsg(extWaitTimeout)
	if err != nil {
		t.Fatalf("no lost notice on %s: %v", lost.Subject, err)
	}
	var notice subjects.LostNotice
	if err := json.Unmarshal(msg.Data, &notice); err != nil {
		t.Fatalf("lost notice %q: %v", msg.Data, err)
	}
	if notice.Name != "x" || notice.Token != first.Token || notice.Reason != "released-on-disconnect" {
		t.Errorf("lost notice %+v, want name x, token %d, reason released-on-disconnect", notice, first.Token)
	}

	if env.more != nil {
		env.more(t)
	}
	svc.stop()
	extCheckNoSecrets(t, svc.logs, append(env.secrets, first.Key, second.Key)...)
}

// extUserPasswordEnv: users with passwords in an APP and a SYS account, each
// with the permissions that docs/security.md gives it. The lock client
// receives its replies under its own inbox prefix, the only inboxes it may
// read.
func extUserPasswordEnv(t *testing.T) extEnv {
	opts, pw := extUserOptions(t, true)
	ns := extStartNATS(t, opts)
	return extEnv{
		url:     ns.ClientURL(),
		app:     natsCredentials{User: "ldlm", Password: pw.service},
		system:  natsCredentials{User: "ldlm-system", Password: pw.system},
		client:  []nats.Option{nats.UserInfo("app", pw.app), nats.CustomInboxPrefix("_INBOX.app")},
		admin:   []nats.Option{nats.UserInfo("admin", pw.admin)},
		secrets: []string{pw.service, pw.system, pw.app, pw.admin},
	}
}

// extTokenEnv: a server with one token, so one account: no system account
// user can exist, and the service follows liveness by its sweep alone, with
// $SYS.REQ.ACCOUNT.PING.CONNZ.
func extTokenEnv(t *testing.T) extEnv {
	token := extSecret(t)
	ns := extStartNATS(t, &server.Options{Authorization: token})
	return extEnv{
		url:     ns.ClientURL(),
		app:     natsCredentials{Token: token},
		client:  []nats.Option{nats.Token(token)},
		secrets: []string{token},
	}
}

// extNKeyEnv: nkey users, the service's and the system user's seeds in
// files.
func extNKeyEnv(t *testing.T) extEnv {
	dir := t.TempDir()
	app, sys := server.NewAccount("APP"), server.NewAccount("SYS")
	svcPub, svcSeed, svcFile := extNKeyUser(t, dir, "service")
	appPub, appSeed, appFile := extNKeyUser(t, dir, "app")
	sysPub, sysSeed, sysFile := extNKeyUser(t, dir, "system")
	ns := extStartNATS(t, &server.Options{
		Accounts:      []*server.Account{app, sys},
		SystemAccount: "SYS",
		Nkeys: []*server.NkeyUser{
			{Nkey: svcPub, Account: app},
			{Nkey: appPub, Account: app},
			{Nkey: sysPub, Account: sys},
		},
	})
	clientOpt, err := nats.NkeyOptionFromSeed(appFile)
	if err != nil {
		t.Fatal(err)
	}
	return extEnv{
		url:     ns.ClientURL(),
		app:     natsCredentials{NKeyFile: svcFile},
		system:  natsCredentials{NKeyFile: sysFile},
		client:  []nats.Option{clientOpt},
		secrets: []string{svcSeed, appSeed, sysSeed},
	}
}

func extNKeyUser(t *testing.T, dir, name string) (pub, seed, file string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err = kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	return pub, string(s), extWriteFile(t, dir, name+".nk", s)
}

// extJWTEnv: operator mode. An operator signs a system account and an
// application account, held by a memory resolver; each account signs its
// users, whose JWT and seed are written as .creds files.
func extJWTEnv(t *testing.T) extEnv {
	dir := t.TempDir()
	opKP, opPub := extKeyPair(t, nkeys.CreateOperator)
	sysKP, sysPub := extKeyPair(t, nkeys.CreateAccount)
	appKP, appPub := extKeyPair(t, nkeys.CreateAccount)

	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "ldlm-test-operator"
	oc.SystemAccount = sysPub
	opJWT, err := oc.Encode(opKP)
	if err != nil {
		t.Fatal(err)
	}
	if oc, err = jwt.DecodeOperatorClaims(opJWT); err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	for _, a := range []struct {
		pub, name string
	}{{sysPub, "SYS"}, {appPub, "APP"}} {
		ac := jwt.NewAccountClaims(a.pub)
		ac.Name = a.name
		accJWT, err := ac.Encode(opKP)
		if err != nil {
			t.Fatal(err)
		}
		if err := resolver.Store(a.pub, accJWT); err != nil {
			t.Fatal(err)
		}
	}
	creds := func(accKP nkeys.KeyPair, name string) (file string, secret string) {
		ukp, upub := extKeyPair(t, nkeys.CreateUser)
		uc := jwt.NewUserClaims(upub)
		uc.Name = name
		userJWT, err := uc.Encode(accKP)
		if err != nil {
			t.Fatal(err)
		}
		seed, err := ukp.Seed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := jwt.FormatUserConfig(userJWT, seed)
		if err != nil {
			t.Fatal(err)
		}
		return extWriteFile(t, dir, name+".creds", b), string(seed)
	}
	svcCreds, svcSeed := creds(appKP, "ldlm")
	appCreds, appSeed := creds(appKP, "app")
	sysCreds, sysSeed := creds(sysKP, "ldlm-system")

	ns := extStartNATS(t, &server.Options{
		TrustedOperators: []*jwt.OperatorClaims{oc},
		AccountResolver:  resolver,
		SystemAccount:    sysPub,
	})
	return extEnv{
		url:     ns.ClientURL(),
		app:     natsCredentials{CredsFile: svcCreds},
		system:  natsCredentials{CredsFile: sysCreds},
		client:  []nats.Option{nats.UserCredentials(appCreds)},
		secrets: []string{svcSeed, appSeed, sysSeed},
	}
}

func extKeyPair(t *testing.T, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, string) {
	t.Helper()
	kp, err := create()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return kp, pub
}

// extTLSEnv: users with passwords over TLS. Without mutual, the service
// and clients verify the server against the test CA; with it, the server
// also requires and verifies their certificates. Both of the service's
// connections get the TLS settings.
func extTLSEnv(t *testing.T, mutual bool) extEnv {
	pki := extNewPKI(t, t.TempDir())
	opts, pw := extUserOptions(t, false)
	extTLSOptions(t, opts, pki, mutual)
	ns := extStartNATS(t, opts)
	tlsCreds := natsCredentials{TLS: tlsFiles{CA: pki.ca}}
	client := []nats.Option{nats.UserInfo("app", pw.app), nats.RootCAs(pki.ca)}
	if mutual {
		tlsCreds.TLS.Cert, tlsCreds.TLS.Key = pki.clientCert, pki.clientKey
		client = append(client, nats.ClientCert(pki.clientCert, pki.clientKey))
	}
	app, sys := tlsCreds, tlsCreds
	app.User, app.Password = "ldlm", pw.service
	sys.User, sys.Password = "ldlm-system", pw.system
	return extEnv{
		url:     ns.ClientURL(),
		app:     app,
		system:  sys,
		client:  client,
		secrets: []string{pw.service, pw.system, pw.app},
	}
}

// TestExternalSecurityDocConfig runs the service against the nats-server
// configuration of docs/security.md, with the users and permissions it
// documents: the service, its system user, an application that reads only
// its own inboxes, and an operator.
func TestExternalSecurityDocConfig(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(doc), "```hcl\n")
	if ok {
		block, _, ok = strings.Cut(block, "```")
	}
	if !ok || !strings.Contains(block, "accounts") {
		t.Fatal("docs/security.md has no ```hcl block with the server configuration")
	}
	opts, err := server.ProcessConfigFile(extWriteFile(t, t.TempDir(), "nats.conf", []byte(block)))
	if err != nil {
		t.Fatalf("the configuration of docs/security.md: %v", err)
	}
	ns := extStartNATS(t, opts)
	natsURL := ns.ClientURL()
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}) // the violations are expected
	env := extEnv{
		url:    natsURL,
		app:    natsCredentials{User: "ldlm", Password: "CHANGE-ME-service"},
		system: natsCredentials{User: "ldlm-system", Password: "CHANGE-ME-system"},
		client: []nats.Option{nats.UserInfo("orders", "CHANGE-ME-orders"), nats.CustomInboxPrefix("_INBOX.orders")},
		admin:  []nats.Option{nats.UserInfo("admin", "CHANGE-ME-admin")},
		more: func(t *testing.T) {
			// The application may not administer, nor read replies outside
			// its own inboxes. Both requests must fail; how fast does not
			// matter.
			app := extDial(t, natsURL, nats.UserInfo("orders", "CHANGE-ME-orders"), nats.CustomInboxPrefix("_INBOX.orders"), quiet)
			if msg, err := app.Request(subjects.AdminSubject(subjects.DefaultPrefix, subjects.OpAdminList, ""), nil, 2*time.Second); err == nil {
				t.Errorf("the application listed the locks: %s", msg.Data)
			}
			plain := extDial(t, natsURL, nats.UserInfo("orders", "CHANGE-ME-orders"), quiet)
			if msg, err := plain.Request(subjects.DefaultPrefix+".trylock.inbox-check", nil, 2*time.Second); err == nil {
				t.Errorf("the application read a reply on another inbox: %s", msg.Data)
			}
		},
	}
	extCheckService(t, env)
}

// TestExternalConnectErrors: credentials the server refuses make serve
// return an error at once, naming the URL, never the secret.
func TestExternalConnectErrors(t *testing.T) {
	t.Parallel()
	opts, pw := extUserOptions(t, false)
	plain := extStartNATS(t, opts)
	plainURL := plain.ClientURL()
	hostPort := strings.TrimPrefix(plainURL, "nats://")

	dir := t.TempDir()
	pki := extNewPKI(t, filepath.Join(dir, "good"))
	otherPKI := extNewPKI(t, filepath.Join(dir, "other"))
	tlsOpts, tlsPW := extUserOptions(t, false)
	extTLSOptions(t, tlsOpts, pki, true)
	mtls := extStartNATS(t, tlsOpts)
	mtlsURL := mtls.ClientURL()

	wrong := "wrong-" + extSecret(t)
	cases := []struct {
		name string
		args []string
		want []string // in the error
	}{
		{"wrong-password", []string{"--nats-url", plainURL, "--nats-user=ldlm", "--nats-password=" + wrong},
			[]string{plainURL, "Authorization Violation"}},
		{"wrong-system-password", []string{"--nats-url", plainURL, "--nats-user=ldlm", "--nats-password=" + pw.service,
			"--system-user=ldlm-system", "--system-password=" + wrong},
			[]string{"system account", plainURL, "Authorization Violation"}},
		{"wrong-password-in-url", []string{"--nats-url", "nats://ldlm:" + wrong + "@" + hostPort},
			[]string{hostPort, "Authorization Violation"}},
		{"wrong-token-in-url", []string{"--nats-url", "nats://" + wrong + "@" + hostPort},
			[]string{hostPort, "Authorization Violation"}},
		{"missing-nkey-file", []string{"--nats-url", plainURL, "--nats-nkey=" + filepath.Join(dir, "missing.nk")},
			[]string{"nkey seed file"}},
		{"wrong-ca", []string{"--nats-url", mtlsURL, "--nats-user=ldlm", "--nats-password=" + tlsPW.service,
			"--nats-tls-ca=" + otherPKI.ca, "--nats-tls-cert=" + pki.clientCert, "--nats-tls-key=" + pki.clientKey},
			[]string{mtlsURL, "certificate"}},
		{"no-client-cert", []string{"--nats-url", mtlsURL, "--nats-user=ldlm", "--nats-password=" + tlsPW.service,
			"--nats-tls-ca=" + pki.ca},
			[]string{mtlsURL}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseServerConfig(tc.args, io.Discard)
			if err != nil {
				t.Fatalf("configuration: %v", err)
			}
			logs := &ldlmtest.SyncBuffer{}
			err = extServeFails(t, cfg, logs)
			t.Logf("serve: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("serve: %v\nwant an error containing %q", err, w)
				}
			}
			extCheckNoSecrets(t, logs, wrong, pw.service, tlsPW.service)
			if strings.Contains(err.Error(), wrong) {
				t.Errorf("serve's error shows the secret: %v", err)
			}
		})
	}
}

// TestExternalURLCredentials: credentials may be given in the URLs
// themselves, the system connection's in LDLM_SYSTEM_URL alone; the
// service's log, reconnects included, never shows them.
func TestExternalURLCredentials(t *testing.T) {
	t.Parallel()
	opts, pw := extUserOptions(t, false)
	ns := extStartNATS(t, opts)
	u, err := url.Parse(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	appURL := "nats://ldlm:" + pw.service + "@" + u.Host
	sysURL := "nats://ldlm-system:" + pw.system + "@" + u.Host
	svc := extStartServe(t, extConfig(t, extEnv{url: appURL, systemURL: sysURL}, "--sweep-interval=1h"))
	admin := extDial(t, ns.ClientURL(), nats.UserInfo("admin", pw.admin), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	st := extWaitReady(t, svc, admin)
	if st.Liveness != "advisories+sweep" {
		t.Errorf("liveness %q with system credentials in LDLM_SYSTEM_URL: want advisories+sweep", st.Liveness)
	}

	// Restart the NATS server on the same port, once the service has
	// finished starting: it reconnects and says so in its log.
	extWaitLog(t, svc.logs, "lock service ready")
	ns.Shutdown()
	ns.WaitForShutdown()
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	again, _ := extUserOptionsWith(pw, false)
	again.Port = port
	extStartNATSOn(t, again)
	extWaitLog(t, svc.logs, "reconnected to NATS")
	extWaitReady(t, svc, admin)
	svc.stop()
	extCheckNoSecrets(t, svc.logs, pw.service, pw.system)
}

// TestExternalReconnectAfterAuthErrors: a NATS server that, for a while,
// refuses the service's credentials (a password rotated on the server
// before the service, an account being updated) must not end the service's
// connection for good: when the server takes them again, the service
// answers again.
func TestExternalReconnectAfterAuthErrors(t *testing.T) {
	t.Parallel()
	opts, pw := extUserOptions(t, false)
	ns := extStartNATS(t, opts)
	u, err := url.Parse(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	svc := extStartServe(t, extConfig(t, extEnv{
		url:    ns.ClientURL(),
		app:    natsCredentials{User: "ldlm", Password: pw.service},
		system: natsCredentials{User: "ldlm-system", Password: pw.system},
	}, "--sweep-interval=1h"))
	admin := extDial(t, ns.ClientURL(), nats.UserInfo("admin", pw.admin), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	extWaitReady(t, svc, admin)
	extWaitLog(t, svc.logs, "lock service ready")

	// The same server, restarted with another password for the service:
	// nats.go gives up on a server that refuses the same credentials twice
	// in a row, unless told not to.
	ns.Shutdown()
	ns.WaitForShutdown()
	rotated := pw
	rotated.service = extSecret(t)
	refusing, _ := extUserOptionsWith(rotated, false)
	refusing.Port = port
	ns = extStartNATSOn(t, refusing)
	deadline := time.Now().Add(extWaitTimeout)
	for strings.Count(strings.ToLower(svc.logs.String()), "authorization violation") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the service's reconnects were not refused three times within %s", extWaitTimeout)
		}
		time.Sleep(extPoll)
	}

	// The server takes the service's password again.
	ns.Shutdown()
	ns.WaitForShutdown()
	again, _ := extUserOptionsWith(pw, false)
	again.Port = port
	extStartNATSOn(t, again)
	extWaitReady(t, svc, admin)
	svc.stop()
	extCheckNoSecrets(t, svc.logs, pw.service, rotated.service, pw.system)
}

// TestExternalPermissionViolationLogged: a permission the service lacks
// (here: announcing itself on ldlm.instance.>) is an asynchronous error of
// its connection, which must reach the log rather than vanish.
func TestExternalPermissionViolationLogged(t *testing.T) {
	t.Parallel()
	opts, pw := extUserOptions(t, true)
	pub := opts.Users[0].Permissions.Publish // the service's
	pub.Allow = slices.DeleteFunc(pub.Allow, func(s string) bool { return s == "ldlm.instance.>" })
	ns := extStartNATS(t, opts)
	svc := extStartServe(t, extConfig(t, extEnv{
		url:    ns.ClientURL(),
		app:    natsCredentials{User: "ldlm", Password: pw.service},
		system: natsCredentials{User: "ldlm-system", Password: pw.system},
	}))
	extWaitReady(t, svc, extDial(t, ns.ClientURL(), nats.UserInfo("admin", pw.admin)))
	extWaitLog(t, svc.logs, `Permissions Violation for Publish to \"ldlm.instance.started\"`)
}

func TestExternalRedactURLs(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                       "nats://127.0.0.1:4222",
		"nats://u:secret@a:4222, tls://secret@b:4222": "nats://REDACTED@a:4222,tls://REDACTED@b:4222",
		"u:secret@a:4222":                             "nats://REDACTED@a:4222",
		"nats://u:sec%zzret@a:4222":                   "(unparsable URL)",
		"":                                            "",
	} {
		if got := redactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

// extWaitLog polls logs until it contains s.
func extWaitLog(t *testing.T, logs *ldlmtest.SyncBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(extWaitTimeout)
	for !strings.Contains(logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("the service's log has no %q within %s", s, extWaitTimeout)
		}
		time.Sleep(extPoll)
	}
}

// ---- the service ----

// extConfig builds the service's configuration from env as the flags of
// `ldlm server` would.
func extConfig(t *testing.T, env extEnv, extra ...string) serverConfig {
	t.Helper()
	args := []string{"--nats-url", env.url}
	args = append(args, extCredArgs("nats-", env.app)...)
	args = append(args, extCredArgs("system-", env.system)...)
	if env.systemURL != "" {
		args = append(args, "--system-url", env.systemURL)
	}
	cfg, err := parseServerConfig(append(args, extra...), io.Discard)
	if err != nil {
		t.Fatalf("configuration %q: %v", args, err)
	}
	return cfg
}

func extCredArgs(prefix string, c natsCredentials) []string {
	var args []string
	add := func(flag, v string) {
		if v != "" {
			args = append(args, "--"+prefix+flag+"="+v)
		}
	}
	add("user", c.User)
	add("password", c.Password)
	add("token", c.Token)
	add("creds", c.CredsFile)
	add("nkey", c.NKeyFile)
	add("tls-ca", c.TLS.CA)
	add("tls-cert", c.TLS.Cert)
	add("tls-key", c.TLS.Key)
	return args
}

// extService is serve running in a goroutine.
type extService struct {
	logs *ldlmtest.SyncBuffer
	done chan struct{} // closed when serve returned
	err  error         // serve's result, set before done is closed
	stop func()        // ends serve and waits for it; idempotent
}

func extStartServe(t *testing.T, cfg serverConfig) *extService {
	t.Helper()
	s := &extService{logs: &ldlmtest.SyncBuffer{}, done: make(chan struct{})}
	log := slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		s.err = serve(ctx, cfg, log)
		close(s.done)
	}()
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-s.done:
				if s.err != nil {
					t.Errorf("serve: %v", s.err)
				}
			case <-time.After(extWaitTimeout):
				t.Errorf("serve did not return within %s of its context ending", extWaitTimeout)
			}
		})
	}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("service log:\n%s", s.logs)
		}
	})
	return s
}

// extServeFails runs serve, which must return an error within the bound.
func extServeFails(t *testing.T, cfg serverConfig, logs *ldlmtest.SyncBuffer) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, log) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("serve returned no error")
		}
		return err
	case <-time.After(extWaitTimeout):
		cancel()
		<-done
		t.Fatalf("serve still running after %s; want a connection error\n%s", extWaitTimeout, logs)
		return nil
	}
}

// extWaitReady polls ldlm.admin.status until the service answers.
func extWaitReady(t *testing.T, s *extService, nc *nats.Conn) subjects.StatusResponse {
	t.Helper()
	subject := subjects.AdminSubject(subjects.DefaultPrefix, subjects.OpAdminStatus, "")
	deadline := time.Now().Add(extStartTimeout)
	for {
		select {
		case <-s.done:
			t.Fatalf("serve returned before answering: %v", s.err)
		default:
		}
		msg, err := nc.Request(subject, nil, 2*time.Second)
		if err == nil {
			var st subjects.StatusResponse
			if err := json.Unmarshal(msg.Data, &st); err != nil || st.Error != nil {
				t.Fatalf("status %q: %v", msg.Data, err)
			}
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("the service did not answer %s within %s: %v", subject, extStartTimeout, err)
		}
		time.Sleep(extPoll)
	}
}

func extTryLock(t *testing.T, nc *nats.Conn, name, owner string) subjects.LockResponse {
	t.Helper()
	msg := nats.NewMsg(subjects.DefaultPrefix + "." + subjects.OpTryLock + "." + name)
	if owner != "" {
		msg.Header.Set(subjects.HeaderOwner, owner)
	}
	reply, err := nc.RequestMsg(msg, extReqTimeout)
	if err != nil {
		t.Fatalf("trylock %s: %v", name, err)
	}
	var r subjects.LockResponse
	if err := json.Unmarshal(reply.Data, &r); err != nil {
		t.Fatalf("trylock %s: reply %q: %v", name, reply.Data, err)
	}
	if r.Error != nil {
		t.Fatalf("trylock %s: %s", name, r.Error)
	}
	return r
}

// extOwner is the Ldlm-Owner header value of nc's connection.
func extOwner(t *testing.T, nc *nats.Conn) string {
	t.Helper()
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	return subjects.FormatOwner(nc.ConnectedServerId(), cid)
}

func extDial(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.Timeout(extReqTimeout)}, opts...)...)
	if err != nil {
		t.Fatalf("test client connecting to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func extCheckNoSecrets(t *testing.T, logs *ldlmtest.SyncBuffer, secrets ...string) {
	t.Helper()
	text := logs.String()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("the service's log shows a secret (%.6s…)", s)
		}
	}
}

// ---- the NATS server ----

// extStartNATS starts opts on 127.0.0.1 at a random port.
func extStartNATS(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Port = server.RANDOM_PORT
	return extStartNATSOn(t, opts)
}

// extStartNATSOn starts opts on 127.0.0.1 at opts.Port.
func extStartNATSOn(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host = "127.0.0.1"
	opts.ServerName = extServerName
	opts.NoLog = true
	opts.NoSigs = true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(extStartTimeout) {
		t.Fatalf("nats-server not ready within %s", extStartTimeout)
	}
	return ns
}

// extUsers are the passwords of extUserOptions' users.
type extUsers struct{ service, app, admin, system string }

// extUserOptions: accounts APP (users ldlm, app, admin) and SYS (user
// ldlm-system, the system account), with random passwords; with perms, each
// user has the permissions docs/security.md gives it.
func extUserOptions(t *testing.T, perms bool) (*server.Options, extUsers) {
	pw := extUsers{service: extSecret(t), app: extSecret(t), admin: extSecret(t), system: extSecret(t)}
	return extUserOptionsWith(pw, perms)
}

func extUserOptionsWith(pw extUsers, perms bool) (*server.Options, extUsers) {
	app, sys := server.NewAccount("APP"), server.NewAccount("SYS")
	users := []*server.User{
		{Username: "ldlm", Password: pw.service, Account: app},
		{Username: "app", Password: pw.app, Account: app},
		{Username: "admin", Password: pw.admin, Account: app},
		{Username: "ldlm-system", Password: pw.system, Account: sys},
	}
	if perms {
		notices := []string{"ldlm.lost.>", "ldlm.instance.>", "ldlm.events.>"}
		users[0].Permissions = &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: append([]string{"_INBOX.>", "$SRV.>", "$SYS.REQ.ACCOUNT.PING.CONNZ"}, notices...)},
			Subscribe: &server.SubjectPermission{Allow: []string{"ldlm.>", "$SRV.>", "_INBOX.>"}},
		}
		users[1].Permissions = &server.Permissions{
			Publish: &server.SubjectPermission{
				Allow: []string{"ldlm.lock.>", "ldlm.trylock.>", "ldlm.unlock.>", "ldlm.renew.>"},
				Deny:  []string{"ldlm.admin.>"},
			},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.app.>", "ldlm.lost.>", "ldlm.instance.>"}},
		}
		users[2].Permissions = &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"ldlm.>", "$SRV.>"}, Deny: notices},
			Subscribe: &server.SubjectPermission{Allow: append([]string{"_INBOX.>"}, notices...)},
		}
		users[3].Permissions = &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"$SYS.REQ.SERVER.PING.CONNZ"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"$SYS.ACCOUNT.*.DISCONNECT", "_INBOX.>"}},
		}
	}
	return &server.Options{Accounts: []*server.Account{app, sys}, SystemAccount: "SYS", Users: users}, pw
}

func extTLSOptions(t *testing.T, opts *server.Options, pki extPKI, verify bool) {
	t.Helper()
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: pki.serverCert, KeyFile: pki.serverKey, CaFile: pki.ca, Verify: verify, Timeout: 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	opts.TLS = true
	opts.TLSConfig = tc
	opts.TLSVerify = verify
	opts.TLSTimeout = 10 // seconds; the default 2 is short for a loaded machine
}

// extPKI is a test CA and the files of a server and a client certificate
// it signed.
type extPKI struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func extNewPKI(t *testing.T, dir string) extPKI {
	t.Helper()
	p := testpki.New(t, dir)
	return extPKI{ca: p.CA, serverCert: p.ServerCert, serverKey: p.ServerKey, clientCert: p.ClientCert, clientKey: p.ClientKey}
}

func extWriteFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func extSecret(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}
