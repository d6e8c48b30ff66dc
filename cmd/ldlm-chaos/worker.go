package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
)

// workerConfig is what a worker process is told by the orchestrator.
type workerConfig struct {
	ID       int
	URL      string
	User     string
	Password string
	Out      string // record file
	Locks    int    // lock names: chaos-0 … chaos-(Locks-1)
	SizeK    int    // size of every third lock; the others have size 1
	Sessions int    // goroutines taking locks at once
	Seed     uint64
}

func (c *workerConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.ID, "id", 0, "worker id")
	fs.StringVar(&c.URL, "url", "", "NATS URL")
	fs.StringVar(&c.User, "user", "", "NATS user")
	fs.StringVar(&c.Password, "password", "", "NATS password")
	fs.StringVar(&c.Out, "out", "", "file to append records to")
	fs.IntVar(&c.Locks, "locks", 8, "number of lock names")
	fs.IntVar(&c.SizeK, "size-k", 3, "size of the semaphore locks (every third lock)")
	fs.IntVar(&c.Sessions, "sessions", 2, "goroutines taking locks at once")
	fs.Uint64Var(&c.Seed, "seed", 1, "random seed")
}

func (c workerConfig) args() []string {
	return []string{"-id", fmt.Sprint(c.ID), "-url", c.URL, "-user", c.User, "-password", c.Password,
		"-out", c.Out, "-locks", fmt.Sprint(c.Locks), "-size-k", fmt.Sprint(c.SizeK),
		"-sessions", fmt.Sprint(c.Sessions), "-seed", fmt.Sprint(c.Seed)}
}

// lockName returns the name and size of lock i. The size is part of the
// name's rule, so every request for a lock asks for the same size.
func lockName(i, sizeK int) (string, int) {
	if i%3 == 2 {
		return fmt.Sprintf("chaos-%d", i), sizeK
	}
	return fmt.Sprintf("chaos-%d", i), 1
}

// workerConnName is the NATS connection name of worker id, by which the
// orchestrator finds its client id to kick it.
func workerConnName(id int) string { return fmt.Sprintf("ldlm-chaos-worker-%d", id) }

// runWorker is the worker mode: it takes random locks in Sessions
// goroutines until SIGTERM/SIGINT, recording every critical section, then
// unlocks and exits 0.
func runWorker(args []string, stderr io.Writer) int {
	var cfg workerConfig
	fs := flag.NewFlagSet("ldlm-chaos worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.flags(fs)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := work(ctx, cfg); err != nil {
		fmt.Fprintf(stderr, "ldlm-chaos worker %d: %v\n", cfg.ID, err)
		return 1
	}
	return 0
}

func work(ctx context.Context, cfg workerConfig) error {
	f, err := os.OpenFile(cfg.Out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &recordWriter{f: f}

	// Reconnect forever and quickly: a NATS restart is one of the faults.
	// Several URLs (a cluster's members, comma separated): nats.go moves to
	// another when its server goes away.
	opts := []nats.Option{nats.Name(workerConnName(cfg.ID)),
		nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond), nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(-1)} // no buffering while disconnected: requests fail rather than leave late
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	c, err := clientlib.New(nc, clientlib.WithRequestTimeout(3*time.Second), clientlib.WithCleanupTimeout(3*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()

	var seq struct {
		sync.Mutex
		n int
	}
	nextSeq := func() int {
		seq.Lock()
		defer seq.Unlock()
		seq.n++
		return seq.n
	}
	var wg sync.WaitGroup
	errs := make(chan error, cfg.Sessions)
	for s := range cfg.Sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(cfg.Seed, uint64(s)))
			if err := session(ctx, c, w, cfg, rng, nextSeq); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs // nil if no session failed
}

// session takes random locks until ctx ends. It returns an error only when
// it cannot write its records.
func session(ctx context.Context, c *clientlib.Client, w *recordWriter, cfg workerConfig, rng *rand.Rand, nextSeq func() int) error {
	for ctx.Err() == nil {
		name, size := lockName(rng.IntN(cfg.Locks), cfg.SizeK)
		opts := []clientlib.LockOption{clientlib.WithSize(size)}
		if rng.IntN(3) == 0 {
			// Renewed in the background every third of it; far longer
			// than a section, so it expires only when renewals fail.
			opts = append(opts, clientlib.WithLockTimeout(time.Duration(2000+rng.IntN(2000))*time.Millisecond))
		}
		if rng.IntN(3) == 0 {
			opts = append(opts, clientlib.WithWaitTimeout(time.Duration(100+rng.IntN(1500))*time.Millisecond))
		}
		// Bounded: a wait parked at a service instance that then died is
		// never answered.
		callCtx, cancel := context.WithTimeout(ctx, 8*time.Second)
		sent := time.Now()
		l, err := c.Lock(callCtx, name, opts...)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if err := w.write(record{Kind: recError, At: time.Now().UnixNano(), Err: errClass(err)}); err != nil {
				return err
			}
			sleep(ctx, 50*time.Millisecond) // the service or NATS may be down: do not spin
			continue
		}
		if !l.Locked() {
			continue // wait timeout
		}
		seq := nextSeq()
		if err := w.write(record{Kind: recEnter, Seq: seq, Lock: name, Size: l.Size(), Token: l.Token(),
			Sent: sent.UnixNano(), At: time.Now().UnixNano()}); err != nil {
			_ = l.Unlock(context.Background())
			return err
		}

		// The work: mostly short, sometimes long enough for a fault to
		// hit the holder.
		hold := time.Duration(rng.IntN(50)) * time.Millisecond
		if rng.IntN(10) == 0 {
			hold = time.Duration(500+rng.IntN(2500)) * time.Millisecond
		}
		timer := time.NewTimer(hold)
		leave := record{Kind: recLeave, Seq: seq}
		select {
		case <-timer.C:
			leave.Why = leaveUnlock
		case <-l.Done():
			leave.Why, leave.Err = leaveLost, strings.TrimPrefix(errClass(l.Err()), "lost: ")
		case <-ctx.Done():
			leave.Why = leaveStop
		}
		leave.At = time.Now().UnixNano()
		timer.Stop()
		if err := w.write(leave); err != nil {
			_ = l.Unlock(context.Background())
			return err
		}
		if leave.Why != leaveLost {
			unlock := record{Kind: recUnlock, Seq: seq}
			if err := l.Unlock(context.Background()); err != nil {
				unlock.Err = errClass(err)
			}
			unlock.At = time.Now().UnixNano()
			if err := w.write(unlock); err != nil {
				return err
			}
		}
	}
	return nil
}

// errClass names an error by its kind, for counting: the service's code,
// or the client's sentinel, else the message.
func errClass(err error) string {
	var e *clientlib.Error
	var lost *clientlib.LostError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &lost):
		return "lost: " + errClass(lost.Cause)
	case errors.As(err, &e):
		return string(e.Code)
	case errors.Is(err, clientlib.ErrNoService):
		return "no service"
	case errors.Is(err, clientlib.ErrConnectionLost) && strings.Contains(err.Error(), "while the client was reconnecting"):
		return "released while reconnecting" // the attach after a reconnect no longer listed the lock
	case errors.Is(err, clientlib.ErrConnectionLost):
		return "connection lost"
	case errors.Is(err, clientlib.ErrExpired):
		return "expired"
	case errors.Is(err, clientlib.ErrServiceRestarted):
		return "service restarted"
	case errors.Is(err, clientlib.ErrForceReleased):
		return "force-released"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, nats.ErrTimeout):
		return "request timeout"
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
