package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// TestCLICredentials: the client commands log in as the nats CLI does,
// with flags or NATS_* variables. Against servers that run no lock
// service, "no lock service answers" proves that the login worked, while a
// refused login says "connecting to NATS".
func TestCLICredentials(t *testing.T) {
	t.Parallel()

	// Users as in docs/security.md, with the service; only the
	// application user has permissions here: it may not administer.
	opts, pw := extUserOptions(t, false)
	for _, u := range opts.Users {
		if u.Username == "app" {
			u.Permissions = &server.Permissions{Publish: &server.SubjectPermission{Deny: []string{"ldlm.admin.>"}}}
		}
	}
	users := extStartNATS(t, opts)
	svc := extStartServe(t, extConfig(t, extEnv{
		url:    users.ClientURL(),
		app:    natsCredentials{User: "ldlm", Password: pw.service},
		system: natsCredentials{User: "ldlm-system", Password: pw.system},
	}))
	adminConn := extDial(t, users.ClientURL(), nats.UserInfo("admin", pw.admin))
	extWaitReady(t, svc, adminConn)

	token := extSecret(t)
	tokenURL := extStartNATS(t, &server.Options{Authorization: token}).ClientURL()

	pki := extNewPKI(t, filepath.Join(t.TempDir(), "pki"))
	tlsOpts := &server.Options{}
	extTLSOptions(t, tlsOpts, pki, true) // client certificates required
	tlsURL := strings.Replace(extStartNATS(t, tlsOpts).ClientURL(), "nats://", "tls://", 1)

	const (
		ok         = ""                        // exit 0
		loggedIn   = "no lock service answers" // on a server without the service
		refused    = "connecting to NATS"
		denied     = "publish to ldlm.admin.>" // the request was refused: the line says what to check
		lockedExit = 3
	)
	tests := []struct {
		desc string
		env  []string
		args []string
		want string // in the last line of stderr; ok: exit 0 (lockedExit for lock)
	}{
		{"user and password flags", nil, []string{"status", "--server", users.ClientURL(), "--user", "admin", "--password", pw.admin}, ok},
		{"user and password variables", []string{"NATS_URL=" + users.ClientURL(), "NATS_USER=admin", "NATS_PASSWORD=" + pw.admin}, []string{"status"}, ok},
		{"credentials in the URL", nil, []string{"list", "--server", strings.Replace(users.ClientURL(), "nats://", "nats://admin:"+pw.admin+"@", 1)}, ok},
		{"lock with a password", []string{"NATS_URL=" + users.ClientURL()}, []string{"lock", "--user", "admin", "--password", pw.admin, "creds", "--", "sh", "-c", fmt.Sprintf("exit %d", lockedExit)}, ok},
		{"wrong password", nil, []string{"status", "--server", users.ClientURL(), "--user", "admin", "--password", "wrong"}, refused},
		{"no credentials", nil, []string{"status", "--server", users.ClientURL()}, refused},
		{"user without admin permission", nil, []string{"status", "--server", users.ClientURL(), "--user", "app", "--password", pw.app}, denied},
		{"token flag", nil, []string{"status", "--server", tokenURL, "--token", token}, loggedIn},
		{"token variable", []string{"NATS_URL=" + tokenURL, "NATS_TOKEN=" + token}, []string{"status"}, loggedIn},
		{"no token", nil, []string{"status", "--server", tokenURL}, refused},
		{"TLS flags", nil, []string{"status", "--server", tlsURL, "--tlsca", pki.ca, "--tlscert", pki.clientCert, "--tlskey", pki.clientKey}, loggedIn},
		{"TLS variables", []string{"NATS_URL=" + tlsURL, "NATS_CA=" + pki.ca, "NATS_CERT=" + pki.clientCert, "NATS_KEY=" + pki.clientKey}, []string{"status"}, loggedIn},
		{"TLS without client certificate", nil, []string{"status", "--server", tlsURL, "--tlsca", pki.ca}, refused},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr, _ := runLDLM(t, tc.env, tc.args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			switch {
			case tc.want == ok && tc.args[0] == "lock":
				if code != lockedExit {
					t.Errorf("exit %d, want COMMAND's %d; stderr: %s", code, lockedExit, stderr)
				}
			case tc.want == ok:
				if code != 0 || stdout == "" {
					t.Errorf("exit %d, stdout %q, stderr %q; want 0 and output", code, stdout, stderr)
				}
			default:
				t.Logf("stderr: %s", strings.TrimSpace(stderr))
				if code != exitFailed || !strings.HasPrefix(last, "ldlm "+tc.args[0]+": ") || !strings.Contains(last, tc.want) {
					t.Errorf("exit %d, stderr %q; want %d and a last line \"ldlm %s: …\" that mentions %q", code, stderr, exitFailed, tc.args[0], tc.want)
				}
			}
			for _, secret := range []string{pw.admin, pw.app, token} {
				if strings.Contains(stderr, secret) {
					t.Errorf("stderr shows a secret: %s", stderr)
				}
			}
		})
	}
}
