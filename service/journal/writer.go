package journal

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var errClosed = errors.New("writer closed")

// maxInFlight bounds the unacknowledged records of every Writer, batches
// included, and a TakeOver writes its record that many times more: see
// TakeOver.
const maxInFlight = 1024

// maxBatch is the most records one atomic batch holds: nats-server's
// limit (JetStream's max_batch_size, 1000 by default).
const maxBatch = 1000

// The headers of JetStream's atomic batch publish (nats.go has no API for
// it): every message of a batch names the batch and its place in it; the
// last one commits the batch, and only that one is acknowledged.
const (
	batchIDHeader     = "Nats-Batch-Id"
	batchSeqHeader    = "Nats-Batch-Sequence"
	batchCommitHeader = "Nats-Batch-Commit"
)

// An Entry is one record for WriteBatch; see Write for its fields.
type Entry struct {
	Subject string
	Data    []byte
	TTL     time.Duration
	Done    func(seq uint64, err error)
}

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
	js      jetstream.JetStream // the Journal's publisher
	prefix  string
	seq     uint64 // sequence of the last takeover write
	batches bool   // write several records at once as an atomic batch
	batchID string // unique prefix of this writer's batch ids

	mu      sync.Mutex
	last    uint64 // sequence of this writer's latest write
	closed  bool   // pending is closed
	batchNo uint64 // batches sent

	slots   chan struct{} // one per record in flight: back-pressure
	pending chan write    // sent, not yet reported
	dead    chan struct{} // closed by die
	once    sync.Once
	cause   error         // set by die before dead is closed
	stopped chan struct{} // closed when run returns
}

// A write is one message, or one atomic batch, sent and waiting for its
// acknowledgement.
type write struct {
	ack   jetstream.PubAckFuture        // nil if nothing was sent
	seq   uint64                        // the sequence its last record must get
	dones []func(seq uint64, err error) // one per record, in order
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
// an old writer then expects a sequence the stream has passed. In atomic
// batches (see WriteBatch) this holds the same: a batch moves the stream
// past all its sequences at once, and an old write that lands in
// between makes the next batch of the fence fail.
func (j *Journal) TakeOver(ctx context.Context, expectLast uint64, data []byte) (*Writer, error) {
	subject := j.prefix + "active"
	ack, err := j.pub.Publish(ctx, subject, data, jetstream.WithExpectLastSequence(expectLast))
	switch {
	case refused(err):
		return nil, fmt.Errorf("%w: the stream has moved past sequence %d: %w", ErrNotActive, expectLast, err)
	case err != nil:
		return nil, fmt.Errorf("journal: taking over: %w", err)
	}
	var id [8]byte
	crand.Read(id[:])
	w := &Writer{
		js: j.pub, prefix: j.prefix, last: ack.Sequence,
		batches: j.batches, batchID: hex.EncodeToString(id[:]),
		slots:   make(chan struct{}, maxInFlight),
		pending: make(chan write, maxInFlight),
		dead:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go w.run()
	fenced := make(chan struct{})
	fence := make([]Entry, maxInFlight)
	for i := range fence {
		fence[i] = Entry{Subject: "active", Data: data, Done: func(uint64, error) {}}
	}
	fence[maxInFlight-1].Done = func(seq uint64, err error) {
		if err == nil {
			w.seq = seq
			close(fenced)
		}
	}
	w.WriteBatch(fence)
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
// is sent; it blocks while maxInFlight records wait for their
// acknowledgement.
//
// done is called exactly once per write, in the order of the writes, when
// the stream has acknowledged the write (seq is its stream sequence) or
// it failed. The first failure kills the writer: that write and every
// later one fail with an error that matches ErrNotActive, whether or not
// the stream stored it. done runs on the writer's own goroutine: it must
// not block, and must not call Write or Close.
func (w *Writer) Write(subject string, data []byte, ttl time.Duration, done func(seq uint64, err error)) {
	w.WriteBatch([]Entry{{Subject: subject, Data: data, TTL: ttl, Done: done}})
}

// WriteBatch writes entries in order, as Write would one by one. If the
// Journal writes batches, consecutive entries go to the stream as one
// atomic batch (up to maxBatch of them): one acknowledgement for all, and
// all stored or none; a failed batch fails each of its entries.
func (w *Writer) WriteBatch(entries []Entry) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		for _, e := range entries {
			e.Done(0, w.cause)
		}
		return
	}
	defer w.mu.Unlock()
	for len(entries) > 0 {
		n := 1
		if w.batches {
			n = min(len(entries), maxBatch)
		}
		w.send(entries[:n])
		entries = entries[n:]
	}
}

// send sends entries as one message or one atomic batch and queues it
// for run; w.mu is held.
func (w *Writer) send(entries []Entry) {
	wr := write{dones: make([]func(uint64, error), len(entries))}
	for i, e := range entries {
		w.slots <- struct{}{}
		wr.dones[i] = e.Done
	}
	select {
	case <-w.dead: // send nothing; run reports the failure in its turn
	default:
		ack, err := w.publish(entries)
		if err != nil {
			w.die(fmt.Errorf("sending: %w", err))
			break
		}
		w.last += uint64(len(entries))
		wr.ack, wr.seq = ack, w.last
	}
	w.pending <- wr // never blocks: each write holds a slot
}

// publish sends entries, conditional on the stream's last sequence being
// w.last: one entry as a plain message, several as an atomic batch whose
// first message carries the condition (the server checks it on the first
// only) and whose last commits it; w.mu is held.
func (w *Writer) publish(entries []Entry) (jetstream.PubAckFuture, error) {
	if len(entries) == 1 {
		e := entries[0]
		opts := []jetstream.PublishOpt{
			jetstream.WithExpectLastSequence(w.last),
			jetstream.WithRetryAttempts(0), // a retry would overtake the writes sent after it
		}
		if e.TTL > 0 {
			opts = append(opts, jetstream.WithMsgTTL(e.TTL))
		}
		return w.js.PublishAsync(w.prefix+e.Subject, e.Data, opts...)
	}
	w.batchNo++
	id := w.batchID + "-" + strconv.FormatUint(w.batchNo, 10)
	msg := func(i int) *nats.Msg {
		e := entries[i]
		m := nats.NewMsg(w.prefix + e.Subject)
		m.Data = e.Data
		m.Header.Set(batchIDHeader, id)
		m.Header.Set(batchSeqHeader, strconv.Itoa(i+1))
		if e.TTL > 0 {
			m.Header.Set(jetstream.MsgTTLHeader, e.TTL.String())
		}
		return m
	}
	last := len(entries) - 1
	for i := range last {
		m := msg(i)
		if i == 0 {
			m.Header.Set(jetstream.ExpectedLastSeqHeader, strconv.FormatUint(w.last, 10))
		}
		// No reply subject: the server sends no ack for it.
		if err := w.js.Conn().PublishMsg(m); err != nil {
			return nil, err
		}
	}
	m := msg(last)
	m.Header.Set(batchCommitHeader, "1")
	return w.js.PublishMsgAsync(m, jetstream.WithRetryAttempts(0))
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
		for i, done := range wr.dones {
			if err != nil {
				done(0, err)
			} else {
				done(seq-uint64(len(wr.dones)-1-i), nil) // seq is the last record's
			}
		}
		for range wr.dones {
			<-w.slots // after die: a Write that gets this slot sees the writer dead
		}
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
