package subjects

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// The request bodies of a lock cycle, read by the scanner and by
// encoding/json alone (what DecodeRequest did before the scanner).
func BenchmarkDecodeRequest(b *testing.B) {
	bodies := []struct{ name, body string }{
		{"empty", ``},
		{"unlock", `{"key":"0123456789abcdef0123456789abcdef"}`},
		{"lock", `{"key":"a1b2c3d4-17-42","size":8,"lock_timeout_seconds":30}`},
	}
	for _, bb := range bodies {
		body := []byte(bb.body)
		b.Run(bb.name+"/scan", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeRequest(body); err != nil {
					b.Fatal(err)
				}
			}
		})
		if len(body) == 0 {
			continue
		}
		b.Run(bb.name+"/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decodeRequestJSON(bytes.TrimSpace(body)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The replies of a lock cycle, written by hand and by json.Marshal.
func BenchmarkEncodeResponse(b *testing.B) {
	lock := LockResponse{Locked: true, Name: "bench.u.1a2b3c4d.17", Key: "0123456789abcdef0123456789abcdef",
		Token: 1764331200123456, Size: 1, ExpiresAt: time.Date(2026, 11, 28, 12, 0, 0, 123456789, time.UTC), Instance: "Zx4Qm2Lp9Rt7Vw3Yb6Nc1D"}
	unlock := UnlockResponse{Unlocked: true, Name: "bench.u.1a2b3c4d.17"}
	b.Run("lock/append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := AppendLockResponse(make([]byte, 0, 256), lock); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("lock/json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(lock); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unlock/append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = AppendUnlockResponse(make([]byte, 0, 256), unlock)
		}
	})
	b.Run("unlock/json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(unlock); err != nil {
				b.Fatal(err)
			}
		}
	})
}
