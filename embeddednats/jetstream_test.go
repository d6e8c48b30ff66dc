package embeddednats

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// streamOn returns the JetStream context of an in-process application
// connection to srv, closed when the test ends.
func streamOn(t *testing.T, srv *Server) jetstream.JetStream {
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
	return js
}

// eventually retries f every 50 ms until it succeeds or 30 s have passed.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDataDirKeepsStreams: with a data folder the service's account has
// JetStream with file storage, and what it stored is there after a restart.
func TestDataDirKeepsStreams(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()

	srv, err := Start(Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	js := streamOn(t, srv)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "STATE", Subjects: []string{"state.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatalf("creating a stream: %v", err)
	}
	if _, err := js.Publish(ctx, "state.a", []byte("kept")); err != nil {
		t.Fatalf("publishing: %v", err)
	}
	srv.Shutdown()

	srv, err = Start(Config{DataDir: dir})
	if err != nil {
		t.Fatalf("starting again on the same folder: %v", err)
	}
	defer srv.Shutdown()
	s, err := streamOn(t, srv).Stream(ctx, "STATE")
	if err != nil {
		t.Fatalf("the stream after a restart: %v", err)
	}
	m, err := s.GetLastMsgForSubject(ctx, "state.a")
	if err != nil || string(m.Data) != "kept" {
		t.Fatalf("the message after a restart: %v, %v", m, err)
	}
}

// TestNoDataDirNoJetStream: without a data folder the embedded server has no
// JetStream, as before.
func TestNoDataDirNoJetStream(t *testing.T) {
	t.Parallel()
	srv, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	_, err = streamOn(t, srv).AccountInfo(context.Background())
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) && !errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		t.Fatalf("AccountInfo without a data folder = %v, want JetStream not enabled", err)
	}
}

// TestClusterKeepsStreamsWhenAMemberDies: three embedded servers form a
// cluster with JetStream; a stream of three replicas takes writes and
// keeps them after any one member is gone.
func TestClusterKeepsStreamsWhenAMemberDies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var routes []string
	var listens []string
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listens = append(listens, l.Addr().String())
		routes = append(routes, "nats-route://"+l.Addr().String())
		l.Close()
	}
	var members []*Server
	for i, name := range []string{"a", "b", "c"} {
		srv, err := Start(Config{ServerName: name, Listen: "127.0.0.1:0", DataDir: t.TempDir(), Cluster: Cluster{Listen: listens[i], Routes: routes}})
		if err != nil {
			t.Fatalf("starting %s: %v", name, err)
		}
		members = append(members, srv)
	}
	a, b, c := members[0], members[1], members[2]
	defer a.Shutdown()
	defer b.Shutdown()
	stopped := false
	defer func() {
		if !stopped {
			c.Shutdown()
		}
	}()

	js := streamOn(t, a)
	eventually(t, "creating a stream of three replicas", func() error {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "STATE", Subjects: []string{"state.>"}, Replicas: 3})
		return err
	})
	if _, err := js.Publish(ctx, "state.a", []byte("one")); err != nil {
		t.Fatalf("publishing: %v", err)
	}
	c.Shutdown()
	stopped = true
	eventually(t, "publishing with one member gone", func() error {
		_, err := js.Publish(ctx, "state.b", []byte("two"), jetstream.WithExpectLastSequence(1))
		if err != nil && strings.Contains(err.Error(), "wrong last sequence") {
			return nil // an earlier try was stored
		}
		return err
	})
	s, err := streamOn(t, b).Stream(ctx, "STATE")
	if err != nil {
		t.Fatal(err)
	}
	for subject, want := range map[string]string{"state.a": "one", "state.b": "two"} {
		m, err := s.GetLastMsgForSubject(ctx, subject)
		if err != nil || string(m.Data) != want {
			t.Errorf("%s on another member: %v, %v; want %q", subject, m, err, want)
		}
	}
}

// TestDataDirGuardsTheState: with a data folder, the clients ldlm lets in
// can neither touch the state subjects nor the JetStream API, whichever
// way they log in; the service's own connection can.
func TestDataDirGuardsTheState(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		auth  Auth
		login nats.Option
	}{
		{"anonymous", Auth{}, nil},
		{"user", Auth{User: "u", Password: "p"}, nats.UserInfo("u", "p")},
		{"token", Auth{Token: "tok"}, nats.Token("tok")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := Start(Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Auth: tt.auth})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Shutdown()
			if _, err := streamOn(t, srv).AccountInfo(context.Background()); err != nil {
				t.Fatalf("the service's connection cannot use JetStream: %v", err)
			}
			errs := make(chan error, 8)
			opts := []nats.Option{nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err })}
			if tt.login != nil {
				opts = append(opts, tt.login)
			}
			nc, err := nats.Connect(srv.ClientURL(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			for _, subject := range []string{"$LDLM.ldlm.state.lock.x", "$JS.API.INFO"} {
				if err := nc.Publish(subject, nil); err != nil {
					t.Fatal(err)
				}
				select {
				case err := <-errs:
					if !errors.Is(err, nats.ErrPermissionViolation) {
						t.Fatalf("publish on %s: %v, want a permissions violation", subject, err)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("a client published on %s without a permissions violation", subject)
				}
			}
		})
	}
}
