package engine

import (
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
)

// BenchmarkTryLockUnlock is the uncontended hot path: take a free lock and
// release it, so the lock is created and forgotten every time.
func BenchmarkTryLockUnlock(b *testing.B) {
	cases := []struct {
		name string
		req  Request
	}{
		{"ServerKey", Request{Name: "bench"}},
		{"ClientKey", Request{Name: "bench", Key: "client-key"}},
		{"ClientKeyOwner", Request{Name: "bench", Key: "client-key", Owner: own("server:42")}},
		{"ServerKeyOwner", Request{Name: "bench", Owner: own("server:42")}},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			e := New()
			b.ReportAllocs()
			for b.Loop() {
				g, ok, err := e.TryLock(bc.req)
				if !ok || err != nil {
					b.Fatal(ok, err)
				}
				if _, err := e.Unlock(g.Name, g.Key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTryLockUnlockParallel is the uncontended path from all CPUs at
// once, each goroutine on its own lock: the cost of sharing one mutex.
func BenchmarkTryLockUnlockParallel(b *testing.B) {
	e := New()
	var ids atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := Request{Name: "lock-" + strconv.FormatInt(ids.Add(1), 10), Key: "k"}
		for pb.Next() {
			g, ok, err := e.TryLock(r)
			if !ok || err != nil {
				b.Error(ok, err)
				return
			}
			if _, err := e.Unlock(g.Name, g.Key); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkContended has several goroutines take turns on one lock with a
// blocking Lock: most grants are handed over by an Unlock to a parked
// waiter through its callback.
func BenchmarkContended(b *testing.B) {
	e := New()
	var ids, parked atomic.Int64
	b.SetParallelism(4) // 4 goroutines per CPU
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := Request{Name: "contended", Key: "k" + strconv.FormatInt(ids.Add(1), 10)}
		granted := make(chan error, 1)
		done := func(_ Grant, err error) { granted <- err }
		for pb.Next() {
			_, ok, err := e.Lock(r, 0, done)
			if err != nil {
				b.Error(err)
				return
			}
			if !ok {
				parked.Add(1)
				if err := <-granted; err != nil {
					b.Error(err)
					return
				}
			}
			if _, err := e.Unlock(r.Name, r.Key); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(parked.Load())/float64(b.N), "parked/op")
}

// BenchmarkMemoryPerLock reports the live heap per held lock at 100k locks
// of size 1 without timeout, with generated keys and no owner. It counts
// everything the engine keeps: table, records, the generated key, and the
// lock name (11 to 12 bytes here, 16 with allocation rounding).
func BenchmarkMemoryPerLock(b *testing.B) {
	const n = 100_000
	var perLock float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		e := New()
		for i := range n {
			if _, ok, err := e.TryLock(Request{Name: "lock-" + strconv.Itoa(i)}); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if e.Stats().Holders != n {
			b.Fatal("locks lost")
		}
		runtime.KeepAlive(e)
		perLock = float64(after.HeapAlloc-before.HeapAlloc) / n
	}
	b.ReportMetric(perLock, "bytes/lock")
}
