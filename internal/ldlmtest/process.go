package ldlmtest

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Process is a cluster member that runs as a nats-server process of its
// own, built from the module's nats-server: unlike an in-process member,
// it can be killed with SIGKILL, so that it dies without a word (no
// shutdown announcement, no disconnect advisories), as a crashed or
// kill -9'd server does.
type Process struct {
	URL  string // client URL
	Name string // server name
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// StartProcessMember builds the nats-server binary (cached by the Go build
// cache after the first time) and starts it as member name of c, with the
// in-process members' accounts; it returns once every member has a route
// to it. The process is killed when the test ends.
func (c *Cluster) StartProcessMember(t testing.TB, name string) *Process {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "nats-server")
	build := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building nats-server: %v\n%s", err, out)
	}
	client, cluster := freeAddr(t), freeAddr(t)
	conf := filepath.Join(dir, "member.conf")
	// The in-process members' accounts (see StartCluster and embeddednats):
	// APP for clients, SYS the system account. Their users may differ.
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`server_name: %q
listen: %q
cluster { name: "ldlm", listen: %q, routes: [%s] }
accounts {
  APP { users [{user: "app", password: "app"}] }
  SYS { users [{user: "sys", password: "sys"}] }
}
system_account: "SYS"
no_auth_user: "app"
`, name, client, cluster, `"`+strings.Join(c.routes, `", "`)+`"`)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &Process{URL: "nats://" + client, Name: name, cmd: exec.Command(bin, "-c", conf), done: make(chan struct{})}
	var out io.Writer = io.Discard
	if os.Getenv("LDLM_TEST_LOG") != "" {
		out = os.Stderr
	}
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting nats-server: %v", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Kill)

	deadline := time.Now().Add(30 * time.Second)
	for _, m := range c.Members {
		for m.NATSServer().NumRemotes() < len(c.Members) {
			if time.Now().After(deadline) {
				t.Fatalf("process member %s did not join: %s has %d routes", name, m.Name(), m.NATSServer().NumRemotes())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for {
		nc, err := nats.Connect(p.URL)
		if err == nil {
			nc.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("process member %s does not take clients: %v", name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Kill kills the process with SIGKILL and waits for it to exit.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
