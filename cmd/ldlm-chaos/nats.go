package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Users of the chaos NATS server. The lock service and the workers live in
// the application account APP; the service's second connection and the
// orchestrator's kick requests are in the system account SYS.
const (
	userService  = "ldlm"         // APP: the lock service (LDLM_NATS_USER)
	userSystem   = "ldlm-system"  // SYS: the lock service (LDLM_SYSTEM_USER)
	userApp      = "app"          // APP: workers, holders and the orchestrator
	userOperator = "chaos-system" // SYS: the orchestrator's kicks
)

// natsServer is a NATS server run inside this process on a fixed port, so
// that it can be stopped and started again at the same address. PingInterval
// and MaxPingsOut, when set, bound how long a silent client keeps its
// connection. With StoreDir set it runs JetStream with file storage there,
// for the APP account: the lock service's state in -state jetstream, which
// outlives a restart of the server since the folder stays.
type natsServer struct {
	Port         int
	Passwords    map[string]string // by user
	PingInterval time.Duration
	MaxPingsOut  int
	StoreDir     string
	ns           *server.Server
}

func newNATSServer() (*natsServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	n := &natsServer{Port: port, Passwords: map[string]string{}}
	for _, u := range []string{userService, userSystem, userApp, userOperator} {
		n.Passwords[u] = rand.Text()
	}
	return n, nil
}

// freePort returns a TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// URL is the server's client URL (the same across restarts).
func (n *natsServer) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.Port) }

// Start starts the server, retrying for a while if the port is still held
// by the previous run of the server.
func (n *natsServer) Start() error {
	app := server.NewAccount("APP")
	sys := server.NewAccount("SYS")
	opts := &server.Options{
		ServerName:    "chaos-nats",
		Host:          "127.0.0.1",
		Port:          n.Port,
		NoSigs:        true,
		NoLog:         true,
		Accounts:      []*server.Account{app, sys},
		SystemAccount: "SYS",
		PingInterval:  n.PingInterval,
		MaxPingsOut:   n.MaxPingsOut,
		JetStream:     n.StoreDir != "",
		StoreDir:      n.StoreDir,
		Users: []*server.User{
			{Username: userService, Password: n.Passwords[userService], Account: app},
			{Username: userApp, Password: n.Passwords[userApp], Account: app},
			{Username: userSystem, Password: n.Passwords[userSystem], Account: sys},
			{Username: userOperator, Password: n.Passwords[userOperator], Account: sys},
		},
	}
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var ns *server.Server
		if ns, err = server.NewServer(opts); err == nil {
			go ns.Start()
			if ns.ReadyForConnections(10*time.Second) && ns.Addr() != nil {
				if n.StoreDir == "" {
					n.ns = ns
					return nil
				}
				// Accounts of Options get JetStream only when asked; this
				// also recovers APP's streams from the store.
				var acc *server.Account
				if acc, err = ns.LookupAccount("APP"); err == nil {
					err = acc.EnableJetStream(nil, nil)
				}
				if err == nil {
					n.ns = ns
					return nil
				}
				ns.Shutdown()
				return fmt.Errorf("starting the NATS server: JetStream for APP: %w", err)
			}
			ns.Shutdown()
			err = fmt.Errorf("not listening on port %d (still taken?)", n.Port)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("starting the NATS server: %w", err)
		}
	}
}

// Stop shuts the server down and waits until it is gone: every client
// connection is closed when Stop returns.
func (n *natsServer) Stop() {
	if n.ns == nil {
		return
	}
	n.ns.Shutdown()
	n.ns.WaitForShutdown()
	n.ns = nil
}

// Connect opens a connection as user that reconnects forever.
func (n *natsServer) Connect(user, name string) (*nats.Conn, error) {
	return nats.Connect(n.URL(), nats.Name(name), nats.UserInfo(user, n.Passwords[user]),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
}

// clientID returns the client id of the open connection called name; false
// if there is none (it may be reconnecting).
func (n *natsServer) clientID(name string) (uint64, bool) {
	if n.ns == nil {
		return 0, false
	}
	connz, err := n.ns.Connz(&server.ConnzOptions{Limit: 100000})
	if err != nil {
		return 0, false
	}
	for _, c := range connz.Conns {
		if c.Name == name {
			return c.Cid, true
		}
	}
	return 0, false
}

// kick asks the server, through its system API as an operator would, to
// close connection cid. sys is a connection in the system account.
func (n *natsServer) kick(sys *nats.Conn, cid uint64) error {
	if n.ns == nil {
		return fmt.Errorf("the NATS server is not running")
	}
	body, _ := json.Marshal(server.KickClientReq{CID: cid})
	reply, err := sys.Request(fmt.Sprintf("$SYS.REQ.SERVER.%s.KICK", n.ns.ID()), body, 5*time.Second)
	if err != nil {
		return fmt.Errorf("kick of client %d: %w", cid, err)
	}
	var resp server.ServerAPIResponse
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return fmt.Errorf("kick of client %d: unreadable reply %q", cid, reply.Data)
	}
	if resp.Error != nil {
		return fmt.Errorf("kick of client %d: %s", cid, resp.Error.Description)
	}
	return nil
}
