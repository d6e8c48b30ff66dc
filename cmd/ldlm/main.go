// Command ldlm is the LDLM lock server: a lock service on NATS.
//
//	ldlm                 run the lock server (same as `ldlm server`)
//	ldlm server --help   list every setting, as flag and LDLM_* variable
//	ldlm version         print the version
//
// With no NATS URL configured it runs its own NATS server, so one command
// gives a working lock server on nats://127.0.0.1:4222.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

// exitUsage is the exit status for bad configuration or usage.
const exitUsage = 2

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "server"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "server":
		return runServer(args, stdout, stderr)
	case "bench":
		return runBench(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "ldlm", version())
		return 0
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ldlm: unknown command %q\n%s", cmd, usage)
		return exitUsage
	}
}

const usage = `Usage:
  ldlm [server] [flags]   run the lock server (ldlm server --help lists the settings)
  ldlm version            print the version
  ldlm bench [scale]      measure the lock service (see BENCHMARKS.md)
`

// version is the module version when built with `go install` or with VCS
// stamping, without Go's leading "v", else "0.0.0-dev" (the micro service
// protocol wants SemVer, which has no "v").
func version() string {
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return strings.TrimPrefix(info.Main.Version, "v")
	}
	return "0.0.0-dev"
}
