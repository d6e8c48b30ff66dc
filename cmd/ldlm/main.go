// Command ldlm is the LDLM lock server, a lock service on NATS, and its
// command-line client.
//
//	ldlm                        run the lock server (same as `ldlm server`)
//	ldlm server --help          list every setting, as flag and LDLM_* variable
//	ldlm lock NAME -- COMMAND   run COMMAND while holding lock NAME
//	ldlm list                   list the locks, their holders and waiters
//	ldlm help                   list every command
//
// With no NATS URL configured it runs its own NATS server, so one command
// gives a working lock server on nats://127.0.0.1:4222.
package main

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/ldlm-io/ldlm/internal/bench"
)

// exitUsage is the exit status for bad configuration or usage.
const exitUsage = 2

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "server"
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version") {
		cmd, args = "version", nil
	} else if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	} else if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		// `ldlm --help`: every command, then the flags of the default one.
		fmt.Fprint(stdout, usage+"\n")
	}
	if c, ok := commands[cmd]; ok {
		return c(args, stdout, stderr)
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, "ldlm", version())
		return 0
	case "help":
		if len(args) > 0 && args[0] != "help" {
			// `ldlm help lock` is `ldlm lock --help`.
			return run([]string{args[0], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ldlm: unknown command %q\n%s", cmd, usage)
		return exitUsage
	}
}

// commands are the commands that take their own flags.
var commands = map[string]func(args []string, stdout, stderr io.Writer) int{
	"server":  runServer,
	"lock":    runLock,
	"trylock": runTryLock,
	"list":    runList,
	"unlock":  runUnlock,
	"status":  runStatus,
	"bench":   bench.Main,
}

const usage = `Usage:
  ldlm [server] [flags]                      run the lock server (ldlm server --help lists the settings)
  ldlm lock [flags] NAME -- COMMAND [ARGS]   run COMMAND while holding lock NAME, waiting for it
  ldlm trylock [flags] NAME -- COMMAND       the same, but exit 75 at once if the lock is held
  ldlm list [--json]                         list every lock with its holders and waiters
  ldlm unlock --force [flags] NAME           release lock NAME for its holders (operators)
  ldlm status [--json]                       the lock service's version, uptime and counts
  ldlm version                               print the version (also ldlm --version)
  ldlm bench [scale]                         measure the lock service (see BENCHMARKS.md)
  ldlm help [COMMAND]                        this list, or COMMAND's usage and flags

The client commands connect to --server, else $NATS_URL, else
nats://127.0.0.1:4222, and take the nats CLI's credential flags (--creds,
--user/--password, --token, --nkey, --tlscert/--tlskey/--tlsca) and
variables. Exit statuses of lock and trylock: COMMAND's own; 75 not
obtained; 76 lock lost while COMMAND ran; 126/127 COMMAND not runnable/not
found; 1 lock service failure; 2 usage error.
`

// buildVersion is the version a release build sets:
//
//	go build -ldflags "-X main.buildVersion=v1.2.3" ./cmd/ldlm
//
// Without it, the version comes from the build info.
var buildVersion string

// version is buildVersion, else the module version when built with `go
// install module@version` or with VCS stamping (a build in a git checkout
// at a tagged commit reports the tag), else "0.0.0-dev"; without Go's
// leading "v" (the micro service protocol wants SemVer, which has none).
func version() string {
	v := buildVersion
	if info, ok := debug.ReadBuildInfo(); v == "" && ok && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	return strings.TrimPrefix(cmp.Or(v, "0.0.0-dev"), "v")
}
