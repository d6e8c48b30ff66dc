package service

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ldlm-io/ldlm/embeddednats"
	"github.com/ldlm-io/ldlm/service/journal"
	"github.com/ldlm-io/ldlm/subjects"
)

func TestStreamNames(t *testing.T) {
	tests := []struct{ prefix, stream, subjects string }{
		{"ldlm", "LDLM_ldlm", "$LDLM.ldlm.state"},
		{"team-a.locks", "LDLM_team-a_2Elocks", "$LDLM.team-a.locks.state"},
		{"a_b", "LDLM_a_5Fb", "$LDLM.a_b.state"}, // not the stream of "a.b"
		{"a.b", "LDLM_a_2Eb", "$LDLM.a.b.state"},
	}
	for _, tt := range tests {
		stream, subj := streamNames(tt.prefix)
		if stream != tt.stream || subj != tt.subjects {
			t.Errorf("streamNames(%q) = %q, %q; want %q, %q", tt.prefix, stream, subj, tt.stream, tt.subjects)
		}
	}
}

// Each active record replaces the one before whole: a new active's record
// does not say stopped because its predecessor's did.
func TestLoadedApply(t *testing.T) {
	st := &loaded{records: map[string][]byte{}}
	steps := []struct {
		r       journal.Record
		stopped bool
		locks   int
	}{
		{journal.Record{Subject: "lock.a", Data: []byte(`{"name":"a"}`), Seq: 1}, false, 1},
		{journal.Record{Subject: "active", Data: []byte(`{"instance":"i","stopped":true}`), Seq: 2}, true, 1},
		{journal.Record{Subject: "active", Data: []byte(`{"instance":"i","client_id":9}`), Seq: 3}, false, 1},
		{journal.Record{Subject: "lock.a", Seq: 4}, false, 0}, // deleted
	}
	for i, step := range steps {
		if err := st.apply(step.r); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if st.active.Stopped != step.stopped || len(st.records) != step.locks || st.lastSeq != step.r.Seq {
			t.Fatalf("step %d: stopped %v, %d locks, last sequence %d", i, st.active.Stopped, len(st.records), st.lastSeq)
		}
	}
}

// The active writes a higher token ceiling before it tells a token past
// the one written, and a new active starts above the last ceiling. Not
// parallel: it narrows tokenMargin for its duration.
func TestTokenCeiling(t *testing.T) {
	defer func(m uint64) { tokenMargin = m }(tokenMargin)
	tokenMargin = 3
	dir := t.TempDir()
	// start returns the server, the service and a client connection.
	start := func() (*embeddednats.Server, *Service, *nats.Conn) {
		ns, err := embeddednats.Start(embeddednats.Config{Listen: "127.0.0.1:0", DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		app, err := ns.ConnectApp()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(app.Close)
		s, err := Start(Config{State: StateJetStream}, app, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		return ns, s, nc
	}
	ceiling := func(ns *embeddednats.Server) uint64 {
		app, err := ns.ConnectApp() // clients may not read the state
		if err != nil {
			t.Fatal(err)
		}
		defer app.Close()
		js, _ := jetstream.New(app)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := js.Stream(ctx, "LDLM_ldlm")
		if err != nil {
			t.Fatal(err)
		}
		m, err := stream.GetLastMsgForSubject(ctx, "$LDLM.ldlm.state.active")
		if err != nil {
			t.Fatal(err)
		}
		var a activeRecord
		if err := json.Unmarshal(m.Data, &a); err != nil {
			t.Fatal(err)
		}
		return a.TokenCeiling
	}
	request := func(nc *nats.Conn, op, body string) subjects.LockResponse {
		m, err := nc.Request(subjects.Subject(subjects.DefaultPrefix, op, "x"), []byte(body), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var r subjects.LockResponse
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}

	ns, s, nc := start()
	var last uint64
	for range 10 {
		r := request(nc, subjects.OpTryLock, "")
		if !r.Locked {
			t.Fatalf("trylock: %+v", r)
		}
		if c := ceiling(ns); c < r.Token {
			t.Fatalf("token %d was told with the stream's ceiling at %d", r.Token, c)
		}
		request(nc, subjects.OpUnlock, `{"key":"`+r.Key+`"}`)
		last = r.Token
	}
	old := ceiling(ns)
	s.Stop()
	nc.Close()
	ns.Shutdown()

	ns, s, nc = start()
	defer ns.Shutdown()
	defer nc.Close()
	defer s.Stop()
	if r := request(nc, subjects.OpTryLock, ""); r.Token <= old || r.Token <= last {
		t.Fatalf("first token after the restart %d; want above the old ceiling %d", r.Token, old)
	}
}
