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

// TestProtocolDocAdminReplies: docs/protocol.md lists every field of the
// ldlm.admin.status and ldlm.admin.instances replies, and only those.
func TestProtocolDocAdminReplies(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		op  string
		typ reflect.Type
	}{
		{subjects.OpAdminStatus, reflect.TypeFor[subjects.StatusResponse]()},
		{subjects.OpAdminInstances, reflect.TypeFor[subjects.InstanceInfo]()},
	}
	for _, tc := range tests {
		t.Run(tc.op, func(t *testing.T) {
			subject := regexp.QuoteMeta(subjects.AdminSubject("ldlm", tc.op, ""))
			row := regexp.MustCompile("(?m)^\\| `" + subject + "` \\|[^|]*\\| `\\{([^`]*)\\}` \\|$").FindSubmatch(doc)
			if row == nil {
				t.Fatalf("docs/protocol.md has no table row | `ldlm.%s` | … | `{\"field\",…}` |", tc.op)
			}
			var documented []string
			for _, f := range strings.Split(string(row[1]), ",") {
				documented = append(documented, strings.Trim(strings.TrimSpace(f), `"`))
			}
			var fields []string
			for i := range tc.typ.NumField() {
				name, _, _ := strings.Cut(tc.typ.Field(i).Tag.Get("json"), ",")
				if name != "" && name != "-" && name != "error" { // error: every reply's
					fields = append(fields, name)
				}
			}
			slices.Sort(documented)
			slices.Sort(fields)
			if !slices.Equal(documented, fields) {
				t.Errorf("docs/protocol.md documents the %s reply as %v; %v has %v", tc.op, documented, tc.typ, fields)
			}
		})
	}
}
