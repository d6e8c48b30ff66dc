package deploy

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ldlm-io/ldlm/subjects"
)

// TestClusterCompose: deploy/cluster.yml has three ldlm members, each with
// a name of its own, a data folder on a volume of its own, routes to all
// three and its client port on the host's loopback; run as processes with
// that environment (host names and ports moved to free loopback ports, the
// data folders to temporary ones), they form one cluster whose lock service
// answers through every member.
func TestClusterCompose(t *testing.T) {
	f := loadComposeFile(t, "deploy/cluster.yml")
	names := []string{"ldlm-1", "ldlm-2", "ldlm-3"}
	if got := mapKeys(f.Services); !slices.Equal(got, names) {
		t.Fatalf("deploy/cluster.yml services %v, want %v", got, names)
	}
	// Loopback ports for each member's routes and clients.
	routePort, clientPort := map[string]int{}, map[string]int{}
	for _, name := range names {
		routePort[name], clientPort[name] = freePort(t), freePort(t)
	}
	var want []string
	for _, name := range names {
		want = append(want, "nats-route://"+name+":6222")
	}
	seenVolumes := map[string]bool{}
	var members []*process
	for _, name := range names {
		svc := f.service(t, name)
		env := svc.env(t)
		switch {
		case env["LDLM_EMBEDDED_SERVER_NAME"] != name:
			t.Errorf("%s: LDLM_EMBEDDED_SERVER_NAME %q, want the service's name", name, env["LDLM_EMBEDDED_SERVER_NAME"])
		case env["LDLM_EMBEDDED_CLUSTER_ROUTES"] != strings.Join(want, ","):
			t.Errorf("%s: routes %q, want %q", name, env["LDLM_EMBEDDED_CLUSTER_ROUTES"], strings.Join(want, ","))
		case env["LDLM_EMBEDDED_CLUSTER_LISTEN"] != "0.0.0.0:6222" || env["LDLM_EMBEDDED_LISTEN"] != "0.0.0.0:4222":
			t.Errorf("%s: listens on %q and %q, want 0.0.0.0:4222 and 0.0.0.0:6222", name, env["LDLM_EMBEDDED_LISTEN"], env["LDLM_EMBEDDED_CLUSTER_LISTEN"])
		case !strings.HasPrefix(env["LDLM_DATA_DIR"], "/home/nonroot/"):
			t.Errorf("%s: LDLM_DATA_DIR %q is not on the volume at /home/nonroot", name, env["LDLM_DATA_DIR"])
		}
		if len(svc.Volumes) != 1 || !strings.HasSuffix(svc.Volumes[0].Value, ":/home/nonroot") || seenVolumes[svc.Volumes[0].Value] {
			t.Errorf("%s: volumes %v, want one of its own on /home/nonroot", name, svc.Volumes)
		} else {
			seenVolumes[svc.Volumes[0].Value] = true
		}
		if len(svc.Ports) != 1 || !strings.HasPrefix(svc.Ports[0].Value, "127.0.0.1:") {
			t.Errorf("%s: ports %v, want its client port on the host's loopback only", name, svc.Ports)
		}

		// Run it, on loopback ports.
		routes := env["LDLM_EMBEDDED_CLUSTER_ROUTES"]
		for _, other := range names {
			routes = strings.ReplaceAll(routes, other+":6222", "127.0.0.1:"+strconv.Itoa(routePort[other]))
		}
		env["LDLM_EMBEDDED_CLUSTER_ROUTES"] = routes
		env["LDLM_EMBEDDED_CLUSTER_LISTEN"] = net.JoinHostPort("127.0.0.1", strconv.Itoa(routePort[name]))
		env["LDLM_EMBEDDED_LISTEN"] = net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort[name]))
		env["LDLM_DATA_DIR"] = t.TempDir()
		list := cleanEnv()
		for k, v := range env {
			list = append(list, k+"="+v)
		}
		members = append(members, startProcess(t, name, binary(t, "ldlm"), nil, list))
	}
	if t.Failed() {
		return
	}
	for i, name := range names {
		url := fmt.Sprintf("nats://127.0.0.1:%d", clientPort[name])
		waitFor(t, startTimeout, name+"'s client port", func() error {
			if members[i].exited() {
				t.Fatalf("%s exited while starting:\n%s", name, members[i].output())
			}
			conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort[name])))
			if err == nil {
				conn.Close()
			}
			return err
		})
		c := connect(t, url, "", "")
		var r subjects.LockResponse
		lock := "through-" + name
		waitFor(t, startTimeout, "a lock through "+name, func() error {
			if err := requestJSON(c.nc, "ldlm.trylock."+lock, nil, nil, requestTimeout, &r); err != nil {
				return err
			}
			if !r.Locked {
				return fmt.Errorf("trylock %s: %+v", lock, r)
			}
			return nil
		})
	}
}
