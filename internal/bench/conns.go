package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/subjects"
)

// HelperCommand, when set, makes the command of a helper process that runs
// ScaleClient(url, n, …) with its standard input and output; Main sets
// it. Figures with more connections than this process has file
// descriptors for (each connection costs two here: the client's socket and
// the embedded server's) hold them in a helper process.
var HelperCommand func(url string, n int) *exec.Cmd

// fdsSpare is what the process keeps for everything but the connections.
const fdsSpare = 512

// inParallel calls do(i) for every i in [0, n) from 16 goroutines, and
// returns the first error; after one, no new calls start.
func inParallel(n int, do func(i int) error) error {
	var (
		wg      sync.WaitGroup
		next    atomic.Int64
		errOnce sync.Once
		first   error
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := do(i); err != nil {
					errOnce.Do(func() { first = err })
					next.Store(int64(n)) // stop the others
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// openConns opens n client connections, several at a time.
func openConns(url string, n int) ([]*nats.Conn, error) {
	conns := make([]*nats.Conn, n)
	err := inParallel(n, func(i int) error {
		nc, err := nats.Connect(url, nats.NoReconnect(), nats.Timeout(30*time.Second))
		conns[i] = nc
		return err
	})
	if err != nil {
		closeConns(conns)
		return nil, fmt.Errorf("opening %d connections: %w", n, err)
	}
	return conns, nil
}

// closeConns closes every connection at once, from 64 goroutines.
func closeConns(conns []*nats.Conn) {
	var wg sync.WaitGroup
	const closers = 64
	for g := range closers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < len(conns); i += closers {
				if conns[i] != nil {
					conns[i].Close()
				}
			}
		}()
	}
	wg.Wait()
}

// lockEach takes the lock conn.INDEX on each connection, several at a time.
func lockEach(conns []*nats.Conn, timeout time.Duration) error {
	return inParallel(len(conns), func(i int) error {
		c, err := newClient(conns[i], subjects.DefaultPrefix, timeout)
		if err == nil {
			_, err = c.lock(subjects.OpTryLock, "conn."+strconv.Itoa(i), nil)
		}
		return err
	})
}

// lockHolder is n connections each holding one lock.
type lockHolder interface {
	// close closes every connection at once and returns how long the
	// Close calls took.
	close() (time.Duration, error)
	where() string
}

// holdLocks opens n connections to url, each holding one lock: in this
// process when its file descriptors allow, else in a helper process.
func holdLocks(url string, n int, timeout time.Duration) (lockHolder, error) {
	limit, err := fileLimit()
	if err != nil {
		return nil, err
	}
	if uint64(2*n+fdsSpare) <= limit {
		conns, err := openConns(url, n)
		if err != nil {
			return nil, err
		}
		if err := lockEach(conns, timeout); err != nil {
			closeConns(conns)
			return nil, err
		}
		return localHolder(conns), nil
	}
	if HelperCommand == nil {
		return nil, fmt.Errorf("%d connections need %d file descriptors here, the limit is %d, and there is no helper process (run through ldlm bench scale)", n, 2*n+fdsSpare, limit)
	}
	return startHelper(url, n, timeout)
}

type localHolder []*nats.Conn

func (h localHolder) close() (time.Duration, error) {
	start := time.Now()
	closeConns(h)
	return time.Since(start), nil
}

func (h localHolder) where() string { return "in this process" }

// processHolder is a helper process running ScaleClient.
type processHolder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

// startPiped starts cmd with pipes to its standard input and output, the
// way the bench talks to the processes it starts.
func startPiped(cmd *exec.Cmd) (stdin io.WriteCloser, stdout io.ReadCloser, err error) {
	if stdin, err = cmd.StdinPipe(); err != nil {
		return nil, nil, err
	}
	if stdout, err = cmd.StdoutPipe(); err != nil {
		return nil, nil, err
	}
	return stdin, stdout, cmd.Start()
}

func startHelper(url string, n int, timeout time.Duration) (*processHolder, error) {
	cmd := HelperCommand(url, n)
	stdin, stdout, err := startPiped(cmd)
	if err != nil {
		return nil, err
	}
	h := &processHolder{cmd: cmd, stdin: stdin, lines: make(chan string, 4)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	if _, err := h.expect("ready", timeout); err != nil {
		h.kill()
		return nil, err
	}
	return h, nil
}

// expect waits for a line starting with word and returns the rest.
func (h *processHolder) expect(word string, timeout time.Duration) (string, error) {
	select {
	case line, ok := <-h.lines:
		if !ok {
			return "", fmt.Errorf("helper process ended: %v", h.cmd.Wait())
		}
		rest, found := strings.CutPrefix(line, word)
		if !found {
			return "", fmt.Errorf("helper process: %s", line)
		}
		return strings.TrimSpace(rest), nil
	case <-time.After(timeout):
		return "", fmt.Errorf("helper process: no %q after %v", word, timeout)
	}
}

func (h *processHolder) close() (time.Duration, error) {
	if _, err := io.WriteString(h.stdin, "close\n"); err != nil {
		h.kill()
		return 0, err
	}
	rest, err := h.expect("closed", time.Minute)
	if err != nil {
		h.kill()
		return 0, err
	}
	_ = h.stdin.Close()
	if err := h.cmd.Wait(); err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(rest, 10, 64)
	return time.Duration(ns), err
}

func (h *processHolder) kill() {
	_ = h.cmd.Process.Kill()
	_ = h.cmd.Wait()
}

func (h *processHolder) where() string { return "in a helper process" }

// ScaleClient is the helper process: it opens n connections to url, each
// taking one lock, says "ready", and on "close" (or the end of its input,
// or after timeout) closes them all at once and says "closed NANOSECONDS".
func ScaleClient(url string, n int, timeout time.Duration, in io.Reader, out io.Writer) error {
	limit, err := fileLimit()
	if err != nil {
		return err
	}
	if uint64(n+fdsSpare) > limit {
		return fmt.Errorf("%d connections need %d file descriptors, the limit is %d", n, n+fdsSpare, limit)
	}
	conns, err := openConns(url, n)
	if err != nil {
		return err
	}
	if err := lockEach(conns, timeout); err != nil {
		closeConns(conns)
		return err
	}
	fmt.Fprintln(out, "ready")
	line := make(chan error, 1)
	go func() {
		_, err := bufio.NewReader(in).ReadString('\n')
		line <- err
	}()
	select {
	case err := <-line:
		if err != nil && !errors.Is(err, io.EOF) {
			closeConns(conns)
			return err
		}
	case <-time.After(timeout):
	}
	start := time.Now()
	closeConns(conns)
	fmt.Fprintln(out, "closed", time.Since(start).Nanoseconds())
	return nil
}
