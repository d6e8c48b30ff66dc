package service

import (
	"encoding/json"
	"strings"

	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/subjects"
)

// identity is who sent a request.
type identity struct {
	// owner is the requesting connection, zero when the request does not
	// say.
	owner subjects.Owner
	// account is the requester's NATS account, known only from the
	// server-stamped Nats-Request-Info header, so only with tenants.
	account string
}

// requestInfo is the part of the Nats-Request-Info header that names the
// requesting connection.
type requestInfo struct {
	ID      uint64 `json:"id"`     // client id on its server
	Server  string `json:"server"` // the server's name
	Account string `json:"acc"`
}

// ownerOf names the connection a request came from. With trustRequestInfo,
// the Nats-Request-Info header wins; otherwise, and when it is absent or
// unreadable, the Ldlm-Owner header set by our clients names it. The
// server in either may be a name (Nats-Request-Info has no server id, and
// older clients send the name): resolve turns it into the server's id.
//
// The NATS server writes Nats-Request-Info, over anything the client put
// there, only on a request that crosses an account import with sharing on.
// Within one account it passes the client's header through untouched, so a
// client could name another connection as the owner of its locks (which
// then live as long as that connection) or pick another account's lock
// namespace. The header is trusted only in tenant mode, where every request
// must come through an import.
func ownerOf(h micro.Headers, trustRequestInfo bool, resolve func(server string) string) (identity, error) {
	if v := h.Get(subjects.HeaderRequestInfo); v != "" && trustRequestInfo {
		var info requestInfo
		if err := json.Unmarshal([]byte(v), &info); err == nil && info.ID != 0 && info.Server != "" {
			return identity{owner: subjects.Owner{ServerID: resolve(info.Server), ClientID: info.ID}, account: info.Account}, nil
		}
	}
	if v := h.Get(subjects.HeaderOwner); v != "" {
		o, err := subjects.ParseOwner(v)
		if err != nil {
			return identity{}, err
		}
		o.ServerID = resolve(o.ServerID)
		return identity{owner: o}, nil
	}
	return identity{}, nil
}

// identify is ownerOf plus, with tenants, the rule that every request must
// come through an account import, since its account picks the namespace.
func (s *Service) identify(h micro.Headers) (identity, error) {
	id, err := ownerOf(h, s.cfg.Tenants, s.live.resolve)
	if err == nil && s.cfg.Tenants && id.account == "" {
		return id, subjects.Errorf(subjects.CodeBadRequest,
			"this service keeps one lock namespace per account, and the request names no account: "+
				"send it through your account's import of the ldlm service (with share: true)")
	}
	return id, err
}

// tenantSep joins an account and a lock name into the engine's name for
// the lock. A NUL cannot be in a NATS account name.
const tenantSep = "\x00"

// engineName is the engine's name for lock name of account: the name
// itself, or with tenants the account and the name.
func (s *Service) engineName(account, name string) string {
	if !s.cfg.Tenants {
		return name
	}
	return account + tenantSep + name
}

// splitEngineName undoes engineName.
func splitEngineName(n string) (account, name string) {
	if acc, rest, ok := strings.Cut(n, tenantSep); ok {
		return acc, rest
	}
	return "", n
}
