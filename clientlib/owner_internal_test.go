package clientlib

import (
	"testing"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// TestOwner: the owner names the connection by its server's id, not
// its name (a restarted server keeps its name), and its client id.
func TestOwner(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	connected, _, got := (&Client{nc: nc}).connState()
	if want := subjects.FormatOwner(nc.ConnectedServerId(), cid); !connected || got != want {
		t.Errorf("connState = %v, %q; want connected, %q", connected, got, want)
	}
}
