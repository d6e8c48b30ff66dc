package embeddednats

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// check reports an Auth that nats-server could not enforce as given.
func (a Auth) check() error {
	switch {
	case (a.User == "") != (a.Password == ""):
		return errors.New("embedded NATS: a user needs a password and a password a user")
	case a.Token != "" && (a.User != "" || len(a.Nkeys) > 0):
		return errors.New("embedded NATS: a token excludes users and nkeys, as in nats-server: give one or the other")
	}
	if err := CheckUser(a.User); err != nil {
		return err
	}
	for _, nk := range a.Nkeys {
		if !nkeys.IsValidPublicUserKey(nk) {
			return fmt.Errorf("embedded NATS: %q is not a public user nkey (U…, 56 characters; `nsc generate nkey --user` or `nk -gen user -pubout` makes one)", nk)
		}
	}
	return nil
}

// CheckUser refuses the user names of the lock service's own in-process
// connections.
func CheckUser(name string) error {
	if name == systemUser || name == serviceUser {
		return fmt.Errorf("user %q: the name is the lock service's own, choose another", name)
	}
	return nil
}

// ParseNkeys reads public user nkeys separated by commas, as in the
// setting that lists them, and checks each.
func ParseNkeys(spec string) ([]string, error) {
	var out []string
	for _, nk := range strings.Split(spec, ",") {
		if nk = strings.TrimSpace(nk); nk != "" {
			out = append(out, nk)
		}
	}
	return out, Auth{Nkeys: out}.check()
}

// LoadTLS reads the server's certificate and key and, when ca is set, the
// CA that client certificates must be signed by, which then become
// required. It says which file is wrong.
func LoadTLS(cert, key, ca string) (*tls.Config, error) {
	if cert == "" || key == "" {
		return nil, errors.New("embedded NATS TLS needs both a certificate and its key")
	}
	c, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cert, KeyFile: key, CaFile: ca, Verify: ca != "", Timeout: tlsTimeout.Seconds()})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS TLS (certificate %s, key %s, CA %q): %w", cert, key, ca, err)
	}
	return c, nil
}

// LoadConfigFile reads a nats-server configuration file for the embedded
// server. It may hold anything nats-server reads (accounts, users with
// permissions, nkeys, no_auth_user, JetStream, clustering, leaf nodes,
// monitoring) except what ldlm sets itself or cannot work with the
// service's own users:
//   - the client port (listen, host, port), server_name, ping_interval and
//     ping_max: ldlm sets them;
//   - a single user or token (authorization {user, password} or
//     {token}): nats-server allows none next to the service's users; put
//     users in accounts;
//   - users outside accounts (authorization {users}): they would land in
//     the global account, where no lock service answers;
//   - operator (JWT) mode: it has no users of its own;
//   - verify_and_map in the tls block: the service's in-process
//     connections have no certificate to log in with;
//   - the users ldlm-system and ldlm-service, which are the service's.
func LoadConfigFile(path string) (*server.Options, error) {
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS configuration: %w", err)
	}
	bad := func(format string, args ...any) (*server.Options, error) {
		return nil, fmt.Errorf("embedded NATS configuration %s: "+format, append([]any{path}, args...)...)
	}
	switch {
	case opts.Host != "" || opts.Port != 0:
		return bad("remove listen/host/port: ldlm sets the client port")
	case opts.ServerName != "":
		return bad("remove server_name: ldlm sets the server name")
	case opts.PingInterval != 0 || opts.MaxPingsOut != 0:
		return bad("remove ping_interval and ping_max: ldlm sets them")
	case opts.Username != "" || opts.Password != "" || opts.Authorization != "":
		return bad("an authorization block with a single user or a token cannot work beside the lock service's users: put users in accounts { APP { users: [...] } }, or use ldlm's token setting")
	case len(opts.TrustedOperators) > 0 || len(opts.TrustedKeys) > 0:
		return bad("operator (JWT) mode is not supported by the embedded server: run an external NATS server")
	case opts.TLSMap:
		return bad("remove verify_and_map: it makes every client log in with a certificate, and the lock service's own in-process connections have none; for mutual TLS set verify: true (or LDLM_EMBEDDED_TLS_CA) and keep users with passwords or nkeys")
	}
	for _, u := range opts.Users {
		switch {
		case u.Account == nil:
			return bad("user %q is in no account, so it would land in the global account where no lock service answers: move it to accounts { %s { users: [...] } }", u.Username, AppAccount)
		}
		if err := CheckUser(u.Username); err != nil {
			return bad("%v", err)
		}
	}
	for _, u := range opts.Nkeys {
		if u.Account == nil {
			return bad("nkey %s is in no account, so it would land in the global account where no lock service answers: move it to accounts { %s { users: [...] } }", u.Nkey, AppAccount)
		}
	}
	return opts, nil
}

// tokenAuth checks every client when a token is the application's
// credential: nats-server has token authentication only without users,
// and the service's in-process connections are users. Secrets are
// compared in constant time.
type tokenAuth struct {
	srv     *server.Server // set once the server exists, before it starts
	token   string
	app     string              // account of the token's clients and of the service
	system  string              // system account
	systemP string              // password of the system user
	service string              // password of the service user
	perms   *server.Permissions // of the token's clients
}

func (a *tokenAuth) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	var account string
	var perms *server.Permissions
	switch {
	case o.Username == systemUser && equal(o.Password, a.systemP):
		account = a.system
	case o.Username == serviceUser && equal(o.Password, a.service):
		account = a.app
	case o.Username == "" && o.Token != "" && equal(o.Token, a.token):
		account, perms = a.app, a.perms
	default:
		return false
	}
	acc, err := a.srv.LookupAccount(account)
	if err != nil {
		return false
	}
	c.RegisterUser(&server.User{Username: o.Username, Account: acc, Permissions: perms})
	return true
}

func equal(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
