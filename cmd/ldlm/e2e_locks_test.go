package main

import (
	"encoding/base64"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/service"
	"github.com/ldlm-io/ldlm/subjects"
)

// asyncReq runs `nats req` in the background; the result arrives on the
// channel.
func (s *ldlmServer) asyncReq(subject, body string, headers ...string) <-chan asyncResult {
	ch := make(chan asyncResult, 1)
	go func() {
		r, err := s.runNats(reqArgs(subject, body, headers...)...)
		ch <- asyncResult{r, err}
	}()
	return ch
}

type asyncResult struct {
	r   cliResult
	err error
}

// await waits for a background request's result.
func await(t testing.TB, ch <-chan asyncResult) cliResult {
	t.Helper()
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatal(res.err)
		}
		return res.r
	case <-time.After(cliTimeout + 10*time.Second):
		t.Fatal("the background nats req did not return")
		return cliResult{}
	}
}

// TestE2EConcepts drives every concept of the user documentation (lock,
// try lock, unlock, renew, size, lock timeout, wait timeout) through the
// nats CLI against `ldlm` in embedded mode, and checks the JSON replies and
// error headers against docs/protocol.md.
func TestE2EConcepts(t *testing.T) {
	t.Parallel()
	natsCLI(t)
	s := startLDLM(t, nil)
	nc := s.connect(t) // for side-effect-free probes only

	t.Run("lock trylock unlock", func(t *testing.T) {
		t.Parallel()
		const name = "job"
		g1 := wantGrant(t, s.req(t, subject(subjects.OpLock, name), ""), name)
		if g1.Size != 1 {
			t.Errorf("default size: got %d, want 1", g1.Size)
		}
		wantBusy(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, g1.Key)), name)

		g2 := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
		if g2.Token <= g1.Token {
			t.Errorf("fencing token did not grow: first grant %d, later grant %d", g1.Token, g2.Token)
		}
		if g2.Key == g1.Key {
			t.Errorf("two grants got the same key %q", g1.Key)
		}
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, g2.Key)), name)
		// Released and nobody waits: the lock is gone.
		wantUnlockError(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, g2.Key)), name, subjects.CodeLockDoesNotExist)
	})

	t.Run("blocking lock is granted when the holder unlocks", func(t *testing.T) {
		t.Parallel()
		const name = "handoff"
		h := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
		key := newKey()
		waiter := s.asyncReq(subject(subjects.OpLock, name), jsonBody(t, map[string]any{"key": key}))
		waitParked(t, nc, name, key)
		// A waiting key holds no slot yet.
		wantLockError(t, s.req(t, subject(subjects.OpRenew, name), renewBody(t, key, 5)), name, subjects.CodeNotLocked)

		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, h.Key)), name)
		g := wantGrant(t, await(t, waiter), name)
		if g.Key != key {
			t.Errorf("grant key: got %q, want the client-chosen %q", g.Key, key)
		}
		if g.Token <= h.Token {
			t.Errorf("fencing token did not grow: holder %d, next holder %d", h.Token, g.Token)
		}
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, key)), name)
	})

	t.Run("unlock with a waiter's key cancels the wait", func(t *testing.T) {
		t.Parallel()
		const name = "cancelled"
		h := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
		key := newKey()
		waiter := s.asyncReq(subject(subjects.OpLock, name), jsonBody(t, map[string]any{"key": key}))
		waitParked(t, nc, name, key)
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, key)), name)
		wantLockError(t, await(t, waiter), name, subjects.CodeLockWaitCancelled)
		// The holder is untouched.
		wantBusy(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, h.Key)), name)
	})

	t.Run("size", func(t *testing.T) {
		t.Parallel()
		const name = "slots"
		size2 := `{"size":2}`
		a := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), size2), name)
		b := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), size2), name)
		if a.Size != 2 || b.Size != 2 {
			t.Errorf("sizes: got %d and %d, want 2", a.Size, b.Size)
		}
		if a.Key == b.Key || b.Token <= a.Token {
			t.Errorf("two slots: keys %q and %q, tokens %d and %d", a.Key, b.Key, a.Token, b.Token)
		}
		wantBusy(t, s.req(t, subject(subjects.OpTryLock, name), size2), name)

		// Another size for an existing lock is refused, for lock too (at
		// once: it does not wait).
		wantLockError(t, s.req(t, subject(subjects.OpTryLock, name), `{"size":3}`), name, subjects.CodeLockSizeMismatch)
		wantLockError(t, s.req(t, subject(subjects.OpTryLock, name), ""), name, subjects.CodeLockSizeMismatch)
		wantLockError(t, s.req(t, subject(subjects.OpLock, name), `{"size":1,"wait_timeout_seconds":30}`), name, subjects.CodeLockSizeMismatch)

		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, a.Key)), name)
		c := wantGrant(t, s.req(t, subject(subjects.OpLock, name), size2), name)
		for _, k := range []string{b.Key, c.Key} {
			wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, k)), name)
		}
	})

	t.Run("lock timeout", func(t *testing.T) {
		t.Parallel()
		const name = "expiring"
		sent := time.Now()
		g := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), `{"lock_timeout_seconds":1}`), name)
		expiresAround(t, g, sent, time.Now(), time.Second)

		// Poll until the grant has expired and the lock is free again.
		deadline := time.Now().Add(10 * time.Second)
		var next subjects.LockResponse
		for {
			r := s.req(t, subject(subjects.OpTryLock, name), "")
			if resp := lockReply(t, r); resp.Locked {
				next = wantGrant(t, r, name)
				break
			}
			wantBusy(t, r, name)
			if time.Now().After(deadline) {
				t.Fatalf("a grant with lock_timeout_seconds 1 still held the lock 10s later (expires_at %s)", g.ExpiresAt)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if next.Token <= g.Token {
			t.Errorf("fencing token did not grow: expired grant %d, next grant %d", g.Token, next.Token)
		}
		// The expired key is worth nothing now.
		wantUnlockError(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, g.Key)), name, subjects.CodeInvalidLockKey)
		wantLockError(t, s.req(t, subject(subjects.OpRenew, name), renewBody(t, g.Key, 5)), name, subjects.CodeInvalidLockKey)
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, next.Key)), name)
	})

	t.Run("wait timeout", func(t *testing.T) {
		t.Parallel()
		const name = "contended"
		h := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
		sent := time.Now()
		r := s.req(t, subject(subjects.OpLock, name), `{"wait_timeout_seconds":0.5}`)
		took := time.Since(sent)
		wantLockError(t, r, name, subjects.CodeLockWaitTimeout)
		if !strings.Contains(r.stderr, "Nats-Service-Error-Code: LockWaitTimeout") {
			t.Errorf("the CLI did not show the error code header; stderr:\n%s", r.stderr)
		}
		if took < 500*time.Millisecond {
			t.Errorf("LockWaitTimeout after %s, before the wait timeout of 0.5s", took)
		}
		// The timed-out waiter is gone: it does not take the lock later.
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, h.Key)), name)
		g := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, g.Key)), name)
	})

	t.Run("unlock and renew errors", func(t *testing.T) {
		t.Parallel()
		const name, unknown = "guarded", "never-locked"
		h := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
		wantUnlockError(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, "wrong-key")), name, subjects.CodeInvalidLockKey)
		wantLockError(t, s.req(t, subject(subjects.OpRenew, name), renewBody(t, "wrong-key", 5)), name, subjects.CodeInvalidLockKey)
		wantUnlockError(t, s.req(t, subject(subjects.OpUnlock, unknown), unlockBody(t, "any-key")), unknown, subjects.CodeLockDoesNotExist)
		wantLockError(t, s.req(t, subject(subjects.OpRenew, unknown), renewBody(t, "any-key", 5)), unknown, subjects.CodeLockDoesNotExist)
		// The failed attempts changed nothing.
		wantBusy(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, h.Key)), name)

		// A client-chosen key is the grant's key, and cannot be used twice.
		key := newKey()
		g := wantGrant(t, s.req(t, subject(subjects.OpTryLock, "chosen"), jsonBody(t, map[string]any{"key": key, "size": 2})), "chosen")
		if g.Key != key {
			t.Errorf("grant key: got %q, want the client-chosen %q", g.Key, key)
		}
		wantLockError(t, s.req(t, subject(subjects.OpTryLock, "chosen"), jsonBody(t, map[string]any{"key": key, "size": 2})), "chosen", subjects.CodeLockKeyInUse)
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, "chosen"), unlockBody(t, key)), "chosen")
	})

	t.Run("renew", func(t *testing.T) {
		t.Parallel()
		const name = "renewed"
		sent := time.Now()
		g := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), `{"lock_timeout_seconds":10}`), name)
		expiresAround(t, g, sent, time.Now(), 10*time.Second)

		sent = time.Now()
		r := wantGrant(t, s.req(t, subject(subjects.OpRenew, name), renewBody(t, g.Key, 300)), name)
		expiresAround(t, r, sent, time.Now(), 300*time.Second)
		if !r.ExpiresAt.After(g.ExpiresAt) {
			t.Errorf("renew did not move expires_at later: %s, then %s", g.ExpiresAt, r.ExpiresAt)
		}
		if r.Key != g.Key || r.Token != g.Token || r.Size != g.Size {
			t.Errorf("renew changed the grant: %+v, then %+v", g, r)
		}
		// Renewing again moves it again (fractions of a second allowed).
		r2 := wantGrant(t, s.req(t, subject(subjects.OpRenew, name), renewBody(t, g.Key, 600.5)), name)
		if !r2.ExpiresAt.After(r.ExpiresAt) {
			t.Errorf("second renew did not move expires_at later: %s, then %s", r.ExpiresAt, r2.ExpiresAt)
		}
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, g.Key)), name)
	})

	t.Run("names encoded with a tilde", func(t *testing.T) {
		t.Parallel()
		// The documented example, literally.
		if got := subjects.EncodeName("My lock"); got != "~TXkgbG9jaw" {
			t.Fatalf(`EncodeName("My lock") = %q, docs/protocol.md says ~TXkgbG9jaw`, got)
		}
		g := wantGrant(t, s.req(t, "ldlm.lock.~TXkgbG9jaw", ""), "My lock")
		wantBusy(t, s.req(t, "ldlm.trylock.~TXkgbG9jaw", ""), "My lock")
		wantUnlocked(t, s.req(t, "ldlm.unlock.~TXkgbG9jaw", unlockBody(t, g.Key)), "My lock")

		for _, name := range []string{"a*b", "a>b", "é", "~tilde", "a..b", ".lead", "trail.", "tab\tname", strings.Repeat("x", 1024), strings.Repeat("é", 512)} {
			enc := subjects.EncodeName(name)
			g := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
			wantBusy(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
			wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, g.Key)), name)
			if len(name) <= 20 && !strings.HasPrefix(enc, "~") {
				t.Errorf("name %q travels as %q, want the ~ form", name, enc)
			}
		}

		// Both forms of a plain name are the same lock.
		const plain = "plain-name"
		encoded := "~" + base64.RawURLEncoding.EncodeToString([]byte(plain))
		g = wantGrant(t, s.req(t, subject(subjects.OpTryLock, plain), ""), plain)
		wantBusy(t, s.req(t, "ldlm.trylock."+encoded, ""), plain)
		wantUnlocked(t, s.req(t, "ldlm.unlock."+encoded, unlockBody(t, g.Key)), plain)
	})

	t.Run("dotted names", func(t *testing.T) {
		t.Parallel()
		g1 := wantGrant(t, s.req(t, "ldlm.trylock.orders.123", ""), "orders.123")
		// A prefix or an extension of a dotted name is another lock.
		g2 := wantGrant(t, s.req(t, "ldlm.trylock.orders", ""), "orders")
		g3 := wantGrant(t, s.req(t, "ldlm.lock.orders.123.items", ""), "orders.123.items")
		wantBusy(t, s.req(t, "ldlm.trylock.orders.123", ""), "orders.123")
		wantUnlocked(t, s.req(t, "ldlm.unlock.orders.123", unlockBody(t, g1.Key)), "orders.123")
		wantUnlocked(t, s.req(t, "ldlm.unlock.orders", unlockBody(t, g2.Key)), "orders")
		wantUnlocked(t, s.req(t, "ldlm.unlock.orders.123.items", unlockBody(t, g3.Key)), "orders.123.items")
	})

	t.Run("anonymous locks get the default lock timeout", func(t *testing.T) {
		t.Parallel()
		for _, op := range []string{subjects.OpLock, subjects.OpTryLock} {
			name := "anonymous-" + op
			sent := time.Now()
			g := wantGrant(t, s.req(t, subject(op, name), ""), name)
			expiresAround(t, g, sent, time.Now(), 60*time.Second)
			wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, g.Key)), name)
		}
		// An explicit timeout wins over the default.
		sent := time.Now()
		g := wantGrant(t, s.req(t, subject(subjects.OpLock, "anonymous-explicit"), `{"lock_timeout_seconds":300}`), "anonymous-explicit")
		expiresAround(t, g, sent, time.Now(), 300*time.Second)
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, "anonymous-explicit"), unlockBody(t, g.Key)), "anonymous-explicit")

		// A lock that names an owner connection has no timeout: the
		// connection's disconnect frees it. (No such connection exists here;
		// the lock is unlocked at once.)
		g = wantGrant(t, s.req(t, subject(subjects.OpTryLock, "owned"), "", subjects.HeaderOwner+":ldlm:999999"), "owned")
		if !g.ExpiresAt.IsZero() {
			t.Errorf("a lock with an %s header got expires_at %s; want none", subjects.HeaderOwner, g.ExpiresAt)
		}
		wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, "owned"), unlockBody(t, g.Key)), "owned")
	})

	t.Run("discovery with nats micro", func(t *testing.T) {
		t.Parallel()
		ls := s.nats(t, "micro", "ls")
		if !strings.Contains(ls.stdout, "ldlm") || !strings.Contains(ls.stdout, "light-weight distributed lock manager") {
			t.Errorf("nats micro ls does not list ldlm:\n%s", ls.stdout)
		}
		var list []micro.Info
		decodeStrict(t, s.nats(t, "micro", "ls", "--json"), &list)
		if len(list) != 1 || list[0].Name != "ldlm" {
			t.Errorf("nats micro ls --json: want one service ldlm, got %+v", list)
		}

		text := s.nats(t, "micro", "info", "ldlm")
		for _, want := range []string{"ldlm", "ldlm.>", "ldlm.admin.list"} {
			if !strings.Contains(text.stdout, want) {
				t.Errorf("nats micro info ldlm does not show %q:\n%s", want, text.stdout)
			}
		}
		var info struct {
			Info  micro.Info  `json:"info"`
			Stats micro.Stats `json:"stats"`
		}
		decodeStrict(t, s.nats(t, "micro", "info", "ldlm", "--json"), &info)
		endpoints := map[string]string{}
		for _, ep := range info.Info.Endpoints {
			endpoints[ep.Name] = ep.Subject
			if ep.QueueGroup != "" {
				t.Errorf("endpoint %s is in queue group %q; every instance must see every request", ep.Name, ep.QueueGroup)
			}
		}
		// One endpoint, so one subscription, for the four operations.
		if got, want := endpoints[service.RequestsEndpoint], "ldlm.>"; got != want {
			t.Errorf("endpoint %s: subject %q, want %q", service.RequestsEndpoint, got, want)
		}
		if info.Info.Metadata["prefix"] != "ldlm" {
			t.Errorf("metadata: %v, want prefix ldlm", info.Info.Metadata)
		}
		out, err := exec.Command(ldlmBinary(t), "version").Output()
		if err != nil {
			t.Fatalf("ldlm version: %v", err)
		}
		if want := strings.TrimPrefix(strings.TrimSpace(string(out)), "ldlm "); info.Info.Version != want {
			t.Errorf("micro version %q, ldlm version says %q", info.Info.Version, want)
		}
		s.nats(t, "micro", "stats", "ldlm")
	})
}

// TestE2EBadInput sends malformed and out-of-range requests with the nats
// CLI: each gets its documented error code, in the body and in the
// Nats-Service-Error-Code header, and the service still works afterwards.
func TestE2EBadInput(t *testing.T) {
	t.Parallel()
	natsCLI(t)
	s := startLDLM(t, nil)

	tooLong := strings.Repeat("n", subjects.DefaultMaxNameLength+1)
	tooLongEncoded := strings.Repeat("é", subjects.DefaultMaxNameLength/2+1) // 1026 bytes
	tests := []struct {
		desc    string
		subject string
		body    string
		headers []string
		name    string // the name the reply gives
		code    subjects.ErrorCode
	}{
		{"malformed JSON", "ldlm.lock.bad", `{"size":`, nil, "bad", subjects.CodeBadRequest},
		{"not JSON", "ldlm.lock.bad", `size=2`, nil, "bad", subjects.CodeBadRequest},
		{"null body", "ldlm.lock.bad", `null`, nil, "bad", subjects.CodeBadRequest},
		{"array body", "ldlm.trylock.bad", `[{"size":1}]`, nil, "bad", subjects.CodeBadRequest},
		{"string body", "ldlm.trylock.bad", `"size"`, nil, "bad", subjects.CodeBadRequest},
		{"number body", "ldlm.trylock.bad", `1`, nil, "bad", subjects.CodeBadRequest},
		{"two objects", "ldlm.trylock.bad", `{}{}`, nil, "bad", subjects.CodeBadRequest},
		{"body over the 64 KiB limit", "ldlm.trylock.bad", "{}" + strings.Repeat(" ", 64*1024), nil, "bad", subjects.CodeBadRequest},
		{"unknown field", "ldlm.lock.bad", `{"lock_timeout":5}`, nil, "bad", subjects.CodeBadRequest},
		{"size as string", "ldlm.lock.bad", `{"size":"2"}`, nil, "bad", subjects.CodeBadRequest},
		{"size as fraction", "ldlm.lock.bad", `{"size":1.5}`, nil, "bad", subjects.CodeBadRequest},
		{"timeout as string", "ldlm.trylock.bad", `{"lock_timeout_seconds":"5"}`, nil, "bad", subjects.CodeBadRequest},
		{"key as number", "ldlm.trylock.bad", `{"key":5}`, nil, "bad", subjects.CodeBadRequest},
		{"size 0", "ldlm.lock.bad", `{"size":0}`, nil, "bad", subjects.CodeInvalidLockSize},
		{"size -1", "ldlm.trylock.bad", `{"size":-1}`, nil, "bad", subjects.CodeInvalidLockSize},
		{"negative lock timeout", "ldlm.trylock.bad", `{"lock_timeout_seconds":-1}`, nil, "bad", subjects.CodeInvalidTimeout},
		{"huge lock timeout", "ldlm.lock.bad", `{"lock_timeout_seconds":1e12}`, nil, "bad", subjects.CodeInvalidTimeout},
		{"lock timeout over a year", "ldlm.lock.bad", fmt.Sprintf(`{"lock_timeout_seconds":%d}`, subjects.MaxTimeoutSeconds+1), nil, "bad", subjects.CodeInvalidTimeout},
		{"negative wait timeout", "ldlm.lock.bad", `{"wait_timeout_seconds":-0.5}`, nil, "bad", subjects.CodeInvalidTimeout},
		{"tiny wait timeout", "ldlm.lock.bad", `{"wait_timeout_seconds":0.0001}`, nil, "bad", subjects.CodeInvalidTimeout},
		{"huge renew timeout", "ldlm.renew.bad", `{"key":"k","lock_timeout_seconds":1e300}`, nil, "bad", subjects.CodeInvalidTimeout},
		{"empty name", "ldlm.lock.~", ``, nil, "", subjects.CodeInvalidLockName},
		{"broken tilde encoding", "ldlm.lock.~!!", ``, nil, "", subjects.CodeInvalidLockName},
		{"tilde encoding with padding", "ldlm.trylock.~TXkgbG9jaw==", ``, nil, "", subjects.CodeInvalidLockName},
		{"name not UTF-8", "ldlm.trylock.~_w", ``, nil, "", subjects.CodeInvalidLockName},
		{"name of 1025 bytes", "ldlm.lock." + tooLong, ``, nil, "", subjects.CodeInvalidLockName},
		{"encoded name of 1026 bytes", subject(subjects.OpLock, tooLongEncoded), ``, nil, "", subjects.CodeInvalidLockName},
		{"unlock of an empty name", "ldlm.unlock.~", `{"key":"k"}`, nil, "", subjects.CodeInvalidLockName},
		{"trylock with wait_timeout_seconds", "ldlm.trylock.bad", `{"wait_timeout_seconds":5}`, nil, "bad", subjects.CodeBadRequest},
		{"unlock without key", "ldlm.unlock.bad", ``, nil, "bad", subjects.CodeInvalidLockKey},
		{"unlock with empty key", "ldlm.unlock.bad", `{"key":""}`, nil, "bad", subjects.CodeInvalidLockKey},
		{"unlock with size", "ldlm.unlock.bad", `{"key":"k","size":1}`, nil, "bad", subjects.CodeBadRequest},
		{"unlock with lock timeout", "ldlm.unlock.bad", `{"key":"k","lock_timeout_seconds":5}`, nil, "bad", subjects.CodeBadRequest},
		{"renew without lock_timeout_seconds", "ldlm.renew.bad", `{"key":"k"}`, nil, "bad", subjects.CodeInvalidTimeout},
		{"renew without key", "ldlm.renew.bad", `{"lock_timeout_seconds":5}`, nil, "bad", subjects.CodeInvalidLockKey},
		{"renew with size", "ldlm.renew.bad", `{"key":"k","lock_timeout_seconds":5,"size":2}`, nil, "bad", subjects.CodeBadRequest},
		{"key with a space", "ldlm.trylock.bad", `{"key":"my key"}`, nil, "bad", subjects.CodeInvalidLockKey},
		{"key too long", "ldlm.trylock.bad", jsonBody(t, map[string]any{"key": strings.Repeat("k", subjects.MaxKeyLength+1)}), nil, "bad", subjects.CodeInvalidLockKey},
		{"owner header without client id", "ldlm.trylock.bad", ``, []string{subjects.HeaderOwner + ":no-client-id"}, "bad", subjects.CodeBadRequest},
		{"owner header with client id 0", "ldlm.lock.bad", ``, []string{subjects.HeaderOwner + ":ldlm:0"}, "bad", subjects.CodeBadRequest},
	}
	// The group returns when all its parallel subtests are done.
	t.Run("requests", func(t *testing.T) {
		for i, tc := range tests {
			t.Run(tc.desc, func(t *testing.T) {
				t.Parallel()
				r := s.req(t, tc.subject, tc.body, tc.headers...)
				if strings.HasPrefix(tc.subject, "ldlm.unlock.") {
					wantUnlockError(t, r, tc.name, tc.code)
				} else {
					wantLockError(t, r, tc.name, tc.code)
				}
				// The service still answers a normal request.
				name := fmt.Sprintf("after-bad-input-%d", i)
				g := wantGrant(t, s.req(t, subject(subjects.OpTryLock, name), ""), name)
				wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, name), unlockBody(t, g.Key)), name)
			})
		}
	})

	// None of the bad requests took the lock they named.
	g := wantGrant(t, s.req(t, subject(subjects.OpTryLock, "bad"), ""), "bad")
	wantUnlocked(t, s.req(t, subject(subjects.OpUnlock, "bad"), unlockBody(t, g.Key)), "bad")
}
