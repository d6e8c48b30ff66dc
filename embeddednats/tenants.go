package embeddednats

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/ldlm-io/ldlm/subjects"
)

// lockOps are the request subjects a tenant account imports: not the
// admin ones, so tenants cannot administer the service.
var lockOps = []string{subjects.OpLock, subjects.OpTryLock, subjects.OpUnlock, subjects.OpRenew}

// tenantResponseThreshold is how long the server keeps a way back to a
// tenant for a reply. A lock request that waits longer loses its reply, so
// it is long.
const tenantResponseThreshold = "24h"

var accountName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// ParseTenants reads ACCOUNT:USER:PASSWORD entries separated by commas, as
// in LDLM_EMBEDDED_TENANTS (a password may contain ':' but not ','). It
// reports every entry that could not make a valid server, so that a bad
// list is found before anything starts. An empty spec gives no tenants.
func ParseTenants(spec string) ([]Tenant, error) {
	var out []Tenant
	for _, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		parts := strings.SplitN(entry, ":", 3)
		if len(parts) != 3 || parts[1] == "" || parts[2] == "" {
			return nil, fmt.Errorf("tenant %q: want ACCOUNT:USER:PASSWORD", entry)
		}
		out = append(out, Tenant{Account: parts[0], User: parts[1], Password: parts[2]})
	}
	if err := checkTenants(out); err != nil {
		return nil, err
	}
	return out, nil
}

// TenantsConfig returns a nats-server configuration for the multi-tenant
// mode: a system account, the service account LDLM, and one account per
// tenant that imports the lock subjects with sharing on and its own
// lost-lock notices. systemPassword and servicePassword may be bcrypt
// hashes. The same layout works for an external server: see
// deploy/tenants.conf.
func TenantsConfig(prefix string, tenants []Tenant, systemPassword, servicePassword string) string {
	if prefix == "" {
		prefix = subjects.DefaultPrefix
	}
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "system_account: %s\naccounts {\n", SystemAccount)
	fmt.Fprintf(&b, "  %s { users: [{user: %s, password: %s}] }\n", SystemAccount, q(systemUser), q(systemPassword))
	fmt.Fprintf(&b, "  %s {\n    users: [{user: %s, password: %s}]\n    exports: [\n", ServiceAccount, q(serviceUser), q(servicePassword))
	for _, op := range lockOps {
		fmt.Fprintf(&b, "      {service: %s, response_threshold: %s}\n", q(prefix+"."+op+".>"), q(tenantResponseThreshold))
	}
	for _, t := range tenants {
		fmt.Fprintf(&b, "      {stream: %s, accounts: [%s]}\n", q(prefix+"."+subjects.LostToken+"."+t.Account+".>"), t.Account)
	}
	fmt.Fprintf(&b, "      {stream: %s}\n    ]\n  }\n", q(prefix+"."+subjects.InstanceToken+".>"))
	for _, t := range tenants {
		fmt.Fprintf(&b, "  %s {\n    users: [{user: %s, password: %s}]\n    imports: [\n", t.Account, q(t.User), q(t.Password))
		for _, op := range lockOps {
			fmt.Fprintf(&b, "      {service: {account: %s, subject: %s}, share: true}\n", ServiceAccount, q(prefix+"."+op+".>"))
		}
		fmt.Fprintf(&b, "      {stream: {account: %s, subject: %s}, to: %s}\n", ServiceAccount,
			q(prefix+"."+subjects.LostToken+"."+t.Account+".>"), q(prefix+"."+subjects.LostToken+".>"))
		fmt.Fprintf(&b, "      {stream: {account: %s, subject: %s}}\n    ]\n  }\n", ServiceAccount, q(prefix+"."+subjects.InstanceToken+".>"))
	}
	b.WriteString("}\n")
	return b.String()
}

// checkTenants reports a tenant list that cannot make a valid server.
func checkTenants(tenants []Tenant) error {
	accounts, users := map[string]bool{}, map[string]bool{}
	for _, t := range tenants {
		switch {
		case !accountName.MatchString(t.Account):
			return fmt.Errorf("tenant account %q: use only letters, digits, '_' and '-'", t.Account)
		case t.Account == SystemAccount || t.Account == ServiceAccount || t.Account == AppAccount:
			return fmt.Errorf("tenant account %q: the name is reserved, choose another", t.Account)
		case accounts[t.Account]:
			return fmt.Errorf("tenant account %q: given twice, give each account once", t.Account)
		case t.User == systemUser || t.User == serviceUser || t.User == appUser || users[t.User]:
			// The server would refuse to start, or log the wrong one in.
			return fmt.Errorf("tenant user %q: the name is taken, give each tenant its own user", t.User)
		}
		accounts[t.Account], users[t.User] = true, true
	}
	return nil
}
