package clientlib_test

import (
	"context"
	"encoding/json"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// BenchmarkTryLockUnlock is one TryLock and Unlock cycle through the client,
// one goroutine: the client's own allocations show in -benchmem.
func BenchmarkTryLockUnlock(b *testing.B) {
	srv := ldlmtest.Start(b)
	c, _ := newClient(b, srv)
	ctx := context.Background()
	for b.Loop() {
		l, err := c.TryLock(ctx, "bench")
		if err != nil || !l.Locked() {
			b.Fatal(l, err)
		}
		if err := l.Unlock(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParallelCycles compares, on one connection and 64 goroutines,
// a TryLock+Unlock cycle through the client with the same two requests
// sent with plain nats.go (run with -cpu 2; read ns/op side by side).
func BenchmarkParallelCycles(b *testing.B) {
	srv := ldlmtest.Start(b)
	c, nc := newClient(b, srv)
	header := nats.Header{subjects.HeaderOwner: {ownerOf(b, nc)}}
	var n atomic.Int64
	b.Run("raw", func(b *testing.B) {
		b.SetParallelism(32)
		b.RunParallel(func(pb *testing.PB) {
			name := "raw." + strconv.FormatInt(n.Add(1), 10)
			for pb.Next() {
				body, _ := json.Marshal(subjects.Request{Key: strconv.FormatInt(n.Add(1), 16) + "0123456789abcdef0123456789"})
				m, err := nc.RequestMsg(&nats.Msg{Subject: "ldlm.trylock." + name, Header: header, Data: body}, 5*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				var r subjects.LockResponse
				if err := subjects.DecodeLockResponse(m.Data, &r); err != nil || !r.Locked {
					b.Fatal(err, string(m.Data))
				}
				body, _ = json.Marshal(subjects.Request{Key: r.Key})
				m, err = nc.RequestMsg(&nats.Msg{Subject: "ldlm.unlock." + name, Header: header, Data: body}, 5*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				var u subjects.UnlockResponse
				if err := subjects.DecodeUnlockResponse(m.Data, &u); err != nil || !u.Unlocked {
					b.Fatal(err, string(m.Data))
				}
			}
		})
	})
	b.Run("clientlib", func(b *testing.B) {
		b.SetParallelism(32)
		ctx := context.Background()
		b.RunParallel(func(pb *testing.PB) {
			name := "lib." + strconv.FormatInt(n.Add(1), 10)
			for pb.Next() {
				l, err := c.TryLock(ctx, name)
				if err != nil || !l.Locked() {
					b.Fatal(err)
				}
				if err := l.Unlock(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
