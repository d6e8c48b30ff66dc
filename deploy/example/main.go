// Command example is the example client of docker-compose.yml: it takes a
// lock, prints the reply, holds the lock a while, unlocks it and does it
// again, speaking the JSON protocol of docs/protocol.md with plain nats.go.
//
// It connects with the nats CLI's variables: NATS_URL, NATS_USER and
// NATS_PASSWORD (or the flags -url, -user, -password). With -once it stops
// after one lock and unlock and exits with status 0, or 1 if that failed
// within -timeout.
//
// Each request carries the Ldlm-Owner header naming this connection, so the
// service frees the lock the moment the connection closes, and a key chosen
// here, so that a request given up on can be withdrawn with an unlock
// whether or not the grant was already on its way.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

type config struct {
	url, user, password string
	prefix, lock        string
	hold, pause         time.Duration
	wait, lockTimeout   time.Duration
	once                bool
	timeout             time.Duration
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c config
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.url, "url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL (env NATS_URL)")
	fs.StringVar(&c.user, "user", os.Getenv("NATS_USER"), "NATS user (env NATS_USER)")
	fs.StringVar(&c.password, "password", os.Getenv("NATS_PASSWORD"), "NATS password (env NATS_PASSWORD)")
	fs.StringVar(&c.prefix, "prefix", envOr("LDLM_SUBJECT_PREFIX", subjects.DefaultPrefix), "subject prefix of the lock service (env LDLM_SUBJECT_PREFIX)")
	fs.StringVar(&c.lock, "lock", envOr("LOCK_NAME", "example"), "lock name (env LOCK_NAME)")
	fs.DurationVar(&c.hold, "hold", 5*time.Second, "how long to hold the lock")
	fs.DurationVar(&c.pause, "pause", 5*time.Second, "pause between rounds")
	fs.DurationVar(&c.wait, "wait", 30*time.Second, "how long to wait for the lock")
	fs.DurationVar(&c.lockTimeout, "lock-timeout", 60*time.Second, "lock timeout: the lock is released unless unlocked before")
	fs.BoolVar(&c.once, "once", false, "lock and unlock once, then exit")
	fs.DurationVar(&c.timeout, "timeout", time.Minute, "with -once: give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if c.once {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}

	opts := []nats.Option{
		nats.Name("ldlm-example"),
		// The lock service may start after us: keep trying.
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
	}
	if c.user != "" || c.password != "" {
		opts = append(opts, nats.UserInfo(c.user, c.password))
	}
	nc, err := nats.Connect(c.url, opts...)
	if err != nil {
		fmt.Fprintln(stderr, "example: connecting:", err)
		return 1
	}
	defer nc.Close()

	for {
		err := round(ctx, nc, c, stdout)
		switch {
		case err == nil && c.once:
			return 0
		case ctx.Err() != nil:
			if c.once {
				fmt.Fprintln(stderr, "example: gave up:", err)
				return 1
			}
			return 0
		case err != nil:
			fmt.Fprintln(stdout, "example:", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(c.pause):
		}
	}
}

// round takes the lock, holds it and unlocks it.
func round(ctx context.Context, nc *nats.Conn, c config, out io.Writer) error {
	if !nc.IsConnected() {
		return fmt.Errorf("not connected to %s yet", c.url)
	}
	owner, err := ownerOf(nc)
	if err != nil {
		return err
	}
	key := newKey()

	body, _ := json.Marshal(subjects.Request{
		WaitTimeoutSeconds: c.wait.Seconds(),
		LockTimeoutSeconds: c.lockTimeout.Seconds(),
		Key:                key,
	})
	msg := nats.NewMsg(subjects.Subject(c.prefix, subjects.OpLock, c.lock))
	msg.Header.Set(subjects.HeaderOwner, owner)
	msg.Data = body
	// Allow the service time to answer a wait that times out.
	reqCtx, cancel := context.WithTimeout(ctx, c.wait+5*time.Second)
	reply, err := nc.RequestMsgWithContext(reqCtx, msg)
	cancel()
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return errors.New("no lock service answers yet")
		}
		// The grant may be on its way: withdraw it (or the wait) by key.
		unlock(nc, c, owner, key, out)
		return fmt.Errorf("lock %s: %w", c.lock, err)
	}
	fmt.Fprintf(out, "%s lock %s: %s\n", stamp(), c.lock, reply.Data)
	var r subjects.LockResponse
	if err := json.Unmarshal(reply.Data, &r); err != nil {
		return fmt.Errorf("lock %s: unreadable reply: %w", c.lock, err)
	}
	if !r.Locked {
		return fmt.Errorf("lock %s: not granted", c.lock)
	}

	select {
	case <-ctx.Done():
	case <-time.After(c.hold):
	}
	if !unlock(nc, c, owner, key, out) {
		return fmt.Errorf("unlock %s failed", c.lock)
	}
	return nil
}

// unlock releases the grant, or cancels the wait, of key, prints the reply
// and reports whether it succeeded.
func unlock(nc *nats.Conn, c config, owner, key string, out io.Writer) bool {
	body, _ := json.Marshal(subjects.Request{Key: key})
	msg := nats.NewMsg(subjects.Subject(c.prefix, subjects.OpUnlock, c.lock))
	msg.Header.Set(subjects.HeaderOwner, owner)
	msg.Data = body
	reply, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		fmt.Fprintf(out, "%s unlock %s: %v\n", stamp(), c.lock, err)
		return false
	}
	fmt.Fprintf(out, "%s unlock %s: %s\n", stamp(), c.lock, reply.Data)
	var r subjects.UnlockResponse
	return json.Unmarshal(reply.Data, &r) == nil && r.Unlocked
}

// ownerOf is the Ldlm-Owner value of the connection.
func ownerOf(nc *nats.Conn) (string, error) {
	cid, err := nc.GetClientID()
	if err != nil {
		return "", fmt.Errorf("client id: %w", err)
	}
	return subjects.FormatOwner(nc.ConnectedServerId(), cid), nil
}

// newKey is a key of 128 random bits.
func newKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

func stamp() string { return time.Now().UTC().Format(time.RFC3339) }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
