package clientlib

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// OwnerUsesServerName tells the external tests which form the owner has.
func OwnerUsesServerName() bool { return ownerUsesServerName }

// TestFormatOwner: the owner names the connection by server id (WIRE-V2)
// or, while the service needs it, by server name; and the client id.
func TestFormatOwner(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	defer func(was bool) { ownerUsesServerName = was }(ownerUsesServerName)
	for _, tt := range []struct {
		byName bool
		server func(*nats.Conn) string
	}{
		{false, (*nats.Conn).ConnectedServerId},
		{true, (*nats.Conn).ConnectedServerName},
	} {
		ownerUsesServerName = tt.byName
		got, err := formatOwner(nc)
		if want := subjects.FormatOwner(tt.server(nc), cid); err != nil || got != want {
			t.Errorf("by name %v: formatOwner = %q, %v; want %q", tt.byName, got, err, want)
		}
	}
}
