package embeddednats

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func TestParseTenants(t *testing.T) {
	got, err := ParseTenants(" A:alice:pa, B:bob:p:b ,")
	if err != nil || len(got) != 2 || got[0] != (Tenant{"A", "alice", "pa"}) || got[1] != (Tenant{"B", "bob", "p:b"}) {
		t.Fatalf("ParseTenants = %+v, %v", got, err)
	}
	for _, bad := range []string{"A", "A:alice", "A::p", "A:alice:"} {
		if _, err := ParseTenants(bad); err == nil {
			t.Errorf("ParseTenants(%q) must fail", bad)
		}
	}
}

func TestCheckTenants(t *testing.T) {
	for _, bad := range [][]Tenant{
		{{Account: "a b", User: "u", Password: "p"}},
		{{Account: SystemAccount, User: "u", Password: "p"}},
		{{Account: "A", User: "u", Password: "p"}, {Account: "A", User: "v", Password: "q"}},
	} {
		if err := checkTenants(bad); err == nil {
			t.Errorf("checkTenants(%+v) must fail", bad)
		}
	}
}

// The generated tenant configuration and the shipped example are both
// accepted by the real server's config parser.
func TestTenantConfigsParse(t *testing.T) {
	var o server.Options
	if err := o.ProcessConfigString(TenantsConfig("ldlm", []Tenant{{"A", "alice", "pa"}}, "s", "l")); err != nil {
		t.Fatalf("generated config: %v", err)
	}
	if _, err := server.ProcessConfigFile("../deploy/tenants.conf"); err != nil {
		t.Fatalf("deploy/tenants.conf: %v", err)
	}
}

func TestStartAndConnect(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"anonymous app account", Config{Listen: "127.0.0.1:0"}},
		{"in-process only", Config{}},
		{"tenants", Config{Listen: "127.0.0.1:0", Tenants: []Tenant{{"A", "alice", "pa"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := Start(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Shutdown()
			if (srv.ClientURL() == "") != (tt.cfg.Listen == "") {
				t.Fatalf("ClientURL %q for listen %q", srv.ClientURL(), tt.cfg.Listen)
			}
			app, err := srv.ConnectApp()
			if err != nil {
				t.Fatal(err)
			}
			defer app.Close()
			sys, err := srv.ConnectSystem()
			if err != nil {
				t.Fatal(err)
			}
			defer sys.Close()
			// The system connection can ask for the server's connections.
			if _, err := sys.Request("$SYS.REQ.SERVER.PING.CONNZ", nil, 5*time.Second); err != nil {
				t.Fatalf("system account request: %v", err)
			}
			if len(tt.cfg.Tenants) > 0 {
				if _, err := nats.Connect(srv.ClientURL()); err == nil || !strings.Contains(err.Error(), "Authorization") {
					t.Fatalf("anonymous client in tenant mode: %v, want an authorization error", err)
				}
			}
		})
	}
}

func TestListenErrors(t *testing.T) {
	srv, err := Start(Config{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	taken := strings.TrimPrefix(srv.ClientURL(), "nats://")
	for _, listen := range []string{taken, "nonsense", "127.0.0.1:99999"} {
		if s, err := Start(Config{Listen: listen}); err == nil {
			s.Shutdown()
			t.Errorf("Start with listen %q must fail", listen)
		}
	}
}
