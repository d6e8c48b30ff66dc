package deploy

// The deployment files, tested without a container engine:
//
//   - docker-compose.yml parses and has the services, wiring and pinned
//     images it promises (TestComposeFile);
//   - the real nats-server accepts every configuration in this directory
//     (TestNATSConfigsAreValid);
//   - nats.conf, run by the nats-server binary of this module's dependency,
//     with the ldlm binary started with the compose file's environment for
//     the ldlm service, lets applications lock but not administer, lets the
//     admin user administer, gives the service its system account and what
//     it needs to find a second instance, and carries the example client
//     through a lock and unlock, and exports on /metrics every metric and
//     label value the Grafana dashboard queries (TestComposeStack; the
//     dashboard's own checks are in dashboard_test.go);
//   - the image's default environment makes the embedded NATS server
//     reachable from outside a container (TestImageDefaults);
//   - the Dockerfile and .dockerignore build what they should, as they
//     should (TestDockerfile, TestDockerignore).
//
// Every wait is bounded by a deadline and polls for its condition, so the
// tests hold on a loaded 2-core machine under -race.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"gopkg.in/yaml.v3"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// Bounds of the waits. They only turn a hang into a failure.
const (
	buildTimeout   = 5 * time.Minute  // one go build, cold cache on a slow machine
	startTimeout   = 60 * time.Second // process start until it answers
	stopTimeout    = 20 * time.Second // SIGTERM until the process exited
	requestTimeout = 5 * time.Second  // one NATS request that must succeed
	deniedTimeout  = 2 * time.Second  // one NATS request that must not
)

// tmpDir holds the binaries built for this run.
var tmpDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ldlm-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy: temporary directory:", err)
		os.Exit(1)
	}
	tmpDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// repoRoot is the module's root: the parent of this package's directory.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.Contains(mod, []byte("module github.com/ldlm-io/ldlm\n")) {
		t.Fatalf("%s is not the root of github.com/ldlm-io/ldlm (go.mod: %v)", root, err)
	}
	return root
}

// ---------------------------------------------------------------------------
// Binaries

type build struct {
	pkg  string
	once sync.Once
	path string
	err  error
}

var builds = map[string]*build{
	"nats-server": {pkg: "github.com/nats-io/nats-server/v2"},
	"ldlm":        {pkg: "./cmd/ldlm"},
	"example":     {pkg: "./deploy/example"},
}

// binary builds one of builds from the module root, once per run, and
// returns its path.
func binary(t testing.TB, name string) string {
	t.Helper()
	b := builds[name]
	b.once.Do(func() {
		out := filepath.Join(tmpDir, name)
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, b.pkg)
		cmd.Dir = repoRoot(t)
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build -o %s %s: %v\n%s", out, b.pkg, err, msg)
			return
		}
		b.path = out
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// ---------------------------------------------------------------------------
// docker-compose.yml

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

// composeService holds the fields the tests read; those with more than
// one form in the compose specification stay yaml.Nodes.
type composeService struct {
	Image       string      `yaml:"image"`
	Build       yaml.Node   `yaml:"build"`
	Command     yaml.Node   `yaml:"command"`
	Environment yaml.Node   `yaml:"environment"`
	Ports       []yaml.Node `yaml:"ports"`
	Volumes     []yaml.Node `yaml:"volumes"`
	DependsOn   yaml.Node   `yaml:"depends_on"`
	Profiles    []string    `yaml:"profiles"`
}

func loadCompose(t testing.TB) composeFile { return loadComposeFile(t, "docker-compose.yml") }

// loadComposeFile reads a compose file, by its path in the repository.
func loadComposeFile(t testing.TB, rel string) composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return f
}

func (f composeFile) service(t testing.TB, name string) composeService {
	t.Helper()
	s, ok := f.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml has no service %q (has %v)", name, mapKeys(f.Services))
	}
	return s
}

// env is the service's environment, from either the map or the list form.
func (s composeService) env(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	n := s.Environment
	switch n.Kind {
	case 0:
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			out[n.Content[i].Value] = n.Content[i+1].Value
		}
	case yaml.SequenceNode:
		for _, item := range n.Content {
			k, v, _ := strings.Cut(item.Value, "=")
			out[k] = v
		}
	default:
		t.Fatalf("environment at line %d is neither a map nor a list", n.Line)
	}
	return out
}

// dependsOn names the services this one depends on (list or map form).
func (s composeService) dependsOn() []string {
	var out []string
	n := s.DependsOn
	switch n.Kind {
	case yaml.SequenceNode:
		for _, item := range n.Content {
			out = append(out, item.Value)
		}
	case yaml.MappingNode:
		for i := 0; i < len(n.Content); i += 2 {
			out = append(out, n.Content[i].Value)
		}
	}
	return out
}

// command is the service's command as arguments (list or string form).
func (s composeService) command() []string {
	switch s.Command.Kind {
	case yaml.SequenceNode:
		var out []string
		for _, item := range s.Command.Content {
			out = append(out, item.Value)
		}
		return out
	case yaml.ScalarNode:
		return strings.Fields(s.Command.Value)
	}
	return nil
}

// buildTarget is the service's build context and target stage; ok is false
// without a build.
func (s composeService) buildTarget() (context, target string, ok bool) {
	switch s.Build.Kind {
	case yaml.ScalarNode:
		return s.Build.Value, "", true
	case yaml.MappingNode:
		context = "."
		for i := 0; i+1 < len(s.Build.Content); i += 2 {
			switch s.Build.Content[i].Value {
			case "context":
				context = s.Build.Content[i+1].Value
			case "target":
				target = s.Build.Content[i+1].Value
			}
		}
		return context, target, true
	}
	return "", "", false
}

type portMapping struct{ published, target string }

// ports are the service's published ports, short or long form.
func (s composeService) ports(t testing.TB) []portMapping {
	t.Helper()
	var out []portMapping
	for _, n := range s.Ports {
		switch n.Kind {
		case yaml.ScalarNode:
			v, _, _ := strings.Cut(n.Value, "/") // 4222/tcp
			parts := strings.Split(v, ":")       // [ip:]published:target
			p := portMapping{target: parts[len(parts)-1]}
			if len(parts) >= 2 {
				p.published = parts[len(parts)-2]
			}
			out = append(out, p)
		case yaml.MappingNode:
			var p portMapping
			for i := 0; i+1 < len(n.Content); i += 2 {
				switch n.Content[i].Value {
				case "target":
					p.target = n.Content[i+1].Value
				case "published":
					p.published = n.Content[i+1].Value
				}
			}
			out = append(out, p)
		default:
			t.Fatalf("port at line %d is neither a string nor a map", n.Line)
		}
	}
	return out
}

// volumes maps container paths to host paths of bind mounts.
func (s composeService) volumes() map[string]string {
	out := map[string]string{}
	for _, n := range s.Volumes {
		switch n.Kind {
		case yaml.ScalarNode:
			parts := strings.Split(n.Value, ":") // source:target[:mode]
			if len(parts) >= 2 {
				out[parts[1]] = parts[0]
			}
		case yaml.MappingNode:
			var src, dst string
			for i := 0; i+1 < len(n.Content); i += 2 {
				switch n.Content[i].Value {
				case "source":
					src = n.Content[i+1].Value
				case "target":
					dst = n.Content[i+1].Value
				}
			}
			out[dst] = src
		}
	}
	return out
}

// natsConfigPath is the host path of the configuration file the nats
// service runs with: the bind mount of its -c/--config argument.
func natsConfigPath(t testing.TB, f composeFile) string {
	t.Helper()
	nats := f.service(t, "nats")
	cmd := nats.command()
	var inContainer string
	for i, a := range cmd {
		if (a == "-c" || a == "--config" || a == "-config") && i+1 < len(cmd) {
			inContainer = cmd[i+1]
		}
	}
	if inContainer == "" {
		t.Fatalf("nats service: command %q has no -c CONFIG", cmd)
	}
	host, ok := nats.volumes()[inContainer]
	if !ok {
		t.Fatalf("nats service: %s is not mounted from the repository (volumes %v)", inContainer, nats.volumes())
	}
	p := filepath.Join(repoRoot(t), filepath.FromSlash(host))
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("nats service: mounted configuration: %v", err)
	}
	return p
}

// pinnedTag reports why an image reference is not pinned to a version, or
// "" when it is: a digest, or a tag other than latest where the tag or the
// image's name carries a version (nats:2.15-alpine,
// distroless/static-debian12:nonroot).
func pinnedTag(image string) string {
	if strings.Contains(image, "@sha256:") {
		return ""
	}
	slash := strings.LastIndexByte(image, '/')
	colon := strings.LastIndexByte(image, ':')
	if colon < slash+1 {
		return "has no tag (that is :latest)"
	}
	name, tag := image[slash+1:colon], image[colon+1:]
	if strings.Contains(tag, "latest") {
		return fmt.Sprintf("has the moving tag %q", tag)
	}
	if !strings.ContainsAny(name+tag, "0123456789") {
		return fmt.Sprintf("tag %q names no version", tag)
	}
	return ""
}

func TestComposeFile(t *testing.T) {
	f := loadCompose(t)
	for _, name := range []string{"nats", "ldlm", "example"} {
		// `docker compose up` without a profile must run the stack.
		if s := f.service(t, name); len(s.Profiles) > 0 {
			t.Errorf("service %s is only in profiles %v; `docker compose up` would leave it out", name, s.Profiles)
		}
	}
	stages := dockerfileStageNames(t)
	for name, s := range f.Services {
		_, target, hasBuild := s.buildTarget()
		if s.Image == "" && !hasBuild {
			t.Errorf("service %s has neither image nor build", name)
		}
		if s.Image != "" && !hasBuild {
			if why := pinnedTag(s.Image); why != "" {
				t.Errorf("service %s: image %q %s", name, s.Image, why)
			}
		}
		if target != "" && !slices.Contains(stages, target) {
			t.Errorf("service %s builds target %q; the Dockerfile's stages are %v", name, target, stages)
		}
	}

	natsSvc := f.service(t, "nats")
	natsConfigPath(t, f)
	if !slices.Contains(natsSvc.ports(t), portMapping{published: "4222", target: "4222"}) {
		t.Errorf("nats service does not publish 4222 on the host's 4222: ports %v", natsSvc.ports(t))
	}

	ldlm := f.service(t, "ldlm")
	if ctx, target, ok := ldlm.buildTarget(); !ok || ctx != "." || target != "" && target != stages[len(stages)-1] {
		t.Errorf("ldlm service must build the Dockerfile's final stage from the repository: build context %q, target %q", ctx, target)
	}
	env := ldlm.env(t)
	natsURL := env["LDLM_NATS_URL"]
	if natsURL == "" {
		t.Fatal("ldlm service: LDLM_NATS_URL is not set, so it would run its embedded server instead of using the nats service")
	}
	for _, u := range strings.Split(natsURL, ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil || pu.Hostname() != "nats" {
			t.Errorf("ldlm service: LDLM_NATS_URL %q does not point at the nats service (%v)", u, err)
		}
	}
	for _, prefix := range []string{"LDLM_NATS_", "LDLM_SYSTEM_"} {
		if !hasCredentials(env, prefix) {
			t.Errorf("ldlm service: no %s* credentials (USER and PASSWORD, CREDS, NKEY or TOKEN)", prefix)
		}
	}
	if !slices.Contains(ldlm.dependsOn(), "nats") {
		t.Errorf("ldlm service does not depend on nats: depends_on %v", ldlm.dependsOn())
	}

	example := f.service(t, "example")
	if deps := example.dependsOn(); !slices.Contains(deps, "ldlm") && !slices.Contains(deps, "nats") {
		t.Errorf("example service depends on neither ldlm nor nats: depends_on %v", deps)
	}
}

func hasCredentials(env map[string]string, prefix string) bool {
	if env[prefix+"USER"] != "" && env[prefix+"PASSWORD"] != "" {
		return true
	}
	return env[prefix+"CREDS"] != "" || env[prefix+"NKEY"] != "" || env[prefix+"TOKEN"] != ""
}

// ---------------------------------------------------------------------------
// NATS configurations

func TestNATSConfigsAreValid(t *testing.T) {
	confs, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy", "*.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(confs, func(p string) bool { return filepath.Base(p) == "nats.conf" }) {
		t.Fatalf("deploy/nats.conf is missing (found %v)", confs)
	}
	server := binary(t, "nats-server")
	for _, conf := range confs {
		t.Run(filepath.Base(conf), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			defer cancel()
			out, err := exec.CommandContext(ctx, server, "-t", "-c", conf).CombinedOutput()
			if err != nil {
				t.Fatalf("nats-server -t -c %s: %v\n%s", conf, err, out)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// The compose stack, run without containers

func TestComposeStack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs nats-server and ldlm")
	}
	f := loadCompose(t)
	conf := natsConfigPath(t, f)
	ldlmEnv := f.service(t, "ldlm").env(t)
	exampleEnv := f.service(t, "example").env(t)

	ns := startNATS(t, conf)
	natsURL := "nats://" + ns.addr

	// The service, with the compose environment pointed at our server.
	// Its metrics port moves to a free one on the loopback.
	env := cleanEnv()
	var metricsURL string
	for k, v := range ldlmEnv {
		switch k {
		case "LDLM_NATS_URL", "LDLM_SYSTEM_URL":
			v = pointAt(t, v, ns.addr)
		case "LDLM_METRICS_LISTEN":
			v = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
			metricsURL = "http://" + v + "/metrics"
		}
		env = append(env, k+"="+v)
	}
	svc := startProcess(t, "ldlm", binary(t, "ldlm"), nil, env)

	admin := connect(t, natsURL, "admin", "admin")
	app := connect(t, natsURL, "app", "app")

	// Up, with the system account: advisories followed, a sweep done.
	var status subjects.StatusResponse
	waitFor(t, startTimeout, "the lock service to answer ldlm.admin.status", func() error {
		if svc.exited() {
			t.Fatalf("ldlm exited while starting:\n%s", svc.output())
		}
		return requestJSON(admin.nc, "ldlm.admin.status", nil, nil, time.Second, &status)
	})
	if status.Liveness != "advisories+sweep" {
		t.Errorf("liveness %q, want advisories+sweep: the system account connection does not work\n%s", status.Liveness, svc.output())
	}
	if status.LastSweep.IsZero() {
		t.Errorf("no sweep has listed the connections: the system user cannot request $SYS.REQ.SERVER.PING.CONNZ\n%s", svc.output())
	}

	t.Run("app locks", func(t *testing.T) {
		var r subjects.LockResponse
		if err := requestJSON(app.nc, "ldlm.trylock.x", nil, nil, requestTimeout, &r); err != nil {
			t.Fatal(err)
		}
		if !r.Locked || r.Key == "" || r.Token == 0 {
			t.Fatalf("trylock x as app: %+v", r)
		}
		var u subjects.UnlockResponse
		if err := requestJSON(app.nc, "ldlm.unlock.x", nil, subjects.Request{Key: r.Key}, requestTimeout, &u); err != nil || !u.Unlocked {
			t.Fatalf("unlock x as app: %+v, %v", u, err)
		}
		// Take it again, for the admin to see and release.
		if err := requestJSON(app.nc, "ldlm.trylock.x", nil, nil, requestTimeout, &r); err != nil || !r.Locked {
			t.Fatalf("trylock x as app: %+v, %v", r, err)
		}
	})

	t.Run("the dashboard's metrics are exported", func(t *testing.T) {
		if metricsURL == "" {
			t.Fatal("the ldlm service sets no LDLM_METRICS_LISTEN: Prometheus has nothing to scrape")
		}
		checkDashboardMetrics(t, metricsURL)
	})

	t.Run("app discovers the service", func(t *testing.T) {
		msg, err := app.nc.Request("$SRV.PING.ldlm", nil, requestTimeout)
		if err != nil {
			t.Fatalf("$SRV.PING.ldlm as app (nats micro ls): %v", err)
		}
		if !bytes.Contains(msg.Data, []byte(`"name":"ldlm"`)) {
			t.Fatalf("$SRV.PING.ldlm: %s", msg.Data)
		}
	})

	t.Run("app may not administer", func(t *testing.T) {
		for _, subject := range []string{"ldlm.admin.list", "ldlm.admin.status", "ldlm.admin.unlock.x"} {
			msg, err := app.nc.Request(subject, []byte("{}"), deniedTimeout)
			if err == nil {
				t.Errorf("%s as app was answered: %s", subject, msg.Data)
			}
			app.waitDenied(t, subject)
		}
		// Nor forge the service's notices.
		for _, subject := range []string{"ldlm.instance.started", "ldlm.lost.nats:1", "ldlm.events.granted.x"} {
			if err := app.nc.Publish(subject, []byte("{}")); err != nil {
				t.Fatal(err)
			}
			app.waitDenied(t, subject)
		}
	})

	t.Run("admin administers", func(t *testing.T) {
		var list subjects.ListResponse
		if err := requestJSON(admin.nc, "ldlm.admin.list", nil, nil, requestTimeout, &list); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(list.Locks, func(l subjects.LockInfo) bool { return l.Name == "x" && len(l.Holders) == 1 }) {
			t.Fatalf("ldlm.admin.list as admin does not show x held: %+v", list)
		}
		var u struct {
			Unlocked bool            `json:"unlocked"`
			Error    *subjects.Error `json:"error"`
		}
		if err := requestJSON(admin.nc, "ldlm.admin.unlock.x", nil, struct{}{}, requestTimeout, &u); err != nil || !u.Unlocked {
			t.Fatalf("ldlm.admin.unlock.x as admin: %+v, %v", u, err)
		}
	})

	t.Run("a closed connection's lock is freed", func(t *testing.T) {
		holder := connect(t, natsURL, "app", "app")
		cid, err := holder.nc.GetClientID()
		if err != nil {
			t.Fatal(err)
		}
		owner := nats.Header{subjects.HeaderOwner: {subjects.FormatOwner(holder.nc.ConnectedServerId(), cid)}}
		var r subjects.LockResponse
		if err := requestJSON(holder.nc, "ldlm.trylock.held", owner, nil, requestTimeout, &r); err != nil || !r.Locked {
			t.Fatalf("trylock held: %+v, %v", r, err)
		}
		holder.nc.Close()
		// The sweep runs every 30 s, so a release within 15 s is the
		// DISCONNECT advisory's, read by the system user.
		waitFor(t, 15*time.Second, "the closed connection's lock to be freed", func() error {
			var r subjects.LockResponse
			if err := requestJSON(app.nc, "ldlm.trylock.held", nil, nil, requestTimeout, &r); err != nil {
				return err
			}
			if !r.Locked {
				return errors.New("still held")
			}
			return nil
		})
	})

	// `docker compose up --scale ldlm=2`, or a second stack on the same
	// NATS: two instances would grant the same locks. The younger must
	// find the older through $SRV.PING and step down, which it can only do
	// with the permissions to ask.
	t.Run("a second instance steps down", func(t *testing.T) {
		// Containers have a network namespace each; here the second
		// needs a metrics port of its own.
		secondEnv := slices.Clone(env)
		for i, kv := range secondEnv {
			if strings.HasPrefix(kv, "LDLM_METRICS_LISTEN=") {
				secondEnv[i] = "LDLM_METRICS_LISTEN=" + net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
			}
		}
		second := startProcess(t, "second ldlm", binary(t, "ldlm"), nil, secondEnv)
		if code := second.wait(t, startTimeout/2); code == 0 || !strings.Contains(second.output(), "another ldlm service instance") {
			t.Fatalf("a second ldlm with the same settings exited with status %d, want it to step down:\n%s", code, second.output())
		}
		var r subjects.LockResponse
		if err := requestJSON(app.nc, "ldlm.trylock.after-second", nil, nil, requestTimeout, &r); err != nil || !r.Locked {
			t.Fatalf("the first instance no longer answers: %+v, %v", r, err)
		}
	})

	t.Run("example client", func(t *testing.T) {
		env := cleanEnv()
		for k, v := range exampleEnv {
			if k == "NATS_URL" {
				v = pointAt(t, v, ns.addr)
			}
			env = append(env, k+"="+v)
		}
		ex := startProcess(t, "example", binary(t, "example"),
			[]string{"-once", "-hold", "100ms", "-timeout", startTimeout.String()}, env)
		code := ex.wait(t, startTimeout+stopTimeout)
		out := ex.output()
		if code != 0 || !strings.Contains(out, `"locked":true`) || !strings.Contains(out, `"unlocked":true`) {
			t.Fatalf("example -once: exit status %d, want 0 after a lock and an unlock:\n%s", code, out)
		}
	})

	// docker compose stop: SIGTERM, and a clean exit.
	if code := svc.stop(t); code != 0 {
		t.Errorf("ldlm exited with status %d on SIGTERM:\n%s", code, svc.output())
	}
}

// TestImageDefaults runs the ldlm binary with the environment the image
// sets (its port changed to a free one): in embedded mode it must listen on
// every interface, so that a published port reaches it, and serve a client
// that sends no credentials.
func TestImageDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ldlm")
	}
	stages := dockerfileStages(t)
	env := cleanEnv()
	var listen string
	for _, in := range stages[len(stages)-1].all("ENV") {
		for _, kv := range strings.Fields(in.args) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				t.Fatalf("ENV %s: write ENV KEY=VALUE", in.args)
			}
			if k == "LDLM_EMBEDDED_LISTEN" {
				host, _, err := net.SplitHostPort(v)
				if err != nil || host != "0.0.0.0" {
					t.Fatalf("the image sets LDLM_EMBEDDED_LISTEN=%s; in a container it must listen on 0.0.0.0", v)
				}
				listen = net.JoinHostPort(host, strconv.Itoa(freePort(t)))
				v = listen
			}
			env = append(env, k+"="+v)
		}
	}
	if listen == "" {
		t.Fatal("the image does not set LDLM_EMBEDDED_LISTEN")
	}
	svc := startProcess(t, "ldlm", binary(t, "ldlm"), nil, env)
	_, port, _ := net.SplitHostPort(listen)
	var nc *nats.Conn
	waitFor(t, startTimeout, "the embedded NATS server on "+listen, func() error {
		if svc.exited() {
			t.Fatalf("ldlm exited while starting:\n%s", svc.output())
		}
		var err error
		nc, err = nats.Connect("nats://127.0.0.1:"+port, nats.Timeout(time.Second))
		return err
	})
	defer nc.Close()
	var r subjects.LockResponse
	waitFor(t, startTimeout, "trylock without credentials", func() error {
		return requestJSON(nc, "ldlm.trylock.job", nil, nil, time.Second, &r)
	})
	if !r.Locked {
		t.Fatalf("trylock job: %+v", r)
	}
	if code := svc.stop(t); code != 0 {
		t.Errorf("ldlm exited with status %d on SIGTERM:\n%s", code, svc.output())
	}
}

// pointAt replaces the host of every URL of a comma separated list that
// names the compose service "nats" with addr, keeping the rest.
func pointAt(t testing.TB, urls, addr string) string {
	t.Helper()
	var out []string
	for _, u := range strings.Split(urls, ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil {
			t.Fatalf("URL %q: %v", u, err)
		}
		if pu.Hostname() == "nats" {
			pu.Host = addr
		}
		out = append(out, pu.String())
	}
	return strings.Join(out, ",")
}

// cleanEnv is the test's environment without LDLM_* and NATS_* variables,
// so that a developer's settings do not leak into the processes.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LDLM_") && !strings.HasPrefix(kv, "NATS_") {
			out = append(out, kv)
		}
	}
	return out
}

// natsServer is a running nats-server.
type natsServer struct {
	*process
	addr string // host:port of the client port
}

// startNATS runs the nats-server binary with conf on free loopback ports:
// -p overrides the client port, -m the monitoring port that the compose
// healthcheck probes. It is ready when /healthz says so, as in compose.
func startNATS(t *testing.T, conf string) natsServer {
	t.Helper()
	server := binary(t, "nats-server")
	// A free port may be taken before the server binds it: try again.
	for attempt := 1; ; attempt++ {
		client, monitor := freePort(t), freePort(t)
		p := startProcess(t, "nats-server", server,
			[]string{"-c", conf, "-a", "127.0.0.1", "-p", strconv.Itoa(client), "-m", strconv.Itoa(monitor)}, cleanEnv())
		healthz := fmt.Sprintf("http://127.0.0.1:%d/healthz", monitor)
		err := poll(startTimeout, func() error {
			if p.exited() {
				return errExited
			}
			return httpOK(healthz)
		})
		if err == nil {
			return natsServer{process: p, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(client))}
		}
		if !errors.Is(err, errExited) || attempt == 3 {
			t.Fatalf("nats-server -c %s did not become healthy: %v\n%s", conf, err, p.output())
		}
		t.Logf("nats-server exited at start (a port taken?), trying again:\n%s", p.output())
	}
}

var errExited = errors.New("process exited")

func httpOK(u string) error {
	client := http.Client{Timeout: time.Second}
	resp, err := client.Get(u)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	return nil
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// client is a NATS connection that records the permission violations the
// server reports to it.
type client struct {
	nc *nats.Conn

	mu     sync.Mutex
	denied []string // error texts of permission violations
}

func connect(t testing.TB, natsURL, user, password string) *client {
	t.Helper()
	c := &client{}
	nc, err := nats.Connect(natsURL,
		nats.UserInfo(user, password),
		nats.Name("deploy-test-"+user),
		nats.Timeout(startTimeout),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				c.mu.Lock()
				c.denied = append(c.denied, err.Error())
				c.mu.Unlock()
			}
		}))
	if err != nil {
		t.Fatalf("connecting as %s: %v", user, err)
	}
	c.nc = nc
	t.Cleanup(nc.Close)
	return c
}

// waitDenied waits until the server has reported a permission violation
// for a publish to subject.
func (c *client) waitDenied(t testing.TB, subject string) {
	t.Helper()
	want := fmt.Sprintf("publish to %q", subject)
	waitFor(t, requestTimeout, "a permission violation for "+want, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, d := range c.denied {
			if strings.Contains(strings.ToLower(d), strings.ToLower(want)) {
				return nil
			}
		}
		return fmt.Errorf("violations reported so far: %q", c.denied)
	})
}

// requestJSON sends body (nil: empty) as JSON and decodes the reply into
// out. A reply with an error object is an error.
func requestJSON(nc *nats.Conn, subject string, header nats.Header, body any, timeout time.Duration, out any) error {
	msg := nats.NewMsg(subject)
	if header != nil {
		msg.Header = header
	}
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		msg.Data = data
	}
	reply, err := nc.RequestMsg(msg, timeout)
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	var e struct {
		Error *subjects.Error `json:"error"`
	}
	if err := json.Unmarshal(reply.Data, &e); err != nil {
		return fmt.Errorf("%s: unreadable reply %q: %w", subject, reply.Data, err)
	}
	if e.Error != nil {
		return fmt.Errorf("%s: %w", subject, e.Error)
	}
	return json.Unmarshal(reply.Data, out)
}

// waitFor polls cond until it returns nil, failing the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	if err := poll(d, cond); err != nil {
		t.Fatalf("waiting %s for %s: %v", d, what, err)
	}
}

func poll(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil || errors.Is(err, errExited) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Processes

// process is a started binary whose output is kept for failure messages.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *ldlmtest.SyncBuffer
	done chan struct{} // closed when the process has exited
	code int           // exit status, -1 if killed by a signal; valid after done
}

// startProcess starts path; the test's cleanup kills it if it still runs
// and shows its output if the test failed.
func startProcess(t testing.TB, name, path string, args, env []string) *process {
	t.Helper()
	p := &process{name: name, out: &ldlmtest.SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = env
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, p.output())
		}
	})
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) output() string { return p.out.String() }

// wait waits up to d for the process to exit by itself and returns its
// exit status; past d it is killed and the test fails.
func (p *process) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not exit within %s:\n%s", p.name, d, p.output())
		return -1
	}
}

// stop sends SIGTERM and returns the exit status.
func (p *process) stop(t testing.TB) int {
	t.Helper()
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	return p.wait(t, stopTimeout)
}

// ---------------------------------------------------------------------------
// Dockerfile and .dockerignore

type instruction struct {
	cmd  string // upper case: FROM, RUN, …
	args string
	line int
}

type stage struct {
	image, name  string
	instructions []instruction
}

// dockerfileStages parses the Dockerfile into its stages: enough of the
// syntax for a static check (comments, line continuations, FROM … AS …).
func dockerfileStages(t testing.TB) []stage {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []stage
	var pending strings.Builder
	start := 0
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if pending.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if pending.Len() == 0 {
			start = n
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			pending.WriteString(cont + " ")
			continue
		}
		pending.WriteString(line)
		cmd, args, _ := strings.Cut(pending.String(), " ")
		pending.Reset()
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			fields := strings.Fields(in.args)
			s := stage{image: fields[0]}
			if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
				s.name = fields[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("Dockerfile:%d: %s before the first FROM", in.line, in.cmd)
			}
			continue
		}
		last := &stages[len(stages)-1]
		last.instructions = append(last.instructions, in)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

func dockerfileStageNames(t testing.TB) []string {
	t.Helper()
	var names []string
	for _, s := range dockerfileStages(t) {
		names = append(names, s.name)
	}
	return names
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instructions {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// nonRootUser reports whether the stage's last USER is not root.
func (s stage) nonRootUser() bool {
	users := s.all("USER")
	if len(users) == 0 {
		return false
	}
	user, _, _ := strings.Cut(users[len(users)-1].args, ":")
	return user != "" && user != "root" && user != "0"
}

func TestDockerfile(t *testing.T) {
	stages := dockerfileStages(t)
	if len(stages) < 2 {
		t.Fatalf("the Dockerfile has %d stage(s); want a build stage and a small final one", len(stages))
	}

	// Base images: a previous stage, or pinned; the Go one matches go.mod.
	goVersion := goModVersion(t)
	var names []string
	for i, s := range stages {
		if !slices.Contains(names, s.image) {
			if why := pinnedTag(s.image); why != "" {
				t.Errorf("stage %d: FROM %s %s", i+1, s.image, why)
			}
			if repo, tag, _ := strings.Cut(s.image, ":"); repo == "golang" && !strings.HasPrefix(tag, goVersion) {
				t.Errorf("stage %d: FROM %s, but go.mod says go %s", i+1, s.image, goVersion)
			}
		}
		names = append(names, s.name)
	}

	// The build: static, reproducible paths, the ldlm command.
	var builds []string
	for _, s := range stages {
		for _, in := range s.all("RUN") {
			if strings.Contains(in.args, "go build") {
				builds = append(builds, in.args)
			}
		}
	}
	if !slices.ContainsFunc(builds, func(b string) bool {
		return strings.Contains(b, "CGO_ENABLED=0") && strings.Contains(b, "-trimpath") && regexp.MustCompile(`\./cmd/ldlm\b`).MatchString(b)
	}) {
		t.Errorf("no RUN builds ./cmd/ldlm with CGO_ENABLED=0 and -trimpath: %q", builds)
	}

	// The final stage is the ldlm image.
	final := stages[len(stages)-1]
	if !final.nonRootUser() {
		t.Errorf("the final stage (FROM %s) does not run as a non-root USER", final.image)
	}
	if ep := final.all("ENTRYPOINT"); len(ep) == 0 || ep[len(ep)-1].args != `["/ldlm"]` {
		t.Errorf(`the final stage's ENTRYPOINT is %v, want ["/ldlm"]`, ep)
	}
	if !slices.ContainsFunc(final.all("EXPOSE"), func(in instruction) bool {
		return slices.Contains(strings.Fields(in.args), "4222") || slices.Contains(strings.Fields(in.args), "4222/tcp")
	}) {
		t.Error("the final stage does not EXPOSE 4222")
	}
	if !slices.ContainsFunc(final.all("ENV"), func(in instruction) bool {
		return slices.Contains(strings.Fields(in.args), "LDLM_EMBEDDED_LISTEN=0.0.0.0:4222")
	}) {
		t.Error("the final stage does not set LDLM_EMBEDDED_LISTEN=0.0.0.0:4222: in embedded mode the NATS port would be unreachable from outside the container")
	}
	if !slices.ContainsFunc(final.all("COPY"), func(in instruction) bool {
		return strings.Contains(in.args, "/ldlm") && strings.Contains(in.args, "--from=")
	}) {
		t.Error("the final stage does not COPY the ldlm binary from a build stage")
	}

	// Every image that runs something runs as non-root.
	for i, s := range stages {
		if len(s.all("ENTRYPOINT")) > 0 && !s.nonRootUser() {
			t.Errorf("stage %d (%s) has an ENTRYPOINT but no non-root USER", i+1, s.name)
		}
	}
}

// goModVersion is go.mod's go version as MAJOR.MINOR.
func goModVersion(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

func TestDockerignore(t *testing.T) {
	root := repoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") {
			t.Fatalf(".dockerignore: exceptions (%s) are not understood by this test", line)
		}
		patterns = append(patterns, path.Clean(strings.TrimPrefix(line, "/")))
	}
	if !ignored(patterns, ".git/HEAD") {
		t.Error(".dockerignore does not keep .git out of the build context")
	}

	// Every file the image builds from stays in the context: go.mod, go.sum
	// and the Go files of the module's packages that the binaries import.
	need := []string{"go.mod", "go.sum"}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{end}}{{end}}",
		"./cmd/ldlm", "./deploy/example")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		dir, err := filepath.Rel(root, fields[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, file := range fields[1:] {
			need = append(need, filepath.ToSlash(filepath.Join(dir, file)))
		}
	}
	if !slices.Contains(need, "cmd/ldlm/main.go") || !slices.Contains(need, "deploy/example/main.go") {
		t.Fatalf("go list did not list the binaries' files: %v", need)
	}
	for _, p := range need {
		if ignored(patterns, p) {
			t.Errorf(".dockerignore leaves %s out of the build context, but the build needs it", p)
		}
	}
}

// ignored reports whether a .dockerignore pattern matches p or one of its
// parent directories (Docker's rule; "**" matches any number of
// directories).
func ignored(patterns []string, p string) bool {
	parts := strings.Split(p, "/")
	for i := 1; i <= len(parts); i++ {
		prefix := strings.Join(parts[:i], "/")
		for _, pat := range patterns {
			if matchPattern(pat, prefix) {
				return true
			}
		}
	}
	return false
}

func matchPattern(pat, p string) bool {
	if rest, ok := strings.CutPrefix(pat, "**/"); ok {
		parts := strings.Split(p, "/")
		for i := range parts {
			if matchPattern(rest, strings.Join(parts[i:], "/")) {
				return true
			}
		}
		return false
	}
	ok, _ := path.Match(pat, p)
	return ok
}

func mapKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
