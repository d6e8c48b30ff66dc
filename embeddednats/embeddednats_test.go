package embeddednats

import (
	"bufio"
	"errors"
	"net"
	"os"
	"slices"
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
		{{Account: "A", User: "u", Password: "p"}, {Account: "B", User: "u", Password: "q"}},
		{{Account: "A", User: systemUser, Password: "p"}},
	} {
		if err := checkTenants(bad); err == nil {
			t.Errorf("checkTenants(%+v) must fail", bad)
		}
	}
	// ParseTenants checks as well, so a bad list is caught before Start.
	for _, bad := range []string{"a b:u:p", "LDLM:u:p", "A:u:p,A:v:q", "A:u:p,B:u:q"} {
		if _, err := ParseTenants(bad); err == nil {
			t.Errorf("ParseTenants(%q) must fail", bad)
		}
	}
}

func TestParseListen(t *testing.T) {
	good := []struct {
		addr string
		host string
		port int
	}{
		{"127.0.0.1:4222", "127.0.0.1", 4222},
		{":4222", "", 4222},
		{"0.0.0.0:0", "0.0.0.0", 0},
		{"[::1]:65535", "::1", 65535},
		{"localhost:4222", "localhost", 4222},
	}
	for _, tt := range good {
		host, port, err := ParseListen(tt.addr)
		if err != nil || host != tt.host || port != tt.port {
			t.Errorf("ParseListen(%q) = %q, %d, %v; want %q, %d", tt.addr, host, port, err, tt.host, tt.port)
		}
	}
	for _, bad := range []string{"", "nonsense", "4222", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:-1",
		"127.0.0.1:http", "a b:4222", "nats://127.0.0.1:4222"} {
		if _, _, err := ParseListen(bad); err == nil || !strings.Contains(err.Error(), "listen address") {
			t.Errorf("ParseListen(%q) = %v, want a listen address error", bad, err)
		}
	}
}

// TestPingSettings: the ping settings reach the server, and with them it
// drops a client that keeps its socket open but never answers a PING (a
// SIGSTOPped process, a frozen VM), while a client that answers stays.
func TestPingSettings(t *testing.T) {
	defaults, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := defaults.NATSServer().Varz(nil)
	defaults.Shutdown()
	if err != nil {
		t.Fatal(err)
	}
	if v.PingInterval != DefaultPingInterval || v.MaxPingsOut != DefaultMaxPingsOut {
		t.Errorf("zero Config: ping interval %s, ping max %d; want %s, %d", v.PingInterval, v.MaxPingsOut, DefaultPingInterval, DefaultMaxPingsOut)
	}
	if _, err := Start(Config{PingInterval: -time.Second}); err == nil {
		t.Error("Start with a negative ping interval must fail")
	}

	const interval, maxOut = 100 * time.Millisecond, 2
	srv, err := Start(Config{Listen: "127.0.0.1:0", PingInterval: interval, MaxPingsOut: maxOut})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if v, err := srv.NATSServer().Varz(nil); err != nil || v.PingInterval != interval || v.MaxPingsOut != maxOut {
		t.Fatalf("varz: %+v, %v; want ping interval %s and max %d", v, err, interval, maxOut)
	}
	live, err := nats.Connect(srv.ClientURL()) // answers every PING
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	// The silent client: a raw TCP connection that says CONNECT and then
	// only reads.
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.ClientURL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The bound only turns a hang into a failure: the server should drop
	// it within about (maxOut+1) x interval.
	const bound = 30 * time.Second
	if err := conn.SetDeadline(time.Now().Add(bound)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "INFO ") {
		t.Fatalf("first line from the server: %q, %v; want INFO", line, err)
	}
	// PING makes the server answer PONG once it has processed CONNECT:
	// the client is then fully connected.
	if _, err := conn.Write([]byte("CONNECT {\"verbose\":false,\"name\":\"silent\"}\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var pings int
	var lines []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the silent client still connected after %s; it read %q", bound, lines)
			}
			break // the server closed the connection
		}
		lines = append(lines, strings.TrimSpace(line))
		if line == "PING\r\n" {
			pings++
		}
	}
	t.Logf("silent client dropped after %s (interval %s, max %d): %q", time.Since(start).Round(time.Millisecond), interval, maxOut, lines)
	if pings != maxOut || !slices.Contains(lines, "-ERR 'Stale Connection'") {
		t.Errorf("the silent client read %q; want %d PINGs, then -ERR 'Stale Connection'", lines, maxOut)
	}
	if !live.IsConnected() {
		t.Error("the client that answers PINGs was dropped too")
	}
	if err := live.Flush(); err != nil {
		t.Errorf("the client that answers PINGs: %v", err)
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

// TestListenLater: with ListenLater the client port stays closed, while
// in-process connections work, until Listen opens it; a configuration
// with a cluster keeps the port opening at start; Listen on a port taken
// meanwhile fails with ErrListen. Unreachable holds only until Listen, and
// only when nothing else (a cluster, leaf nodes, websocket) lets anyone in.
func TestListenLater(t *testing.T) {
	t.Parallel()
	cluster := writeFile(t, "cluster.conf", `
cluster { name: c, listen: "127.0.0.1:-1" }
accounts { APP { users: [{user: guest}] } }
no_auth_user: guest
`)
	leaf := writeFile(t, "leaf.conf", `
leafnodes { listen: "127.0.0.1:-1" }
accounts { APP { users: [{user: guest}] } }
no_auth_user: guest
`)
	websocket := writeFile(t, "websocket.conf", `
websocket { listen: "127.0.0.1:-1", no_tls: true }
accounts { APP { users: [{user: guest}] } }
no_auth_user: guest
`)
	tests := []struct {
		name        string
		cfg         Config
		openedBy    string // "Listen", "Start" or "" (no port)
		unreachable bool   // before Listen
	}{
		{"plain", Config{}, "Listen", true},
		{"token", Config{Auth: Auth{Token: "t0ken"}}, "Listen", true},
		{"cluster in the configuration file", Config{ConfigFile: cluster}, "Start", false},
		{"leaf nodes in the configuration file", Config{ConfigFile: leaf}, "Listen", false},
		{"websocket in the configuration file", Config{ConfigFile: websocket}, "Listen", false},
		{"no listener", Config{}, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.cfg
			cfg.ListenLater = true
			addr := ""
			if tc.openedBy != "" {
				addr = freeAddr(t)
				cfg.Listen = addr
			}
			srv, err := Start(cfg)
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			defer srv.Shutdown()
			app, err := srv.ConnectApp()
			if err != nil {
				t.Fatalf("in-process connection before Listen: %v", err)
			}
			defer app.Close()
			if open := srv.ClientURL() != ""; open != (tc.openedBy == "Start") {
				t.Fatalf("after Start: ClientURL %q; want a port open only if opened by Start", srv.ClientURL())
			}
			if srv.Unreachable() != tc.unreachable {
				t.Fatalf("after Start: Unreachable() = %v, want %v", srv.Unreachable(), tc.unreachable)
			}
			if tc.openedBy == "Listen" {
				if c, err := net.DialTimeout("tcp", addr, waitTimeout); err == nil {
					c.Close()
					t.Fatalf("the port %s accepted a TCP connection before Listen", addr)
				}
			}
			if err := srv.Listen(); err != nil {
				t.Fatalf("Listen: %v", err)
			}
			if srv.Unreachable() {
				t.Fatal("after Listen: Unreachable() = true")
			}
			if tc.openedBy == "" {
				if srv.ClientURL() != "" {
					t.Fatalf("no listen address, yet ClientURL %q", srv.ClientURL())
				}
				return
			}
			if want := "nats://" + addr; srv.ClientURL() != want {
				t.Fatalf("ClientURL %q, want %q", srv.ClientURL(), want)
			}
			// A TCP client reaches the service's in-process connection.
			sub, err := app.SubscribeSync("probe")
			if err != nil || app.Flush() != nil {
				t.Fatalf("subscribe: %v", err)
			}
			nc, err := nats.Connect(srv.ClientURL(), nats.Token(cfg.Auth.Token), nats.Timeout(waitTimeout))
			if err != nil {
				t.Fatalf("TCP client after Listen: %v", err)
			}
			defer nc.Close()
			if err := nc.Publish("probe", []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, err := sub.NextMsg(waitTimeout); err != nil {
				t.Fatalf("the in-process subscriber got nothing from the TCP client: %v", err)
			}
		})
	}

	t.Run("port taken before Listen", func(t *testing.T) {
		t.Parallel()
		addr := freeAddr(t)
		srv, err := Start(Config{Listen: addr, ListenLater: true})
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		defer srv.Shutdown()
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("taking %s: %v", addr, err)
		}
		defer l.Close()
		if err := srv.Listen(); !errors.Is(err, ErrListen) {
			t.Fatalf("Listen on a taken port: %v, want ErrListen", err)
		}
	})
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
