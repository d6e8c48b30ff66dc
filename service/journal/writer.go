package journal

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var errClosed = errors.New("writer closed")

// maxInFlight bounds the unacknowledged writes of every Writer, and a
// TakeOver writes its record that many times more: see TakeOver.
const maxInFlight = 1024

// A Writer writes records as the active. Its writes are pipelined: Write
// returns once the write is sent, and done reports its outcome later.
// Each write is conditional on the stream's last sequence: the writer
// counts its own writes, so any other write makes its next one fail.
//
// Who owns what: Write, under mu, numbers each write, sends it and queues
// it on pending, so the stream and the queue see writes in one order; the
// run goroutine alone takes writes off the queue, waits for each
// acknowledgement in turn and calls done, so done calls come one at a
// time, in write order. A write holds one of the slots from before it is
// sent until its done has returned.
type Writer struct {
	js     jetstream.JetStream // the Journal's publisher
	prefix string
	seq    uint64 // sequence of the last takeover write

	mu     sync.Mutex
	last   uint64 // sequence of this writer's latest write
	closed bool   // pending is closed

	slots   chan struct{} // one per write in flight: back-pressure
	pending chan write    // sent, not yet reported
	dead    chan struct{} // closed by die
	once    sync.Once
	cause   error         // set by die before dead is closed
	stopped chan struct{} // closed when run returns
}

type write struct {
	ack  jetstream.PubAckFuture // nil if nothing was sent
	seq  uint64                 // the sequence the write must get
	done func(seq uint64, err error)
}

// TakeOver makes the caller the active writer if the stream's last
// sequence is still expectLast (from Load, or the last record Follow
// applied): it writes data as the record "active". If the stream has
// moved on (another instance took over, or the caller is behind), the
// error matches ErrNotActive; so it does when writes of the deposed
// writer land in the middle of the takeover (see below). Any other error
// leaves the outcome unknown. In each case: read on and try again. If ctx
// ends first, TakeOver fails with its error.
//
// The deposed writer may still have writes in flight, sent before it
// learned: up to maxInFlight of them, expecting the sequences that follow
// expectLast. Pipelined as they are, those after its first refused one
// would find the sequence they expect once the new writer has written,
// and be stored. So TakeOver writes its record maxInFlight times more,
// each conditional on the one before, before it returns: every write of
// an old writer then expects a sequence the stream has passed.
func (j *Journal) TakeOver(ctx context.Context, expectLast uint64, data []byte) (*Writer, error) {
	subject := j.prefix + "active"
	ack, err := j.pub.Publish(ctx, subject, data, jetstream.WithExpectLastSequence(expectLast))
	switch {
	case refused(err):
		return nil, fmt.Errorf("%w: the stream has moved past sequence %d: %w", ErrNotActive, expectLast, err)
	case err != nil:
		return nil, fmt.Errorf("journal: taking over: %w", err)
	}
	w := &Writer{
		js: j.pub, prefix: j.prefix, last: ack.Sequence,
		slots:   make(chan struct{}, maxInFlight),
		pending: make(chan write, maxInFlight),
		dead:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go w.run()
	fenced := make(chan struct{})
	for i := range maxInFlight {
		w.Write("active", data, 0, func(seq uint64, err error) {
			if i == maxInFlight-1 && err == nil {
				w.seq = seq
				close(fenced)
			}
		})
	}
	select {
	case <-fenced:
		return w, nil
	case <-w.Dead():
		w.Close()
		return nil, w.Err()
	case <-ctx.Done():
		w.Close()
		return nil, fmt.Errorf("journal: taking over: %w", ctx.Err())
	}
}

// Seq is the stream sequence of the last takeover write. Every later
// write of this writer, and of any later writer, gets a greater one.
func (w *Writer) Seq() uint64 { return w.seq }

// Dead is closed when the writer has failed (deposed, or a write's
// outcome is unknown) or was closed: stop acting as the active at once.
func (w *Writer) Dead() <-chan struct{} { return w.dead }

// Err says why the writer died; nil while it lives. It matches ErrNotActive.
func (w *Writer) Err() error {
	select {
	case <-w.dead:
		return w.cause
	default:
		return nil
	}
}

// Write writes data as the record subject ("lock.NAME"), replacing the
// subject's previous record; ttl > 0 makes the stream remove it after
// that long (for deletion records: empty data). It returns once the write
// is sent; it blocks while maxInFlight writes wait for their
// acknowledgement.
//
// done is called exactly once per write, in the order of the writes, when
// the stream has acknowledged the write (seq is its stream sequence) or
// it failed. The first failure kills the writer: that write and every
// later one fail with an error that matches ErrNotActive, whether or not
// the stream stored it. done runs on the writer's own goroutine: it must
// not block, and must not call Write or Close.
func (w *Writer) Write(subject string, data []byte, ttl time.Duration, done func(seq uint64, err error)) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		done(0, w.cause)
		return
	}
	defer w.mu.Unlock()
	w.slots <- struct{}{}
	wr := write{done: done}
	select {
	case <-w.dead: // send nothing; run reports the failure in its turn
	default:
		opts := []jetstream.PublishOpt{
			jetstream.WithExpectLastSequence(w.last),
			jetstream.WithRetryAttempts(0), // a retry would overtake the writes sent after it
		}
		if ttl > 0 {
			opts = append(opts, jetstream.WithMsgTTL(ttl))
		}
		ack, err := w.js.PublishAsync(w.prefix+subject, data, opts...)
		if err != nil {
			w.die(fmt.Errorf("sending: %w", err))
			break
		}
		w.last++
		wr.ack, wr.seq = ack, w.last
	}
	w.pending <- wr // never blocks: a slot is taken
}

// Close ends the writer: writes not yet acknowledged fail (the stream may
// still store them), and so does every later one. It returns when every
// done has been called. It must not be called from done.
func (w *Writer) Close() {
	w.die(errClosed)
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.pending)
	}
	w.mu.Unlock()
	<-w.stopped
}

// run reports the writes in order; see Writer.
func (w *Writer) run() {
	defer close(w.stopped)
	for wr := range w.pending {
		seq, err := w.await(wr)
		if err != nil {
			w.die(err)
			seq, err = 0, w.cause
		}
		wr.done(seq, err)
		<-w.slots // after die: a Write that gets this slot sees the writer dead
	}
}

// await waits for the acknowledgement of wr (the publisher gives up after
// AckWait), unless the writer is dead.
func (w *Writer) await(wr write) (uint64, error) {
	if wr.ack == nil {
		return 0, errClosed // dead already: die keeps the first cause
	}
	select {
	case <-w.dead:
		return 0, errClosed
	default:
	}
	select {
	case ack := <-wr.ack.Ok():
		if ack.Duplicate || ack.Sequence != wr.seq {
			return 0, fmt.Errorf("stored at sequence %d (duplicate: %v), want %d", ack.Sequence, ack.Duplicate, wr.seq)
		}
		return ack.Sequence, nil
	case err := <-wr.ack.Err():
		if refused(err) {
			return 0, fmt.Errorf("deposed: another writer wrote since: %w", err)
		}
		return 0, fmt.Errorf("outcome unknown: %w", err)
	case <-w.dead:
		return 0, errClosed
	}
}

// die kills the writer with the first cause it is given.
func (w *Writer) die(cause error) {
	w.once.Do(func() {
		w.cause = fmt.Errorf("%w: %w", ErrNotActive, cause)
		close(w.dead)
	})
}

// refused reports the stream's refusal of a conditional write: somebody
// else wrote since (10164: the same, from a replicated stream).
func refused(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant:
		return true
	}
	return false
}
