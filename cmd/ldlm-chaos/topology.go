package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// Where the lock service keeps its state, and so how it is deployed (-state).
const (
	// modeMemory: the orchestrator's NATS server and one ldlm in external
	// mode with its state in memory: a restart loses every lock.
	modeMemory = "memory"
	// modeJetStream: the orchestrator's NATS server with JetStream, and
	// 1 + Standbys ldlm instances with LDLM_STATE=jetstream: one active,
	// the others standbys that take over.
	modeJetStream = "jetstream"
	// modeDataDir: the single binary, ldlm with its embedded NATS server
	// and LDLM_DATA_DIR; the workers connect to that embedded server.
	modeDataDir = "datadir"
	// modeCluster: three ldlm binaries whose embedded servers form one
	// NATS cluster with JetStream (deploy/cluster.yml): one active, two
	// standbys; the workers list all three members.
	modeCluster = "cluster"
)

var modes = []string{modeMemory, modeJetStream, modeDataDir, modeCluster}

// modeFaults are the kinds of faults each mode can inject, and its default.
// A kick needs the orchestrator's NATS server (its system account), so
// does a NATS restart; the embedded servers of datadir and cluster die
// with their ldlm, which is what their own fault does.
var modeFaults = map[string][]string{
	modeMemory:    {faultKillWorker, faultKick, faultNATSRestart, faultServiceTerm, faultServiceKill},
	modeJetStream: {faultKillWorker, faultKick, faultNATSRestart, faultServiceTerm, faultActiveKill},
	modeDataDir:   {faultKillWorker, faultServiceTerm, faultDataDirKill},
	modeCluster:   {faultKillWorker, faultNodeKill},
}

// node is one ldlm process slot: the only service of memory and datadir,
// one instance of jetstream, one member of cluster. A node that stops is
// started again with the same environment (same data folder and ports), as
// a supervisor would.
type node struct {
	name string
	env  []string
	p    *proc // the current process
	runs int   // processes started so far
}

// logPath is the log of the node's current process.
func (n *node) logPath(dir string) string {
	return filepath.Join(dir, fmt.Sprintf("%s-%d.log", n.name, n.runs-1))
}

// durable reports whether the service's state outlives its processes.
func (o *orchestrator) durable() bool { return o.cfg.State != modeMemory }

// setUp starts NATS (unless the nodes embed it), the orchestrator's
// connections and the nodes, and waits until the service answers.
func (o *orchestrator) setUp() error {
	common := []string{"LDLM_SWEEP_INTERVAL=" + o.cfg.Sweep.String(), "LDLM_RECONNECT_GRACE=" + o.cfg.Grace.String()}
	var err error
	switch o.cfg.State {
	case modeMemory, modeJetStream:
		if o.nats, err = newNATSServer(); err != nil {
			return err
		}
		n := 1
		if o.cfg.State == modeJetStream {
			o.nats.StoreDir = filepath.Join(o.cfg.Dir, "nats-store")
			n += o.cfg.Standbys
			common = append(common, "LDLM_STATE=jetstream", "LDLM_STATE_REPLICAS=1")
		}
		if err := o.nats.Start(); err != nil {
			return err
		}
		if o.app, err = o.nats.Connect(userApp, "ldlm-chaos-orchestrator"); err != nil {
			return err
		}
		if o.sys, err = o.nats.Connect(userOperator, "ldlm-chaos-operator"); err != nil {
			return err
		}
		o.workerURL, o.workerUser, o.workerPassword = o.nats.URL(), userApp, o.nats.Passwords[userApp]
		for i := range n {
			o.nodes = append(o.nodes, &node{name: fmt.Sprintf("service-%d", i), env: serviceEnv(o.nats, common...)})
		}
	case modeDataDir:
		port, err := freePort()
		if err != nil {
			return err
		}
		o.workerURL = fmt.Sprintf("nats://127.0.0.1:%d", port)
		o.nodes = []*node{{name: "single", env: cleanEnv(append(common,
			"LDLM_DATA_DIR="+filepath.Join(o.cfg.Dir, "data"),
			fmt.Sprintf("LDLM_EMBEDDED_LISTEN=127.0.0.1:%d", port))...)}}
	case modeCluster:
		var urls, routes []string
		var clientPorts, routePorts []int
		for range 3 {
			cp, err := freePort()
			if err != nil {
				return err
			}
			rp, err := freePort()
			if err != nil {
				return err
			}
			clientPorts, routePorts = append(clientPorts, cp), append(routePorts, rp)
			urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", cp))
			routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", rp))
		}
		o.workerURL = strings.Join(urls, ",")
		for i := range 3 {
			o.nodes = append(o.nodes, &node{name: fmt.Sprintf("member-%d", i), env: cleanEnv(append(common,
				fmt.Sprintf("LDLM_EMBEDDED_SERVER_NAME=m%d", i),
				"LDLM_DATA_DIR="+filepath.Join(o.cfg.Dir, fmt.Sprintf("data-%d", i)),
				fmt.Sprintf("LDLM_EMBEDDED_LISTEN=127.0.0.1:%d", clientPorts[i]),
				fmt.Sprintf("LDLM_EMBEDDED_CLUSTER_LISTEN=127.0.0.1:%d", routePorts[i]),
				"LDLM_EMBEDDED_CLUSTER_ROUTES="+strings.Join(routes, ","))...)})
		}
	default:
		return fmt.Errorf("unknown state %q", o.cfg.State)
	}
	if o.app == nil {
		// The embedded servers listen once the service answers: keep
		// trying until then.
		if o.app, err = nats.Connect(o.workerURL, nats.Name("ldlm-chaos-orchestrator"), nats.MaxReconnects(-1),
			nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true)); err != nil {
			return err
		}
	}

	// The first node alone first, so that it is the active (and the
	// cluster's members all at once: they need each other's quorum).
	first := 1
	if o.cfg.State == modeCluster {
		first = len(o.nodes)
	}
	for i := range first {
		if err := o.startNode(i); err != nil {
			return err
		}
	}
	if err := o.waitHealthy(); err != nil {
		return err
	}
	for i := first; i < len(o.nodes); i++ {
		if err := o.startNode(i); err != nil {
			return err
		}
	}
	return o.waitHealthy()
}

// startNode starts node i's next process.
func (o *orchestrator) startNode(i int) error {
	n := o.nodes[i]
	n.runs++
	p, err := startProc([]string{o.cfg.LDLM}, n.env, n.logPath(o.cfg.Dir))
	if err != nil {
		return err
	}
	n.p = p
	o.sum.Instances++
	return nil
}

// healthyTimeout bounds the wait for the service to answer again after a
// fault: a cluster's takeover waits for JetStream to elect a new leader
// for the state stream, which took 3–11 s on an idle machine.
const healthyTimeout = 2 * time.Minute

// waitHealthy waits until every node runs and knows its role (one active,
// the others standbys), and the service answers its status request. Nodes
// that exit meanwhile are started again (see reviveNodes). In memory mode
// the answer names a new instance, whose tokens it notes.
func (o *orchestrator) waitHealthy() error {
	deadline := time.Now().Add(healthyTimeout)
	for ; ; time.Sleep(50 * time.Millisecond) {
		if err := o.reviveNodes(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			var tails []string
			for _, n := range o.nodes {
				if n.p == nil {
					continue
				}
				tails = append(tails, fmt.Sprintf("%s (%s):\n%s", n.name, o.role(n), n.p.logTail()))
			}
			return fmt.Errorf("the lock service was not back within %s:\n%s", healthyTimeout, strings.Join(tails, "\n"))
		}
		if len(o.nodes) > 1 {
			active := 0
			known := true
			for _, n := range o.nodes {
				if n.p == nil || !n.p.running() {
					continue // not started yet (setUp), or started again at the next poll
				}
				switch o.role(n) {
				case roleActive:
					active++
				case roleUnknown:
					known = false
				}
			}
			if !known || active == 0 {
				continue
			}
		}
		st, err := serviceStatus(o.app)
		if err != nil {
			continue
		}
		if !o.durable() {
			if len(o.instances) == 0 || o.instances[len(o.instances)-1].FirstToken != uint64(st.Started.UnixMicro()) {
				o.instances = append(o.instances, Instance{FirstToken: uint64(st.Started.UnixMicro())})
			}
		}
		return nil
	}
}

// serviceStatus asks the service for its status, once.
func serviceStatus(nc *nats.Conn) (subjects.StatusResponse, error) {
	var st subjects.StatusResponse
	reply, err := nc.Request(subjects.AdminSubject(subjects.DefaultPrefix, subjects.OpAdminStatus, ""), nil, time.Second)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(reply.Data, &st); err != nil {
		return st, err
	}
	if st.Error != nil || st.Started.IsZero() {
		return st, fmt.Errorf("status: %s", reply.Data)
	}
	return st, nil
}

// reviveNodes starts again the nodes that exited without being asked to.
// In memory mode that is a problem. In the durable modes an exit with
// status 1 is what ldlm does when it stops being the active (deposed, or
// its state stream unreachable) and expects its supervisor to start it
// again: it is counted and logged, not a problem; any other status is.
// A fault of kind faultSelfExit is recorded, so that holders who lose a
// lock by it are told apart.
func (o *orchestrator) reviveNodes() error {
	for i, n := range o.nodes {
		if n.p == nil || n.p.running() {
			continue // not started yet (setUp), or running
		}
		code := n.p.exitCode()
		switch {
		case !o.durable():
			o.problem("the lock service exited by itself (status %d):\n%s", code, n.p.logTail())
			if len(o.instances) > 0 {
				o.instances[len(o.instances)-1].Stopped = n.p.exitAt
			}
		case code == 1:
			o.sum.SelfExits++
			o.logf("%s exited by itself with status 1 (%s); starting it again, as a supervisor would:\n%s", n.name, o.role(n), n.p.logTail())
		default:
			o.problem("%s exited by itself with status %d (66: a data race):\n%s", n.name, code, n.p.logTail())
		}
		if o.durable() {
			o.faults = append(o.faults, Fault{Kind: faultSelfExit, At: n.p.exitAt, Done: n.p.exitAt, Worker: -1, Instance: -1,
				Node: i, Keeps: true, Grace: o.cutGrace()})
		}
		if err := o.startNode(i); err != nil {
			return err
		}
	}
	return nil
}

// cutGrace is Fault.Grace of the stop of a node: in datadir and cluster
// the node's embedded NATS server dies with it and cuts its clients'
// connections.
func (o *orchestrator) cutGrace() time.Duration {
	if o.cfg.State == modeDataDir || o.cfg.State == modeCluster {
		return o.cfg.Grace
	}
	return 0
}

// Roles of a node, as its log says.
const (
	roleUnknown = "starting"
	roleActive  = "active"
	roleStandby = "standby"
)

// Log lines that tell a node's role: the active loads the lock state into
// its engine (at start, or when it takes over); a standby says so when it
// starts, when a takeover of its fails, and when it was deposed and stands
// by again.
var (
	activeMarks  = []string{"lock state loaded"}
	standbyMarks = []string{`msg="standby: `, "standing by again"}
)

// role returns what node n's log says it is (or was, when it exited): the
// role of the last marking line. A node of a single-instance mode is always
// the active.
func (o *orchestrator) role(n *node) string {
	if len(o.nodes) == 1 {
		return roleActive
	}
	b, err := os.ReadFile(n.p.logPath)
	if err != nil {
		return roleUnknown
	}
	last := func(marks []string) int {
		at := -1
		for _, m := range marks {
			at = max(at, bytes.LastIndex(b, []byte(m)))
		}
		return at
	}
	a, s := last(activeMarks), last(standbyMarks)
	switch {
	case a > s:
		return roleActive
	case s > a:
		return roleStandby
	}
	return roleUnknown
}

// activeNode returns the index of the running node that is the active; -1
// if none says so (a takeover under way).
func (o *orchestrator) activeNode() int {
	for i, n := range o.nodes {
		if n.p.running() && o.role(n) == roleActive {
			return i
		}
	}
	return -1
}
