package service

import (
	"encoding/json"

	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/subjects"
)

// requestInfo is the part of the server-stamped Nats-Request-Info header
// that names the requesting connection.
type requestInfo struct {
	ID     uint64 `json:"id"`     // client id on its server
	Server string `json:"server"` // the server's name
}

// ownerOf names the connection a request came from, as
// subjects.FormatOwner(server name, client id), or "" when the request does
// not say. The server-stamped Nats-Request-Info header wins because it cannot
// be forged; the Ldlm-Owner header set by our clients comes next.
func ownerOf(h micro.Headers) (string, error) {
	if v := h.Get(subjects.HeaderRequestInfo); v != "" {
		var info requestInfo
		if err := json.Unmarshal([]byte(v), &info); err == nil && info.ID != 0 && info.Server != "" {
			return subjects.FormatOwner(info.Server, info.ID), nil
		}
	}
	if v := h.Get(subjects.HeaderOwner); v != "" {
		if _, _, err := subjects.ParseOwner(v); err != nil {
			return "", err
		}
		return v, nil
	}
	return "", nil
}
