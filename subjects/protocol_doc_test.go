package subjects_test

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ldlm-io/ldlm/subjects"
)

// TestProtocolDocStatusReply: docs/protocol.md lists every field of the
// ldlm.admin.status reply, and only those.
func TestProtocolDocStatusReply(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `ldlm\\.admin\\.status` \\|[^|]*\\| `\\{([^`]*)\\}` \\|$").FindSubmatch(doc)
	if row == nil {
		t.Fatal("docs/protocol.md has no table row | `ldlm.admin.status` | … | `{\"field\",…}` |")
	}
	var documented []string
	for _, f := range strings.Split(string(row[1]), ",") {
		documented = append(documented, strings.Trim(strings.TrimSpace(f), `"`))
	}
	var fields []string
	typ := reflect.TypeFor[subjects.StatusResponse]()
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" && name != "error" { // error: every reply's
			fields = append(fields, name)
		}
	}
	slices.Sort(documented)
	slices.Sort(fields)
	if !slices.Equal(documented, fields) {
		t.Errorf("docs/protocol.md documents the status reply as %v; StatusResponse has %v", documented, fields)
	}
}
