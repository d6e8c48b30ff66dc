package embeddednats

// Tests of the embedded server's security: every way a TCP client logs in
// lets in exactly the right credentials, into the application account,
// while the service's in-process connections keep working; TLS and mutual
// TLS; configuration files; the warning condition for an open server.
//
// Every wait is bounded: the tests run on a loaded 2-core machine.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"golang.org/x/crypto/bcrypt"

	"github.com/ldlm-io/ldlm/internal/testpki"
)

const waitTimeout = 20 * time.Second

// startFor starts cfg on a free loopback port and shuts it down when the
// test ends.
func startFor(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	srv, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// accountOf connects a TCP client with opts and returns the account the
// server put it in, as the server's CONNECT advisory names it, heard on
// the service's in-process system connection (which so is proven to work
// too). A refused client gives the error.
func accountOf(t *testing.T, srv *Server, opts ...nats.Option) (string, error) {
	t.Helper()
	sys, err := srv.ConnectSystem()
	if err != nil {
		t.Fatalf("system connection: %v", err)
	}
	defer sys.Close()
	sub, err := sys.SubscribeSync("$SYS.ACCOUNT.*.CONNECT")
	if err != nil {
		t.Fatal(err)
	}
	if err := sys.Flush(); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(srv.ClientURL(), append([]nats.Option{nats.NoReconnect(), nats.Timeout(10 * time.Second), nats.Name("probe")}, opts...)...)
	if err != nil {
		return "", err
	}
	defer nc.Close()
	for deadline := time.Now().Add(waitTimeout); time.Now().Before(deadline); {
		msg, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var ev server.ConnectEventMsg
		if err := json.Unmarshal(msg.Data, &ev); err != nil {
			t.Fatalf("advisory: %v", err)
		}
		if ev.Client.Name == "probe" {
			return ev.Client.Account, nil
		}
	}
	t.Fatalf("no CONNECT advisory for the client within %s", waitTimeout)
	return "", nil
}

// userNkey makes a user nkey and the client option that logs in with it.
func userNkey(t *testing.T) (pub string, opt nats.Option) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err = kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub, nats.Nkey(pub, kp.Sign)
}

// both is the client option of a and b.
func both(a, b nats.Option) nats.Option {
	return func(o *nats.Options) error {
		if err := a(o); err != nil {
			return err
		}
		return b(o)
	}
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestClientAuth: with each way to log in, the right credentials land in
// the application account and every other attempt is refused; the
// service's in-process connections work in each.
func TestClientAuth(t *testing.T) {
	t.Parallel()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	pub, withNkey := userNkey(t)
	_, withOtherNkey := userNkey(t)
	file := writeFile(t, "nats.conf", `
accounts {
  APP {
    users: [
      {user: alice, password: "alice-pw"}
      {user: bob, password: "bob-pw", permissions: {publish: {deny: "ldlm.admin.>"}}}
    ]
  }
  OTHER { users: [{user: carol, password: "carol-pw"}] }
}
`)
	anonFile := writeFile(t, "anon.conf", `
accounts { APP { users: [{user: guest}] } }
no_auth_user: guest
`)
	none := nats.Option(func(*nats.Options) error { return nil })
	tests := []struct {
		name    string
		cfg     Config
		good    []nats.Option // each lands in APP
		refused []nats.Option
	}{
		{"no auth: anonymous", Config{}, []nats.Option{none}, nil},
		{"user and password", Config{Auth: Auth{User: "u", Password: "s3cret"}},
			[]nats.Option{nats.UserInfo("u", "s3cret")},
			[]nats.Option{none, nats.UserInfo("u", "wrong"), nats.UserInfo("x", "s3cret"), nats.Token("s3cret"),
				nats.UserInfo(systemUser, "s3cret"), nats.UserInfo(serviceUser, "s3cret"), nats.UserInfo(appUser, "")}},
		{"bcrypt password", Config{Auth: Auth{User: "u", Password: string(hash)}},
			[]nats.Option{nats.UserInfo("u", "s3cret")},
			[]nats.Option{none, nats.UserInfo("u", string(hash))}},
		{"token", Config{Auth: Auth{Token: "tok3n"}},
			[]nats.Option{nats.Token("tok3n")},
			[]nats.Option{none, nats.Token("wrong"), nats.UserInfo("u", "tok3n"), nats.UserInfo(systemUser, "tok3n"),
				nats.UserInfo(serviceUser, ""), nats.UserInfo(appUser, "")}},
		{"nkeys", Config{Auth: Auth{Nkeys: []string{pub}}},
			[]nats.Option{withNkey},
			[]nats.Option{none, withOtherNkey, nats.UserInfo(appUser, "")}},
		{"user and nkeys", Config{Auth: Auth{User: "u", Password: "s3cret", Nkeys: []string{pub}}},
			[]nats.Option{withNkey, nats.UserInfo("u", "s3cret")},
			[]nats.Option{none, withOtherNkey}},
		{"configuration file", Config{ConfigFile: file},
			[]nats.Option{nats.UserInfo("alice", "alice-pw"), nats.UserInfo("bob", "bob-pw")},
			[]nats.Option{none, nats.UserInfo("alice", "bob-pw"), nats.UserInfo(appUser, "")}},
		{"configuration file and a user", Config{ConfigFile: file, Auth: Auth{User: "u", Password: "s3cret"}},
			[]nats.Option{nats.UserInfo("alice", "alice-pw"), nats.UserInfo("u", "s3cret")},
			[]nats.Option{none}},
		{"configuration file with no_auth_user", Config{ConfigFile: anonFile}, []nats.Option{none}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startFor(t, tc.cfg)
			app, err := srv.ConnectApp()
			if err != nil {
				t.Fatalf("the service's in-process connection: %v", err)
			}
			defer app.Close()
			for i, opt := range tc.good {
				if acc, err := accountOf(t, srv, opt); err != nil || acc != AppAccount {
					t.Errorf("good credentials #%d: account %q, %v; want %s", i, acc, err, AppAccount)
				}
			}
			for i, opt := range tc.refused {
				if acc, err := accountOf(t, srv, opt); err == nil || !strings.Contains(err.Error(), "Authorization Violation") {
					t.Errorf("wrong credentials #%d: got in (account %q, %v); want an authorization violation", i, acc, err)
				}
			}
			if got := srv.Unprotected(); got {
				t.Errorf("Unprotected() on loopback")
			}
		})
	}

	t.Run("other accounts of the file stay theirs", func(t *testing.T) {
		t.Parallel()
		srv := startFor(t, Config{ConfigFile: file})
		if acc, err := accountOf(t, srv, nats.UserInfo("carol", "carol-pw")); err != nil || acc != "OTHER" {
			t.Errorf("carol: account %q, %v; want OTHER", acc, err)
		}
	})
}

// TestTLS: with a certificate the client port speaks TLS only; with a CA
// it also requires a client certificate signed by it. The service's
// in-process connections need neither.
func TestTLS(t *testing.T) {
	t.Parallel()
	pki := testpki.New(t, t.TempDir())
	tests := []struct {
		name    string
		cfg     Config
		good    []nats.Option
		refused map[string]nats.Option // by what the error mentions
	}{
		{"TLS", Config{TLSCert: pki.ServerCert, TLSKey: pki.ServerKey},
			[]nats.Option{nats.RootCAs(pki.CA)},
			map[string]nats.Option{"certificate": nats.Secure()}},
		{"mutual TLS", Config{TLSCert: pki.ServerCert, TLSKey: pki.ServerKey, TLSCA: pki.CA},
			[]nats.Option{nats.ClientCert(pki.ClientCert, pki.ClientKey)},
			map[string]nats.Option{"certificate": nats.Secure(), "tls": nats.RootCAs(pki.CA)}},
		{"mutual TLS and a password", Config{TLSCert: pki.ServerCert, TLSKey: pki.ServerKey, TLSCA: pki.CA, Auth: Auth{User: "u", Password: "p"}},
			[]nats.Option{nats.ClientCert(pki.ClientCert, pki.ClientKey), nats.UserInfo("u", "p")},
			map[string]nats.Option{"Authorization": both(nats.RootCAs(pki.CA), nats.ClientCert(pki.ClientCert, pki.ClientKey))}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startFor(t, tc.cfg)
			app, err := srv.ConnectApp()
			if err != nil {
				t.Fatalf("the service's in-process connection: %v", err)
			}
			defer app.Close()
			good := append([]nats.Option{nats.RootCAs(pki.CA)}, tc.good...)
			if acc, err := accountOf(t, srv, good...); err != nil || acc != AppAccount {
				t.Errorf("good client: account %q, %v; want %s", acc, err, AppAccount)
			}
			for want, opt := range tc.refused {
				if _, err := accountOf(t, srv, opt); err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("refused client: %v; want an error that mentions %q", err, want)
				}
			}
			// A client that does not speak TLS at all gets nowhere.
			if nc, err := nats.Connect(srv.ClientURL(), nats.NoReconnect(), nats.Timeout(10*time.Second)); err == nil {
				nc.Close()
				t.Errorf("a client without TLS settings got in")
			}
		})
	}
}

// TestUnprotected: the server reports that it lets anyone in only when
// it listens beyond loopback without credentials or client certificates.
func TestUnprotected(t *testing.T) {
	t.Parallel()
	pki := testpki.New(t, t.TempDir())
	tests := []struct {
		listen string
		cfg    Config
		want   bool
	}{
		{"127.0.0.1:0", Config{}, false},
		{"localhost:0", Config{}, false},
		{"0.0.0.0:0", Config{}, true},
		{":0", Config{}, true},
		{"0.0.0.0:0", Config{Auth: Auth{Token: "t"}}, false},
		{"0.0.0.0:0", Config{TLSCert: pki.ServerCert, TLSKey: pki.ServerKey}, true}, // encrypted, but open
		{"0.0.0.0:0", Config{TLSCert: pki.ServerCert, TLSKey: pki.ServerKey, TLSCA: pki.CA}, false},
		{"0.0.0.0:0", Config{Tenants: []Tenant{{"A", "alice", "pa"}}}, false},
		{"", Config{}, false},
	}
	for _, tc := range tests {
		cfg := tc.cfg
		cfg.Listen = tc.listen
		srv, err := Start(cfg)
		if err != nil {
			t.Fatalf("listen %q: %v", tc.listen, err)
		}
		if got := srv.Unprotected(); got != tc.want {
			t.Errorf("listen %q, %+v: Unprotected() = %v, want %v", tc.listen, tc.cfg.Auth, got, tc.want)
		}
		srv.Shutdown()
	}
}

// TestConfigErrors: what cannot work is refused before the server starts,
// each with a message that says what to do.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	pki := testpki.New(t, t.TempDir())
	pub, _ := userNkey(t)
	withUsers := writeFile(t, "users.conf", `accounts { APP { users: [{user: a, password: b}] } }`)
	withTLS := writeFile(t, "tls.conf", "tls { cert_file: \""+pki.ServerCert+"\", key_file: \""+pki.ServerKey+"\" }\n")
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"user without password", Config{Auth: Auth{User: "u"}}, "needs a password"},
		{"password without user", Config{Auth: Auth{Password: "p"}}, "needs a password"},
		{"user named as the service", Config{Auth: Auth{User: serviceUser, Password: "p"}}, "lock service's own"},
		{"user named as the system user", Config{Auth: Auth{User: systemUser, Password: "p"}}, "lock service's own"},
		{"token and user", Config{Auth: Auth{Token: "t", User: "u", Password: "p"}}, "token excludes"},
		{"token and nkeys", Config{Auth: Auth{Token: "t", Nkeys: []string{pub}}}, "token excludes"},
		{"nkey that is a seed", Config{Auth: Auth{Nkeys: []string{"SUAB"}}}, "not a public user nkey"},
		{"account nkey", Config{Auth: Auth{Nkeys: []string{"A" + pub[1:]}}}, "not a public user nkey"},
		{"tenants and a user", Config{Tenants: []Tenant{{"A", "alice", "pa"}}, Auth: Auth{User: "u", Password: "p"}}, "tenants"},
		{"token and a file with users", Config{Auth: Auth{Token: "t"}, ConfigFile: withUsers}, "token excludes"},
		{"TLS in the file and as files", Config{ConfigFile: withTLS, TLSCert: pki.ServerCert, TLSKey: pki.ServerKey}, "tls block"},
		{"certificate without key", Config{TLSCert: pki.ServerCert}, "certificate and its key"},
		{"missing certificate", Config{TLSCert: "/nonexistent.pem", TLSKey: pki.ServerKey}, "/nonexistent.pem"},
		{"missing file", Config{ConfigFile: "/nonexistent.conf"}, "/nonexistent.conf"},
		{"member without a name", Config{Listen: "127.0.0.1:0", Cluster: Cluster{Listen: "127.0.0.1:0"}}, "server name of its own"},
		{"member without a client port", Config{ServerName: "a", Cluster: Cluster{Listen: "127.0.0.1:0"}}, "client listen address"},
		{"routes without a listen address", Config{ServerName: "a", Cluster: Cluster{Routes: []string{"nats-route://127.0.0.1:6222"}}}, "cluster listen address"},
		{"a route that is not a route URL", Config{ServerName: "a", Listen: "127.0.0.1:0", Cluster: Cluster{Listen: "127.0.0.1:0", Routes: []string{"127.0.0.1:6222"}}}, "nats-route://host:port"},
		{"a JetStream member without routes", Config{ServerName: "a", Listen: "127.0.0.1:0", DataDir: t.TempDir(), Cluster: Cluster{Listen: "127.0.0.1:0"}}, "routes of the other members"},
		{"a bad listen address", Config{ServerName: "a", Listen: "127.0.0.1:0", Cluster: Cluster{Listen: "6222"}}, "host:port"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := Start(tc.cfg)
			if err == nil {
				srv.Shutdown()
				t.Fatalf("started; want an error that mentions %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%v\nwant an error that mentions %q", err, tc.want)
			}
		})
	}
}

// TestLoadConfigFile: a file may hold anything nats-server reads except
// what ldlm sets itself or what cannot live beside the service's users.
func TestLoadConfigFile(t *testing.T) {
	t.Parallel()
	pki := testpki.New(t, t.TempDir())
	bad := []struct {
		text, want string
	}{
		{"port: 4333", "listen/host/port"},
		{"listen: 127.0.0.1:4333", "listen/host/port"},
		{"server_name: other", "server_name"},
		{"ping_interval: 5s", "ping_interval"},
		{"authorization { token: t }", "single user or a token"},
		{"authorization { user: u, password: p }", "single user or a token"},
		{"authorization { users: [{user: u, password: p}] }", `user "u" is in no account`},
		{"accounts { APP { users: [{user: ldlm-system, password: p}] } }", "lock service's own"},
		{"accounts { APP { users: [{user: ldlm-service, password: p}] } }", "lock service's own"},
		{"this is { not a config", "embedded NATS configuration"},
		{"tls { cert_file: \"" + pki.ServerCert + "\", key_file: \"" + pki.ServerKey + "\", ca_file: \"" + pki.CA + "\", verify_and_map: true }", "verify_and_map"},
	}
	for _, tc := range bad {
		_, err := LoadConfigFile(writeFile(t, "bad.conf", tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v\nwant an error that mentions %q", tc.text, err, tc.want)
		}
	}
	good := []string{
		"accounts { APP { users: [{user: a, password: b}] }, B { users: [{user: c, password: d}] } }",
		"system_account: ADMIN\naccounts { ADMIN { users: [{user: op, password: x}] } }",
		"jetstream { store_dir: \"" + t.TempDir() + "\" }",
		"max_payload: 65536\nwrite_deadline: \"5s\"",
	}
	for _, text := range good {
		path := writeFile(t, "good.conf", text)
		if _, err := LoadConfigFile(path); err != nil {
			t.Errorf("%q: %v", text, err)
			continue
		}
		srv, err := Start(Config{ConfigFile: path})
		if err != nil {
			t.Errorf("%q: Start: %v", text, err)
			continue
		}
		for name, connect := range map[string]func(...nats.Option) (*nats.Conn, error){"app": srv.ConnectApp, "system": srv.ConnectSystem} {
			nc, err := connect()
			if err != nil {
				t.Errorf("%q: %s connection: %v", text, name, err)
				continue
			}
			if _, err := nc.Request("$SYS.REQ.ACCOUNT.PING.CONNZ", nil, waitTimeout); err != nil && name == "app" {
				t.Errorf("%q: app connection cannot list its account's connections: %v", text, err)
			}
			nc.Close()
		}
		srv.Shutdown()
	}
}
