package journal

// Tests against real embedded nats-servers with JetStream (file storage).
// Every wait is bounded: the tests run on a loaded 2-core machine.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ldlm-io/ldlm/embeddednats"
)

// waitTimeout bounds every wait of the tests: only a hang reaches it. A
// three-server JetStream cluster on a loaded 2-core machine under the race
// detector can take most of a minute to elect its leaders.
const waitTimeout = 60 * time.Second

func start(t testing.TB, cfg embeddednats.Config) *embeddednats.Server {
	t.Helper()
	srv, err := embeddednats.Start(cfg)
	if err != nil {
		t.Fatalf("starting the server: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// openOn opens the journal on an in-process connection to srv.
func openOn(t testing.TB, srv *embeddednats.Server, cfg Config) *Journal {
	t.Helper()
	nc, err := srv.ConnectApp()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	j, err := Open(ctx, js, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return j
}

// tcpUserConfig writes a configuration for the embedded server with a user
// for TCP connections that may use JetStream: with a data folder, the
// clients that ldlm itself lets in may not (embeddednats guards the state).
func tcpUserConfig(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nats.conf")
	conf := `accounts { APP { users: [{user: "journal", password: "journal"}] } }`
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// load returns the current records by subject and Load's last sequence.
func load(t testing.TB, j *Journal) (map[string]Record, uint64) {
	t.Helper()
	got := map[string]Record{}
	var prev uint64
	last, err := j.Load(ctxFor(t), func(r Record) error {
		if r.Seq <= prev {
			return fmt.Errorf("record %d after %d", r.Seq, prev)
		}
		prev = r.Seq
		got[r.Subject] = r
		return nil
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return got, last
}

func takeOver(t testing.TB, j *Journal, expectLast uint64) *Writer {
	t.Helper()
	w, err := j.TakeOver(ctxFor(t), expectLast, []byte("instance"))
	if err != nil {
		t.Fatalf("TakeOver(%d): %v", expectLast, err)
	}
	t.Cleanup(w.Close)
	return w
}

// result is what done reported for one write.
type result struct {
	subject string
	seq     uint64
	err     error
}

// writeAll writes subject=data for each subject, pipelined, and returns
// the results in the order done reported them.
func writeAll(t testing.TB, w *Writer, subjects ...string) []result {
	t.Helper()
	var mu sync.Mutex
	var got []result
	all := make(chan struct{})
	for _, s := range subjects {
		w.Write(s, []byte(s), 0, func(seq uint64, err error) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, result{s, seq, err})
			if len(got) == len(subjects) {
				close(all)
			}
		})
	}
	if len(subjects) == 0 {
		return nil
	}
	select {
	case <-all:
	case <-time.After(waitTimeout):
		t.Fatalf("done was called for %d of %d writes within %s", len(got), len(subjects), waitTimeout)
	}
	return got
}

// checkAcked fails unless every result is a success, in write order, with
// strictly increasing sequences after from.
func checkAcked(t testing.TB, results []result, subjects []string, from uint64) {
	t.Helper()
	for i, r := range results {
		if r.err != nil || r.subject != subjects[i] || r.seq <= from {
			t.Fatalf("write #%d: done(%d, %v) for %q; want a sequence after %d for %q", i, r.seq, r.err, r.subject, from, subjects[i])
		}
		from = r.seq
	}
}

func subjects(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s.%d", prefix, i))
	}
	return out
}

func waitDead(t testing.TB, w *Writer) {
	t.Helper()
	select {
	case <-w.Dead():
	case <-time.After(waitTimeout):
		t.Fatalf("Dead() not closed within %s", waitTimeout)
	}
	if !errors.Is(w.Err(), ErrNotActive) {
		t.Fatalf("Err() = %v, want ErrNotActive", w.Err())
	}
}

// TestLoadAfterWritesAndRestart: Load sees the latest record of each
// subject, deletions included, and the same after a restart of the server
// on the same folder, also when the stream's last message has expired; a
// new writer takes over from what Load returned.
func TestLoadAfterWritesAndRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, err := embeddednats.Start(embeddednats.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	j := openOn(t, srv, Config{})
	if got, last := load(t, j); len(got) != 0 || last != 0 {
		t.Fatalf("new stream: Load = %v, %d", got, last)
	}
	w := takeOver(t, j, 0)
	names := []string{"lock.a", "lock.b", "lock.a", "lock.c", "lock.b"}
	results := writeAll(t, w, names...)
	checkAcked(t, results, names, w.Seq())
	deleted := make(chan error, 1)
	w.Write("lock.c", nil, time.Hour, func(_ uint64, err error) { deleted <- err })
	if err := <-deleted; err != nil {
		t.Fatalf("deletion: %v", err)
	}

	check := func(j *Journal, when string) {
		t.Helper()
		got, last := load(t, j)
		want := map[string]uint64{"active": w.Seq(), "lock.a": results[2].seq, "lock.b": results[4].seq, "lock.c": results[4].seq + 1}
		if last != want["lock.c"] || len(got) != len(want) {
			t.Fatalf("%s: Load = %v, last %d; want subjects %v, last %d", when, got, last, want, want["lock.c"])
		}
		for s, seq := range want {
			if got[s].Seq != seq {
				t.Errorf("%s: %s at %d, want %d", when, s, got[s].Seq, seq)
			}
		}
		if !got["lock.c"].Deleted() || got["lock.a"].Deleted() || string(got["lock.a"].Data) != "lock.a" {
			t.Errorf("%s: records %v", when, got)
		}
	}
	check(j, "before the restart")
	w.Close()
	srv.Shutdown()

	srv = start(t, embeddednats.Config{DataDir: dir})
	check(openOn(t, srv, Config{}), "after a restart")

	// The last message expires; after a restart nothing of it is left,
	// and Load still returns the stream's last sequence.
	j = openOn(t, srv, Config{})
	_, last := load(t, j)
	w = takeOver(t, j, last)
	expired := make(chan error, 1)
	w.Write("lock.gone", nil, time.Second, func(_ uint64, err error) { expired <- err })
	if err := <-expired; err != nil {
		t.Fatalf("deletion with a TTL: %v", err)
	}
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(100 * time.Millisecond) {
		if got, _ := load(t, j); got["lock.gone"].Seq == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the record with a one-second TTL is still there after %s", waitTimeout)
		}
	}
	w.Close()
	srv.Shutdown()
	srv = start(t, embeddednats.Config{DataDir: dir})
	j = openOn(t, srv, Config{})
	if _, last := load(t, j); last != w.Seq()+1 {
		t.Fatalf("after the last record expired and a restart: Load's last = %d, want %d", last, w.Seq()+1)
	}
	w = takeOver(t, j, w.Seq()+1)
	checkAcked(t, writeAll(t, w, "lock.z"), []string{"lock.z"}, w.Seq())
}

// TestFollowSeesWritesInOrder: a follower started at Load's last sequence
// gets every later write, in order, with the sequences done reported.
func TestFollowSeesWritesInOrder(t *testing.T) {
	t.Parallel()
	srv := start(t, embeddednats.Config{DataDir: t.TempDir()})
	j := openOn(t, srv, Config{})
	w := takeOver(t, j, 0)
	checkAcked(t, writeAll(t, w, "lock.before"), []string{"lock.before"}, w.Seq())

	standby := openOn(t, srv, Config{})
	_, from := load(t, standby)
	names := subjects("lock.x", 2000)
	ctx, cancel := context.WithCancel(ctxFor(t))
	defer cancel()
	seen := make(chan Record, len(names))
	followed := make(chan error, 1)
	go func() { followed <- standby.Follow(ctx, from, func(r Record) error { seen <- r; return nil }) }()

	results := writeAll(t, w, names...)
	checkAcked(t, results, names, from)
	for i, r := range results {
		select {
		case rec := <-seen:
			if rec.Seq != r.seq || rec.Subject != r.subject || string(rec.Data) != r.subject {
				t.Fatalf("record #%d: %s at %d (%q); want %s at %d", i, rec.Subject, rec.Seq, rec.Data, r.subject, r.seq)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("Follow delivered %d of %d records within %s", i, len(results), waitTimeout)
		}
	}
	cancel()
	if err := <-followed; !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow after cancel = %v", err)
	}
}

// TestTakeOverDeposesTheWriter: a second TakeOver deposes the first
// writer. Its next writes fail, Dead closes, and none of its writes is
// stored after the takeover, not even those pipelined behind its first
// refused one, which expect exactly the sequences the new writer makes.
// The new writer goes on undisturbed, done reports stay in write order
// with strictly increasing sequences.
func TestTakeOverDeposesTheWriter(t *testing.T) {
	t.Parallel()
	srv := start(t, embeddednats.Config{DataDir: t.TempDir()})
	j := openOn(t, srv, Config{})
	old := takeOver(t, j, 0)
	before := subjects("lock.old", 300)
	results := writeAll(t, old, before...)
	checkAcked(t, results, before, old.Seq())

	standby := openOn(t, srv, Config{})
	_, last := load(t, standby)
	neu := takeOver(t, standby, last)
	if neu.Seq() != last+1+maxInFlight || last != results[len(results)-1].seq {
		t.Fatalf("takeover ends at %d after Load's last %d", neu.Seq(), last)
	}

	// The old writer does not know yet: it sends 50 writes at once, which
	// expect sequences last, last+1, ...: all but the first find the
	// sequence they expect once the new writer has written.
	zombies := subjects("lock.zombie", 50)
	zombieResults := writeAll(t, old, zombies...)
	after := subjects("lock.new", 300)
	newResults := writeAll(t, neu, after...)
	checkAcked(t, newResults, after, neu.Seq())
	for i, r := range zombieResults {
		if r.subject != zombies[i] || !errors.Is(r.err, ErrNotActive) || r.seq != 0 {
			t.Fatalf("deposed writer's write #%d: done(%d, %v) for %s; want ErrNotActive for %s", i, r.seq, r.err, r.subject, zombies[i])
		}
	}
	waitDead(t, old)
	if !strings.Contains(old.Err().Error(), "deposed") {
		t.Errorf("Err() = %v, want it to say deposed", old.Err())
	}

	got, _ := load(t, j)
	for s, r := range got {
		if strings.HasPrefix(s, "lock.zombie") || (strings.HasPrefix(s, "lock.old") && r.Seq > last) {
			t.Errorf("deposed writer's %s stored at %d, after the takeover from %d", s, r.Seq, last)
		}
	}
	if len(got) != 1+len(before)+len(after) {
		t.Errorf("%d records, want %d", len(got), 1+len(before)+len(after))
	}

	// Writes after death fail at once, in order.
	late := writeAll(t, old, "lock.late1", "lock.late2")
	for _, r := range late {
		if !errors.Is(r.err, ErrNotActive) {
			t.Errorf("write after death: %v", r.err)
		}
	}
}

// TestStaleTakeOverIsRefused: a TakeOver whose expected last sequence is
// not the stream's is refused with ErrNotActive (and the stream's own
// "wrong last sequence", code 10071), and the writer in place goes on.
func TestStaleTakeOverIsRefused(t *testing.T) {
	t.Parallel()
	srv := start(t, embeddednats.Config{DataDir: t.TempDir()})
	j := openOn(t, srv, Config{})
	w := takeOver(t, j, 0)
	checkAcked(t, writeAll(t, w, "lock.a", "lock.b"), []string{"lock.a", "lock.b"}, w.Seq())
	_, last := load(t, j)
	for _, expect := range []uint64{0, last - 1, last + 1} {
		_, err := j.TakeOver(ctxFor(t), expect, nil)
		var apiErr *jetstream.APIError
		if !errors.Is(err, ErrNotActive) || !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			t.Errorf("TakeOver(%d) with the stream at %d: %v; want ErrNotActive and error code 10071", expect, last, err)
		}
	}
	checkAcked(t, writeAll(t, w, "lock.c"), []string{"lock.c"}, last)
}

// TestPipelinedWritesInOrder: more writes than may be in flight are all
// stored and reported in order.
func TestPipelinedWritesInOrder(t *testing.T) {
	t.Parallel()
	srv := start(t, embeddednats.Config{DataDir: t.TempDir()})
	j := openOn(t, srv, Config{})
	w := takeOver(t, j, 0)
	names := subjects("lock.p", 5*maxInFlight)
	checkAcked(t, writeAll(t, w, names...), names, w.Seq())
	if got, last := load(t, j); len(got) != len(names)+1 || last != w.Seq()+uint64(len(names)) {
		t.Fatalf("Load: %d records, last %d", len(got), last)
	}
}

// TestDeletionExpires: a deletion record with a TTL disappears from Load,
// does not move the stream's last sequence, and the writer's next write
// is stored.
func TestDeletionExpires(t *testing.T) {
	t.Parallel()
	srv := start(t, embeddednats.Config{DataDir: t.TempDir()})
	j := openOn(t, srv, Config{})
	w := takeOver(t, j, 0)
	checkAcked(t, writeAll(t, w, "lock.a"), []string{"lock.a"}, w.Seq())
	deleted := make(chan uint64, 1)
	w.Write("lock.a", nil, time.Second, func(seq uint64, err error) {
		if err != nil {
			t.Errorf("deletion: %v", err)
		}
		deleted <- seq
	})
	seq := <-deleted
	if got, _ := load(t, j); !got["lock.a"].Deleted() || got["lock.a"].Seq != seq {
		t.Fatalf("before expiry: %v", got)
	}
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(100 * time.Millisecond) {
		got, last := load(t, j)
		if _, ok := got["lock.a"]; !ok {
			if last != seq {
				t.Fatalf("after expiry Load's last = %d, want %d (the expired record's)", last, seq)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still there after %s", waitTimeout)
		}
	}
	checkAcked(t, writeAll(t, w, "lock.b"), []string{"lock.b"}, seq)
}

// TestOpenErrors: what cannot work is refused with what to do.
func TestOpenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		srv  embeddednats.Config
		cfg  Config
		want string
	}{
		{"no JetStream", embeddednats.Config{}, Config{}, "JetStream is not enabled"},
		{"more replicas than servers", embeddednats.Config{DataDir: t.TempDir()}, Config{Replicas: 3}, "needs a JetStream cluster of at least 3 servers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := start(t, tc.srv)
			nc, err := srv.ConnectApp()
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Open(ctxFor(t), js, tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %v; want an error that says %q", err, tc.want)
			}
		})
	}
}

// TestClusterKeepsTheJournal: on three servers with three replicas, the
// journal stays writable when a member restarts after the last record
// expired, and when the stream's leader dies (maybe through a new
// TakeOver after the writer died); Load on the restarted member sees
// every acknowledged write.
func TestClusterKeepsTheJournal(t *testing.T) {
	t.Parallel()
	var listens, routes []string
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listens = append(listens, l.Addr().String())
		routes = append(routes, "nats-route://"+l.Addr().String())
		l.Close()
	}
	members := map[string]*embeddednats.Server{}
	configs := map[string]embeddednats.Config{}
	for i, name := range []string{"a", "b", "c"} {
		configs[name] = embeddednats.Config{ServerName: name, Listen: "127.0.0.1:0", DataDir: t.TempDir(),
			Cluster: embeddednats.Cluster{Listen: listens[i], Routes: routes}}
		members[name] = start(t, configs[name])
	}
	var j *Journal
	eventually(t, "opening an R3 journal", func() (err error) {
		j, err = tryOpen(t, members["a"], Config{Replicas: 3})
		return err
	})
	info, err := j.js.Stream(ctxFor(t), j.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	leader := info.CachedInfo().Cluster.Leader
	// The writer connects to a member that survives; the leader dies.
	var writerOn, readerOn string
	for name := range members {
		if name != leader {
			if writerOn == "" {
				writerOn = name
			} else {
				readerOn = name
			}
		}
	}
	j = openOn(t, members[writerOn], Config{Replicas: 3})
	w := takeOver(t, j, 0)
	acked := map[string]bool{}
	for _, r := range writeAll(t, w, subjects("lock.before", 500)...) {
		if r.err != nil {
			t.Fatalf("before the leader died: %v", r.err)
		}
		acked[r.subject] = true
	}

	// The last record expires and the reader's member restarts: its copy
	// must still take the next writes. (An earlier design, writes
	// conditional on the last message id, broke the copy here: the
	// restarted member no longer knew the expired message's id.)
	expired := make(chan error, 1)
	w.Write("lock.gone", nil, time.Second, func(_ uint64, err error) { expired <- err })
	if err := <-expired; err != nil {
		t.Fatal(err)
	}
	eventually(t, "the record's expiry", func() error {
		got, _, err := tryLoad(j)
		if err == nil && got["lock.gone"].Seq != 0 {
			err = errors.New("still there")
		}
		return err
	})
	members[readerOn].Shutdown()
	members[readerOn] = start(t, configs[readerOn])
	for _, r := range writeAll(t, w, subjects("lock.between", 100)...) {
		if r.err != nil {
			t.Fatalf("after a member restarted: %v", r.err)
		}
		acked[r.subject] = true
	}
	eventually(t, "the restarted member catching up", func() error {
		s, err := j.js.Stream(ctxFor(t), j.cfg.Stream)
		if err != nil {
			return err
		}
		for _, r := range s.CachedInfo().Cluster.Replicas {
			if !r.Current || r.Lag > 0 {
				return fmt.Errorf("%s: current %v, lag %d", r.Name, r.Current, r.Lag)
			}
		}
		return nil
	})

	members[leader].Shutdown()
	died := time.Now()

	for i := 0; ; i++ {
		names := subjects(fmt.Sprint("lock.after", i), 100)
		ok := 0
		for _, r := range writeAll(t, w, names...) {
			if r.err == nil {
				acked[r.subject] = true
				ok++
			}
		}
		if ok == len(names) {
			t.Logf("writes acknowledged again %s after the leader died", time.Since(died).Round(10*time.Millisecond))
			break
		}
		// The writer died: read and take over again, as a standby would.
		waitDead(t, w)
		t.Logf("%d of %d writes acknowledged after the leader died; the writer died of: %v", ok, len(names), w.Err())
		eventually(t, "taking over again", func() error {
			_, last, err := tryLoad(j)
			if err == nil {
				w, err = j.TakeOver(ctxFor(t), last, []byte("again"))
			}
			return err
		})
		t.Cleanup(w.Close)
	}

	reader := openOn(t, members[readerOn], Config{Replicas: 3})
	got, _ := load(t, reader)
	for s := range acked {
		if string(got[s].Data) != s {
			t.Errorf("acknowledged %s: on %s %v", s, readerOn, got[s])
		}
	}
}

func tryOpen(t *testing.T, srv *embeddednats.Server, cfg Config) (*Journal, error) {
	nc, err := srv.ConnectApp()
	if err != nil {
		return nil, err
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Open(ctx, js, cfg)
}

func tryLoad(j *Journal) (map[string]Record, uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := map[string]Record{}
	last, err := j.Load(ctx, func(r Record) error { got[r.Subject] = r; return nil })
	return got, last, err
}

// eventually retries f every 100 ms until it succeeds or waitTimeout has
// passed.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// BenchmarkWrite: pipelined writes per second to an R1 file stream on an
// in-process connection.
func BenchmarkWrite(b *testing.B) {
	srv := start(b, embeddednats.Config{DataDir: b.TempDir()})
	j := openOn(b, srv, Config{})
	w := takeOver(b, j, 0)
	data := make([]byte, 200) // about a lock record with one holder
	all := make(chan struct{})
	n := 0
	b.ResetTimer()
	for i := range b.N {
		w.Write(fmt.Sprintf("lock.%d", i%10000), data, 0, func(_ uint64, err error) {
			if err != nil {
				b.Errorf("write: %v", err)
			}
			if n++; n == b.N {
				close(all)
			}
		})
	}
	<-all
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}

// TestNoneBetween: the check that ends Load when the records it waits for
// were removed.
func TestNoneBetween(t *testing.T) {
	t.Parallel()
	srv := start(t, embeddednats.Config{DataDir: t.TempDir()})
	j := openOn(t, srv, Config{})
	w := takeOver(t, j, 0)
	b := w.Seq() // the active record; then b+1 lock.a (removed by b+3), b+2 lock.b, b+3 lock.a
	checkAcked(t, writeAll(t, w, "lock.a", "lock.b", "lock.a"), []string{"lock.a", "lock.b", "lock.a"}, b)
	s, err := j.js.Stream(ctxFor(t), j.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		from, to uint64
		want     bool
	}{{0, b + 3, false}, {b, b + 1, true}, {b, b + 2, false}, {b + 2, b + 2, true}, {b + 2, b + 3, false}, {b + 3, b + 10, true}}
	for _, tc := range tests {
		if got, err := noneBetween(ctxFor(t), s, tc.from, tc.to, j.prefix+">"); err != nil || got != tc.want {
			t.Errorf("noneBetween(%d, %d) = %v, %v; want %v", tc.from, tc.to, got, err, tc.want)
		}
	}
}

// TestWriterDiesWhenTheServerGoes: writes in flight when the server shuts
// down are reported in order, the acknowledged ones first, then failures
// matching ErrNotActive (their outcome is unknown), and Dead closes.
func TestWriterDiesWhenTheServerGoes(t *testing.T) {
	t.Parallel()
	srv, err := embeddednats.Start(embeddednats.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	j := openOn(t, srv, Config{AckWait: time.Second})
	w := takeOver(t, j, 0)
	names := subjects("lock.x", 3000)
	var results []result
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var mu sync.Mutex
		all := make(chan struct{})
		for _, s := range names {
			w.Write(s, []byte(s), 0, func(seq uint64, err error) {
				mu.Lock()
				defer mu.Unlock()
				results = append(results, result{s, seq, err})
				if len(results) == len(names) {
					close(all)
				}
			})
		}
		<-all
	}()
	time.Sleep(5 * time.Millisecond)
	srv.Shutdown()
	select {
	case <-finished:
	case <-time.After(waitTimeout):
		t.Fatalf("not every write was reported within %s", waitTimeout)
	}
	waitDead(t, w)
	failed := false
	prev := w.Seq()
	for i, r := range results {
		switch {
		case r.subject != names[i]:
			t.Fatalf("report #%d is for %s, want %s", i, r.subject, names[i])
		case r.err == nil && !failed && r.seq == prev+1:
			prev = r.seq
		case errors.Is(r.err, ErrNotActive) && r.seq == 0:
			failed = true
		default:
			t.Fatalf("report #%d: done(%d, %v) after sequence %d (failed before: %v)", i, r.seq, r.err, prev, failed)
		}
	}
	t.Logf("%d writes acknowledged before the shutdown; the writer died of: %v", prev-w.Seq(), w.Err())
}

// TestWriterDiesWithoutAck: when acknowledgements stop coming (here a
// proxy stops passing the server's bytes), the writer dies after AckWait
// with its writes' outcome unknown, although the stream stored them: why
// the service must treat that like being deposed. Another instance takes
// over.
func TestWriterDiesWithoutAck(t *testing.T) {
	t.Parallel()
	srv := start(t, embeddednats.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", ConfigFile: tcpUserConfig(t)})
	p := newProxy(t, srv.ClientURL())
	nc, err := nats.Connect(p.url, nats.NoReconnect(), nats.UserInfo("journal", "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// Long enough for the takeover's fence of 1,025 acknowledged writes on
	// a loaded machine; the writes without acks below then wait it out.
	j, err := Open(ctxFor(t), js, Config{AckWait: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	w := takeOver(t, j, 0)
	checkAcked(t, writeAll(t, w, "lock.a"), []string{"lock.a"}, w.Seq())

	p.freeze()
	names := subjects("lock.unknown", 100)
	for i, r := range writeAll(t, w, names...) {
		if !errors.Is(r.err, ErrNotActive) || r.subject != names[i] {
			t.Fatalf("write #%d without acks: done(%d, %v) for %s", i, r.seq, r.err, r.subject)
		}
	}
	waitDead(t, w)
	if !strings.Contains(w.Err().Error(), "outcome unknown") {
		t.Errorf("Err() = %v, want it to say the outcome is unknown", w.Err())
	}

	standby := openOn(t, srv, Config{})
	got, last := load(t, standby)
	if last != w.Seq()+1+uint64(len(names)) || string(got["lock.unknown.99"].Data) != "lock.unknown.99" {
		t.Errorf("the stream stored up to %d, want the writes without ack too (%d)", last, w.Seq()+1+uint64(len(names)))
	}
	next := takeOver(t, standby, last)
	checkAcked(t, writeAll(t, next, "lock.b"), []string{"lock.b"}, next.Seq())
}

// proxy passes one TCP connection through to a server. It can hold what
// the client sends (and pass it on later), and drop what the server sends.
type proxy struct {
	url    string
	frozen atomic.Bool // drop what the server sends
	mu     sync.Mutex
	held   chan struct{} // closed on release; nil: pass on at once
}

func newProxy(t *testing.T, serverURL string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	p := &proxy{url: "nats://" + l.Addr().String()}
	go func() {
		client, err := l.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", strings.TrimPrefix(serverURL, "nats://"))
		if err != nil {
			client.Close()
			return
		}
		t.Cleanup(func() { client.Close(); server.Close() })
		go p.pass(server, client, func() bool { p.waitRelease(); return true })
		p.pass(client, server, func() bool { return !p.frozen.Load() })
	}()
	return p
}

// pass copies from src to dst what ok lets through.
func (p *proxy) pass(dst, src net.Conn, ok func() bool) {
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if !ok() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (p *proxy) freeze() { p.frozen.Store(true) }

func (p *proxy) hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = make(chan struct{})
}

func (p *proxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.held)
	p.held = nil
}

func (p *proxy) waitRelease() {
	p.mu.Lock()
	held := p.held
	p.mu.Unlock()
	if held != nil {
		<-held
	}
}

// TestDeposedWritesInFlightAreNotStored: writes of the old active that
// reach the stream only after a takeover (held up in the network here)
// are all refused, including those that expect exactly the sequences the
// takeover made, and the new active goes on undisturbed.
func TestDeposedWritesInFlightAreNotStored(t *testing.T) {
	t.Parallel()
	srv := start(t, embeddednats.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", ConfigFile: tcpUserConfig(t)})
	p := newProxy(t, srv.ClientURL())
	nc, err := nats.Connect(p.url, nats.NoReconnect(), nats.UserInfo("journal", "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	j, err := Open(ctxFor(t), js, Config{})
	if err != nil {
		t.Fatal(err)
	}
	old := takeOver(t, j, 0)
	checkAcked(t, writeAll(t, old, "lock.a"), []string{"lock.a"}, old.Seq())

	p.hold()
	zombies := subjects("lock.zombie", maxInFlight)
	var zombieResults []result
	sent := make(chan struct{})
	go func() {
		var mu sync.Mutex
		all := make(chan struct{})
		for _, s := range zombies {
			old.Write(s, []byte(s), 0, func(seq uint64, err error) {
				mu.Lock()
				defer mu.Unlock()
				if zombieResults = append(zombieResults, result{s, seq, err}); len(zombieResults) == len(zombies) {
					close(all)
				}
			})
		}
		<-all
		close(sent)
	}()

	standby := openOn(t, srv, Config{})
	_, last := load(t, standby)
	neu := takeOver(t, standby, last)
	after := subjects("lock.new", 10)
	checkAcked(t, writeAll(t, neu, after...), after, neu.Seq())
	p.release()
	select {
	case <-sent:
	case <-time.After(waitTimeout):
		t.Fatalf("the old writer's writes were not all reported within %s", waitTimeout)
	}
	for i, r := range zombieResults {
		if r.subject != zombies[i] || !errors.Is(r.err, ErrNotActive) {
			t.Fatalf("old writer's write #%d: done(%d, %v) for %s", i, r.seq, r.err, r.subject)
		}
	}
	waitDead(t, old)
	more := subjects("lock.more", 10)
	checkAcked(t, writeAll(t, neu, more...), more, neu.Seq())
	got, _ := load(t, standby)
	for s, r := range got {
		if strings.HasPrefix(s, "lock.zombie") {
			t.Errorf("the old writer's %s was stored at %d, after the takeover from %d", s, r.Seq, last)
		}
	}
}

// BenchmarkTakeOver: how long a takeover takes (its record written
// 1 + maxInFlight times), R1 file.
func BenchmarkTakeOver(b *testing.B) {
	srv := start(b, embeddednats.Config{DataDir: b.TempDir()})
	j := openOn(b, srv, Config{})
	var last uint64
	for b.Loop() {
		w := takeOver(b, j, last)
		last = w.Seq()
		w.Close()
	}
}

// BenchmarkLoad: reading 100,000 lock records, R1 file.
func BenchmarkLoad(b *testing.B) {
	srv := start(b, embeddednats.Config{DataDir: b.TempDir()})
	j := openOn(b, srv, Config{})
	w := takeOver(b, j, 0)
	const n = 100_000
	for _, r := range writeAll(b, w, subjects("lock", n)...) {
		if r.err != nil {
			b.Fatal(r.err)
		}
	}
	for b.Loop() {
		count := 0
		if _, err := j.Load(ctxFor(b), func(Record) error { count++; return nil }); err != nil || count != n+1 {
			b.Fatalf("Load: %d records, %v", count, err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
}

// TestLastFindsTheCurrentRecord: Last returns a subject's current record,
// however often it was replaced, and a zero Record for a subject never
// written.
func TestLastFindsTheCurrentRecord(t *testing.T) {
	t.Parallel()
	srv := start(t, embeddednats.Config{DataDir: t.TempDir()})
	j := openOn(t, srv, Config{})
	if r, err := j.Last(ctxFor(t), "active"); err != nil || r.Seq != 0 {
		t.Fatalf("Last of an empty stream: %+v, %v; want a zero Record", r, err)
	}
	w := takeOver(t, j, 0) // writes "active" 1+maxInFlight times
	results := writeAll(t, w, "lock.a", "lock.a", "lock.b")
	r, err := j.Last(ctxFor(t), "active")
	if err != nil || r.Seq != w.Seq() || r.Subject != "active" {
		t.Fatalf("Last(active) = %+v, %v; want the takeover's last write, sequence %d", r, err, w.Seq())
	}
	r, err = j.Last(ctxFor(t), "lock.a")
	if err != nil || r.Seq != results[1].seq {
		t.Fatalf("Last(lock.a) = %+v, %v; want its second write, sequence %d", r, err, results[1].seq)
	}
	if r, err := j.Last(ctxFor(t), "lock.none"); err != nil || r.Seq != 0 {
		t.Fatalf("Last of a subject never written: %+v, %v; want a zero Record", r, err)
	}
}
