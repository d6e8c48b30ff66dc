package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// ServerCommand, when set, makes the command of a server process: the
// same program run so that it calls ServeProcess with its standard input
// and output and the given arguments. Main sets it to this program
// (os.Executable()) run as `PROGRAM bench server-process`. Without it,
// NewProcessTarget fails.
var ServerCommand func(args []string) *exec.Cmd

// serverStartTimeout bounds how long a server process may take to report
// that it is ready; it only turns a hang into an error.
const serverStartTimeout = 60 * time.Second

// serverStopTimeout bounds how long a server process may take to exit
// after its standard input closed; past it, it is killed.
const serverStopTimeout = 30 * time.Second

// ProcessOptions are what the server process is asked to do besides
// serving.
type ProcessOptions struct {
	// ServiceOverTCP connects the lock service over TCP instead of
	// in-process (the --embedded-service-tcp experiment).
	ServiceOverTCP bool
	// CPUProfile and MemProfile are files the server process writes its
	// profiles to when it stops; empty: none.
	CPUProfile, MemProfile string
}

func (o ProcessOptions) args() []string {
	var args []string
	if o.ServiceOverTCP {
		args = append(args, "--embedded-service-tcp")
	}
	if o.CPUProfile != "" {
		args = append(args, "--cpuprofile", o.CPUProfile)
	}
	if o.MemProfile != "" {
		args = append(args, "--memprofile", o.MemProfile)
	}
	return args
}

// processReady is the line a server process prints when it serves.
type processReady struct {
	URL     string            `json:"url"`
	Echoes  map[string]string `json:"echoes"` // workload → subject
	CPU     string            `json:"cpu"`    // subject answering its CPU time
	PID     int               `json:"pid"`
	Service string            `json:"service"` // how the service is connected
}

// ServerProcess is the server of a Target that runs in a process of its
// own, as users run `ldlm`: the benchmark's clients then pay for every
// hand-over between processes, as users' clients do.
type ServerProcess struct {
	PID int
	// ServiceOverTCP is set when the lock service in it is connected over
	// TCP rather than in-process.
	ServiceOverTCP bool

	cmd        *exec.Cmd
	stdin      io.WriteCloser
	done       chan struct{} // closed when the process has exited
	waitErr    error         // valid after done
	cpuSubject string
	cpuConn    *nats.Conn
}

// NewProcessTarget starts the server (embedded NATS server, lock service,
// echo responders) in a process of its own with ServerCommand and returns
// it as a target for clients in this process. Close stops the process.
func NewProcessTarget(opts ProcessOptions) (*Target, error) {
	if ServerCommand == nil {
		return nil, errors.New("no command to start a server process (run through ldlm bench)")
	}
	cmd := ServerCommand(opts.args())
	stdin, stdout, err := startPiped(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting the server process: %w", err)
	}
	p := &ServerProcess{PID: cmd.Process.Pid, ServiceOverTCP: opts.ServiceOverTCP, cmd: cmd, stdin: stdin, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // only the first line matters
			}
		}
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	var ready processReady
	select {
	case line := <-lines:
		err = json.Unmarshal([]byte(line), &ready)
		if err == nil && (ready.URL == "" || ready.CPU == "" || len(ready.Echoes) == 0) {
			err = errors.New("incomplete")
		}
		if err != nil {
			err = fmt.Errorf("server process: unexpected first line %q: %v", line, err)
		}
	case <-p.done:
		err = fmt.Errorf("server process exited before it was ready: %v", p.waitErr)
	case <-time.After(serverStartTimeout):
		err = fmt.Errorf("server process: not ready after %v", serverStartTimeout)
	}
	if err != nil {
		p.stop()
		return nil, err
	}
	p.cpuSubject = ready.CPU
	t := newTarget(ready.URL, "ldlm")
	t.Process = p
	for w, subject := range ready.Echoes {
		t.echoes[w] = subject
	}
	if p.cpuConn, err = t.Connect(); err == nil {
		_, err = p.cpu()
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("server process: reading its CPU time: %w", err)
	}
	return t, nil
}

// cpu is the CPU time the server process has used so far.
func (p *ServerProcess) cpu() (time.Duration, error) {
	m, err := p.cpuConn.Request(p.cpuSubject, nil, 10*time.Second)
	if err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(string(m.Data), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("CPU time %q: %w", m.Data, err)
	}
	return time.Duration(ns), nil
}

// stop closes the process's standard input, which makes it stop the
// server and write its profiles, and waits for it to exit; after
// serverStopTimeout it is killed.
func (p *ServerProcess) stop() error {
	if p.cpuConn != nil {
		p.cpuConn.Close()
	}
	_ = p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(serverStopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("server process did not exit within %v of its input closing: killed", serverStopTimeout)
	}
	if p.waitErr != nil {
		return fmt.Errorf("server process: %w", p.waitErr)
	}
	return nil
}

// ServeProcess is the server process's side: it starts the embedded
// server, the lock service and the echo responders as NewEmbeddedTarget
// does, prints one JSON line to out saying where they are, and serves
// until in reaches its end (the parent closed it, or died). It also
// answers, on a subject it names, with the CPU time this process has used,
// so that the parent can report the CPU per cycle of clients and server
// together.
func ServeProcess(in io.Reader, out io.Writer, serviceOverTCP bool) error {
	t, err := NewEmbeddedTarget(serviceOverTCP)
	if err != nil {
		return err
	}
	defer t.Close()
	cpuConn, err := t.Embedded.NATS.ConnectApp(nats.Name("ldlm-bench-cpu"))
	if err != nil {
		return err
	}
	defer cpuConn.Close()
	cpuSubject := "ldlm-bench.cpu." + t.runID
	_, err = cpuConn.Subscribe(cpuSubject, func(m *nats.Msg) {
		_ = m.Respond([]byte(strconv.FormatInt(int64(processCPU()), 10)))
	})
	if err == nil {
		err = cpuConn.Flush()
	}
	if err != nil {
		return fmt.Errorf("CPU responder: %w", err)
	}
	service := "in-process"
	if serviceOverTCP {
		service = "tcp"
	}
	ready, err := json.Marshal(processReady{URL: t.URL, Echoes: t.echoes, CPU: cpuSubject, PID: os.Getpid(), Service: service})
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(out, "%s\n", ready); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, in)
	// Every cycle unlocked what it locked.
	if st := t.Embedded.Service.Engine().Stats(); st.Waiters != 0 || st.Holders != 0 {
		return fmt.Errorf("left behind at the end: %d holders, %d waiters", st.Holders, st.Waiters)
	}
	return nil
}
