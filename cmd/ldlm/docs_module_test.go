package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDocsModulePath: every Go import path of this project that the
// documentation names (go get, go install, go doc) is in the module of
// go.mod and names a directory of the repository.
func TestDocsModulePath(t *testing.T) {
	root := filepath.Join("..", "..")
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^module (\S+)$`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("go.mod has no module line")
	}
	module := string(m[1])
	owner, _, _ := strings.Cut(strings.TrimPrefix(module, "github.com/"), "/")

	docs, err := filepath.Glob(filepath.Join(root, "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	docs = append(docs, more...)
	docs = append(docs, filepath.Join(root, "clientlib", "README.md"))
	// Paths of this project: github.com/ANY/ldlm…, or any path under the
	// module's owner (a renamed module would leave those behind).
	ours := regexp.MustCompile(`github\.com/([A-Za-z0-9_.-]+)/(ldlm[A-Za-z0-9_.-]*)((?:/[A-Za-z0-9_.-]+)*)`)
	found := 0
	for _, doc := range docs {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ours.FindAllStringSubmatch(string(data), -1) {
			path := strings.TrimRight(m[0], ".")
			if m[1] != owner && m[2] == "ldlm" {
				t.Errorf("%s names %s; the module is %s", doc, path, module)
				continue
			}
			if m[1] != owner {
				continue // another project (py-ldlm, go-ldlm, …)
			}
			rest, ok := strings.CutPrefix(path, module)
			if !ok || rest != "" && rest[0] != '/' {
				t.Errorf("%s names %s, outside the module %s", doc, path, module)
				continue
			}
			rest, _, _ = strings.Cut(rest, "@")
			if fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(rest))); err != nil || !fi.IsDir() {
				t.Errorf("%s names %s, which is no directory of the repository", doc, path)
				continue
			}
			found++
		}
	}
	if found == 0 {
		t.Error("the documentation names no import path of the module: the install instructions are gone?")
	}
}
