// Package journal keeps one lock service's state in a JetStream stream:
// one message per subject (a lock's whole record, or "active"), read by
// every instance and written by exactly one, the active. JetStream decides
// who that is: every write is conditional on the stream's last sequence,
// so a write of anyone else ends a writer at its next write, and a
// takeover fences off what the old writer still has in flight (see
// TakeOver; docs/ha.md).
//
// The package knows nothing of locks: a record is a subject and bytes.
package journal

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotActive is the error of a write that the stream refused because
// someone else wrote since (the writer is deposed, or the caller's view is
// behind), and of every write of a Writer after its first failure of any
// kind. A caller that gets it must stop acting as the active.
var ErrNotActive = errors.New("journal: not the active writer")

// errCaughtUp ends Load's reading; errStuck, a consumer's.
var (
	errCaughtUp = errors.New("journal: caught up")
	errStuck    = errors.New("journal: the consumer delivers nothing")
)

// Config says which stream holds the state. The zero value is usable.
type Config struct {
	// Stream is the stream's name; default "LDLM_STATE".
	Stream string `json:"stream"`
	// Subjects is the prefix of the stream's subjects; the stream holds
	// Subjects+".>". Default "ldlm.state".
	Subjects string `json:"subjects"`
	// Replicas is the number of copies JetStream keeps; default 1. More
	// than one needs a JetStream cluster of at least that many servers.
	Replicas int `json:"replicas"`
	// Storage is file (the default) or memory.
	Storage jetstream.StorageType `json:"storage"`
	// AckWait is how long a Writer waits for the acknowledgement of a
	// write before it counts the outcome as unknown and dies; default 5 s.
	AckWait time.Duration `json:"ack_wait"`
}

// A Record is one current message of the stream.
type Record struct {
	Subject string // without the prefix: "lock.NAME", "active"
	Data    []byte
	Seq     uint64 // stream sequence
}

// Deleted reports a deletion record (empty data).
func (r Record) Deleted() bool { return len(r.Data) == 0 }

// Journal is the stream of one lock service's state.
type Journal struct {
	js     jetstream.JetStream
	pub    jetstream.JetStream // for writes: acks time out after AckWait
	cfg    Config
	prefix string // Subjects + "."
}

// Open creates the stream, or updates its configuration to cfg's.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Journal, error) {
	cfg.Stream = cmp.Or(cfg.Stream, "LDLM_STATE")
	cfg.Subjects = strings.TrimSuffix(cmp.Or(cfg.Subjects, "ldlm.state"), ".")
	cfg.Replicas = max(cfg.Replicas, 1)
	cfg.AckWait = cmp.Or(cfg.AckWait, 5*time.Second)
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              cfg.Stream,
		Subjects:          []string{cfg.Subjects + ".>"},
		Replicas:          cfg.Replicas,
		Storage:           cfg.Storage,
		MaxMsgsPerSubject: 1, // a record replaces the one before
		Discard:           jetstream.DiscardOld,
		AllowMsgTTL:       true, // deletion records go away by themselves
	})
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, nats.ErrNoResponders): // no JetStream server at all
		return nil, fmt.Errorf("journal: JetStream is not enabled for this account: run nats-server with JetStream (-js, or the embedded server with a data folder) and give the account JetStream limits: %w", err)
	case errors.As(err, &apiErr) && cfg.Replicas > 1 && strings.Contains(apiErr.Description, "replicas"):
		return nil, fmt.Errorf("journal: stream %s with %d replicas needs a JetStream cluster of at least %d servers; lower the replicas: %w", cfg.Stream, cfg.Replicas, cfg.Replicas, err)
	case err != nil:
		return nil, fmt.Errorf("journal: creating or updating stream %s (subjects %s.>): %w", cfg.Stream, cfg.Subjects, err)
	}
	// Writes get a publisher of their own, on the same connection: an ack
	// that never comes is then dropped after AckWait (js may wait
	// forever), and nobody else's writes count against its limit.
	pub, err := jetstream.New(js.Conn(), jetstream.WithPublishAsyncTimeout(cfg.AckWait), jetstream.WithPublishAsyncMaxPending(maxInFlight))
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return &Journal{js: js, pub: pub, cfg: cfg, prefix: cfg.Subjects + "."}, nil
}

// Load calls apply for every current record, in stream order, and
// returns the stream's last sequence as of the call, or the sequence of
// the last record applied if that is later: every record up to it has
// been applied. That is the expectLast of a TakeOver and the from of a
// Follow. An error of apply ends Load with it; so does ctx.
func (j *Journal) Load(ctx context.Context, apply func(Record) error) (uint64, error) {
	s, err := j.js.Stream(ctx, j.cfg.Stream)
	if err != nil {
		return 0, fmt.Errorf("journal: %w", err)
	}
	last := s.CachedInfo().State.LastSeq
	if s.CachedInfo().State.Msgs == 0 {
		return last, nil
	}
	applied, err := j.read(ctx, s, 0, last, apply)
	if err == errCaughtUp {
		return max(last, applied), nil
	}
	return 0, err
}

// Follow calls apply for every record after sequence from, in order, as
// they are written, until ctx ends (it then returns ctx's error) or apply
// returns an error (Follow returns it). A record seen by Follow may be
// gone already when apply runs: records replace each other.
func (j *Journal) Follow(ctx context.Context, from uint64, apply func(Record) error) error {
	s, err := j.js.Stream(ctx, j.cfg.Stream)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	_, err = j.read(ctx, s, from, 0, apply)
	return err
}

// read applies the records after from, in order, until apply fails, ctx
// ends, or, if last > 0, every record up to last has been applied (then
// it returns errCaughtUp). It returns the sequence of the last record
// applied.
func (j *Journal) read(ctx context.Context, s jetstream.Stream, from, last uint64, apply func(Record) error) (uint64, error) {
	for {
		if err := j.readWithOneConsumer(ctx, s, &from, last, apply); err != errStuck {
			return from, err
		}
	}
}

// readWithOneConsumer is read with an ordered consumer. When nothing
// comes for a second, it asks the stream whether records wait (up to
// last, if given): if none do, it is caught up; if some do for three
// seconds, it gives up with errStuck, and read goes on with a new
// consumer (seen on a cluster whose stream leader had died: a consumer
// delivered nothing for 30 s).
func (j *Journal) readWithOneConsumer(ctx context.Context, s jetstream.Stream, from *uint64, last uint64, apply func(Record) error) error {
	c, err := j.js.OrderedConsumer(ctx, j.cfg.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: *from + 1})
	if err != nil {
		return fmt.Errorf("journal: reading stream %s: %w", j.cfg.Stream, err)
	}
	it, err := c.Messages()
	if err != nil {
		return fmt.Errorf("journal: reading stream %s: %w", j.cfg.Stream, err)
	}
	defer it.Stop()
	for idle := 0; idle < 3; {
		wait, cancel := context.WithTimeout(ctx, time.Second)
		m, err := it.Next(jetstream.NextContext(wait))
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
			none, err := noneBetween(ctx, s, *from, cmp.Or(last, math.MaxUint64), j.prefix+">")
			switch {
			case err != nil || (none && last > 0):
				return cmp.Or(err, errCaughtUp)
			case none:
				idle = 0
			default:
				idle++
			}
			continue
		case err != nil:
			return fmt.Errorf("journal: reading stream %s: %w", j.cfg.Stream, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("journal: reading stream %s: %w", j.cfg.Stream, err)
		}
		if err := apply(Record{Subject: strings.TrimPrefix(m.Subject(), j.prefix), Data: m.Data(), Seq: meta.Sequence.Stream}); err != nil {
			return err
		}
		*from, idle = meta.Sequence.Stream, 0
		if last > 0 && (*from >= last || meta.NumPending == 0) {
			return errCaughtUp
		}
	}
	return errStuck
}

// noneBetween reports that stream s holds no message on subjects after
// sequence from and up to sequence to.
func noneBetween(ctx context.Context, s jetstream.Stream, from, to uint64, subjects string) (bool, error) {
	m, err := s.GetMsg(ctx, from+1, jetstream.WithGetMsgSubject(subjects))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true, nil
	}
	return err == nil && m.Sequence > to, err
}

// Last returns the current record of subject ("active", "lock.NAME"),
// whatever its sequence; a zero Record (Seq 0) if the stream has none.
// Load may miss a record that was replaced while it read (the new one
// comes after the sequence Load reads up to): Last finds it.
func (j *Journal) Last(ctx context.Context, subject string) (Record, error) {
	s, err := j.js.Stream(ctx, j.cfg.Stream)
	if err != nil {
		return Record{}, fmt.Errorf("journal: %w", err)
	}
	m, err := s.GetLastMsgForSubject(ctx, j.prefix+subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return Record{}, nil
	case err != nil:
		return Record{}, fmt.Errorf("journal: reading the last %s record of stream %s: %w", subject, j.cfg.Stream, err)
	}
	return Record{Subject: subject, Data: m.Data, Seq: m.Sequence}, nil
}
