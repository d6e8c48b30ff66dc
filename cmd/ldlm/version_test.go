package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVersion: `ldlm version` and `ldlm --version` print the same line, and
// a release build reports its tag, set with -ldflags or taken from the
// git tag of the commit it was built from.
func TestVersion(t *testing.T) {
	t.Parallel()
	_, want, _, _ := runLDLM(t, nil, "version")
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, stdout, stderr, _ := runLDLM(t, nil, args...)
		if code != 0 || stdout != want || !strings.HasPrefix(stdout, "ldlm ") || stderr != "" {
			t.Errorf("ldlm %s: exit %d, stdout %q, stderr %q; want 0 and %q", args[0], code, stdout, stderr, want)
		}
	}

	t.Run("ldflags", func(t *testing.T) {
		t.Parallel()
		bin := filepath.Join(t.TempDir(), "ldlm")
		goCmd(t, ".", "build", "-ldflags", "-X main.buildVersion=v1.2.3", "-o", bin, ".")
		if got := runVersion(t, bin, "--version"); got != "ldlm 1.2.3\n" {
			t.Errorf("built with -X main.buildVersion=v1.2.3, --version prints %q", got)
		}
	})

	t.Run("git tag", func(t *testing.T) {
		t.Parallel()
		if testing.Short() {
			t.Skip("clones the repository and builds ldlm")
		}
		if _, err := exec.LookPath("git"); err != nil {
			t.Skip("no git")
		}
		head, err := exec.Command("git", "-C", "../..", "rev-parse", "HEAD").Output()
		if err != nil {
			t.Skip("not in a git checkout")
		}
		clone := filepath.Join(t.TempDir(), "src")
		runCmd(t, "git", "clone", "--quiet", "--no-checkout", "../..", clone)
		runCmd(t, "git", "-C", clone, "checkout", "--quiet", strings.TrimSpace(string(head)))
		// A v2+ tag would need a /v2 module path: Go ignores it here.
		runCmd(t, "git", "-C", clone, "tag", "v1.8.7")
		bin := filepath.Join(t.TempDir(), "ldlm")
		goCmd(t, clone, "build", "-buildvcs=true", "-o", bin, "./cmd/ldlm")
		// The clone has the committed code: `ldlm version` is older than
		// --version.
		if got := runVersion(t, bin, "version"); got != "ldlm 1.8.7\n" {
			t.Errorf("built from a clean checkout tagged v1.8.7, ldlm version prints %q", got)
		}
	})
}

// goCmd runs the go command in dir, bounded, with the module settings of
// this repository rather than of the environment.
func goCmd(t *testing.T, dir string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func runCmd(t *testing.T, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func runVersion(t *testing.T, bin, arg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, arg).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", bin, arg, err)
	}
	return string(out)
}
