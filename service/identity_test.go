package service

import (
	"testing"

	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/subjects"
)

func TestOwnerOf(t *testing.T) {
	tests := []struct {
		name    string
		headers micro.Headers
		tenants bool // trust Nats-Request-Info
		want    string
		wantErr bool
	}{
		{name: "no headers", headers: nil, want: ""},
		{name: "client header", headers: micro.Headers{subjects.HeaderOwner: {"n1:42"}}, want: "n1:42"},
		{name: "server name with colon", headers: micro.Headers{subjects.HeaderOwner: {"a:b:42"}}, want: "a:b:42"},
		// Server names resolve to ids: n2 is the name of server N2ID.
		{name: "server name resolved to its id", headers: micro.Headers{subjects.HeaderOwner: {"n2:42"}}, want: "N2ID:42"},
		{name: "server id kept", headers: micro.Headers{subjects.HeaderOwner: {"N2ID:42"}}, want: "N2ID:42"},
		{name: "request info", headers: micro.Headers{subjects.HeaderRequestInfo: {`{"acc":"APP","id":7,"server":"n2"}`}}, tenants: true, want: "N2ID:7"},
		{name: "request info without account", headers: micro.Headers{subjects.HeaderRequestInfo: {`{"id":7,"server":"n2"}`}}, tenants: true, want: "N2ID:7"},
		{
			name: "request info wins over the client header",
			headers: micro.Headers{
				subjects.HeaderRequestInfo: {`{"id":7,"server":"n2"}`},
				subjects.HeaderOwner:       {"n1:42"},
			},
			tenants: true,
			want:    "N2ID:7",
		},
		{name: "unreadable request info falls back", headers: micro.Headers{subjects.HeaderRequestInfo: {`{`}, subjects.HeaderOwner: {"n1:42"}}, tenants: true, want: "n1:42"},
		// Without tenants the header may be the client's own invention.
		{name: "request info ignored without tenants", headers: micro.Headers{subjects.HeaderRequestInfo: {`{"acc":"APP","id":7,"server":"n2"}`}}, want: ""},
		{
			name: "client header wins without tenants",
			headers: micro.Headers{
				subjects.HeaderRequestInfo: {`{"id":7,"server":"n2"}`},
				subjects.HeaderOwner:       {"n1:42"},
			},
			want: "n1:42",
		},
		{name: "malformed client header", headers: micro.Headers{subjects.HeaderOwner: {"n1"}}, wantErr: true},
		{name: "client id zero", headers: micro.Headers{subjects.HeaderOwner: {"n1:0"}}, wantErr: true},
		{name: "client id not a number", headers: micro.Headers{subjects.HeaderOwner: {"n1:x"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resolve := func(server string) string {
				if server == "n2" {
					return "N2ID"
				}
				return server
			}
			id, err := ownerOf(tt.headers, tt.tenants, resolve)
			got := id.owner.String()
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ownerOf = %q, %v; want %q, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
