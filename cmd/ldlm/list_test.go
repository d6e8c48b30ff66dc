package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/service/engine"
	"github.com/ldlm-io/ldlm/subjects"
)

// Issue 11, D3: `ldlm list` follows the service's pages, so a list of more
// than 1 MiB (which got no reply at all before) is printed whole, and
// --name-prefix filters it.
func TestListFollowsPages(t *testing.T) {
	srv := ldlmtest.Start(t)
	const n = 1500
	long := strings.Repeat("x", 1000)
	for i := range n {
		if _, ok, err := srv.Service.Engine().TryLock(engine.Request{Name: fmt.Sprintf("%s%05d", long, i)}); !ok || err != nil {
			t.Fatalf("trylock %d: %v %v", i, ok, err)
		}
	}
	for _, c := range []struct {
		args []string
		want int
	}{
		{nil, n},
		{[]string{"--name-prefix", long + "000"}, 100},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"list", "--json", "--server", srv.URL()}, c.args...)
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Fatalf("ldlm list %v: exit %d: %s", c.args, code, stderr.String())
		}
		var all subjects.ListResponse
		if err := json.Unmarshal(stdout.Bytes(), &all); err != nil {
			t.Fatalf("ldlm list %v: %v", c.args, err)
		}
		if len(all.Locks) != c.want {
			t.Fatalf("ldlm list %v: %d locks, want %d", c.args, len(all.Locks), c.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"list", "--server", srv.URL(), "--prefix", "other"}, &stdout, &stderr); code == 0 ||
		!strings.Contains(stderr.String(), "likely causes") {
		t.Fatalf("ldlm list on a prefix nobody serves: exit %d, %q; want the likely causes", code, stderr.String())
	}
}
