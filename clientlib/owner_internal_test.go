package clientlib

import (
	"testing"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// TestFormatOwner: the owner names the connection by its server's id, not
// its name (a restarted server keeps its name), and its client id.
func TestFormatOwner(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	got, err := formatOwner(nc)
	if want := subjects.FormatOwner(nc.ConnectedServerId(), cid); err != nil || got != want {
		t.Errorf("formatOwner = %q, %v; want %q", got, err, want)
	}
}
