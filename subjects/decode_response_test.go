package subjects

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// prefilled is a reply value with every field set, to check that decoding
// over a used value keeps and replaces fields as json.Unmarshal does.
func prefilled() (LockResponse, UnlockResponse) {
	return LockResponse{
			Locked: true, Name: "old", Key: "oldkey", Token: 9, Size: 3,
			ExpiresAt: time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC), Instance: "oldinst",
			Error: &Error{Code: CodeInternal, Message: "old"},
		}, UnlockResponse{
			Unlocked: true, Name: "old", Error: &Error{Code: CodeInternal, Message: "old"},
		}
}

// copyError gives each decoding its own *Error, since encoding/json
// decodes into the one already there.
func copyError(e *Error) *Error {
	if e == nil {
		return nil
	}
	c := *e
	return &c
}

// decodeRepliesBothWays decodes data as both reply types, over a zero
// value and over a prefilled one, with the scanner path and with
// json.Unmarshal alone, and fails unless both give the same value and the
// same error.
func decodeRepliesBothWays(t *testing.T, data []byte) {
	t.Helper()
	fullLock, fullUnlock := prefilled()
	for _, start := range []LockResponse{{}, fullLock} {
		got, want := start, start
		got.Error, want.Error = copyError(start.Error), copyError(start.Error)
		gotErr := DecodeLockResponse(data, &got)
		wantErr := json.Unmarshal(data, &want)
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotErr, wantErr) {
			t.Fatalf("lock reply %q over %+v: DecodeLockResponse gave %+v, %v; json.Unmarshal gives %+v, %v", data, start, got, gotErr, want, wantErr)
		}
	}
	for _, start := range []UnlockResponse{{}, fullUnlock} {
		got, want := start, start
		got.Error, want.Error = copyError(start.Error), copyError(start.Error)
		gotErr := DecodeUnlockResponse(data, &got)
		wantErr := json.Unmarshal(data, &want)
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotErr, wantErr) {
			t.Fatalf("unlock reply %q over %+v: DecodeUnlockResponse gave %+v, %v; json.Unmarshal gives %+v, %v", data, start, got, gotErr, want, wantErr)
		}
	}
}

// What the service writes is read by the scanner, and everything decodes
// exactly as json.Unmarshal decodes it.
func TestDecodeResponses(t *testing.T) {
	berlin := time.FixedZone("CET", 3600)
	written := []LockResponse{
		{Locked: true, Name: "bench.17", Key: "3f2a9c0d1e4b5a6978a1b2c3d4e5f601", Token: 123456, Instance: "Xy12ab"},
		{Locked: true, Name: "job", Key: "k", Token: 1, Size: 8, ExpiresAt: time.Date(2026, 11, 28, 13, 0, 0, 123456789, time.UTC), Instance: "i"},
		{Locked: true, Name: "job", Key: "k", Token: 18446744073709551615, ExpiresAt: time.Date(2026, 11, 28, 13, 0, 0, 0, berlin)},
		{Name: "job"},
		{Name: "naïve 名前", Error: &Error{Code: CodeLockWaitTimeout, Message: "not granted within 1.5s"}},
		{Name: "", Error: &Error{}},
	}
	for _, r := range written {
		b, err := AppendLockResponse(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		if !scanReply(b, new(LockResponse), new(bool)) && r.Token <= 9999999999999999999 {
			t.Errorf("scanReply(%s): the scanner does not read what the service writes", b)
		}
		decodeRepliesBothWays(t, b)
	}
	for _, r := range []UnlockResponse{
		{Unlocked: true, Name: "bench.17"},
		{Name: "job", Error: &Error{Code: CodeInvalidLockKey, Message: "the key does not hold the lock"}},
	} {
		b := AppendUnlockResponse(nil, r)
		if !scanReply(b, new(LockResponse), new(bool)) {
			t.Errorf("scanReply(%s): the scanner does not read what the service writes", b)
		}
		decodeRepliesBothWays(t, b)
	}

	tests := []struct {
		data    string
		scanned bool // whether the scanner reads it as a lock reply
	}{
		{`{}`, true},
		{" \t{ \"locked\" : true ,\r\n\"name\":\"n\" }\n", true},
		{`{"locked":false,"name":"n","error":{"code":"NotLocked","message":"m"}}`, true},
		{`{"error":{},"name":"n"}`, true},
		{`{"error":{"message":"a } b","code":"C"}}`, true},
		{`{"token":0,"size":0}`, true},
		{`{"size":999999999}`, true},
		{`{"token":0,"size":-0}`, false},
		{`{"size":-999999999}`, false},
		{`{"token":9999999999999999999}`, true},
		{`{"name":"é"}`, true},
		{"{\"name\":\"\x7f\"}", true},
		{`{"expires_at":"2026-11-28T13:00:00+01:00"}`, true},
		{`{"name":"a","name":"b"}`, true}, // the last wins, as in encoding/json
		{`{"error":{"code":"C","code":"D"}}`, true},
		{`{"expires_at":"2026-11-28T13:00:00Z","expires_at":"2026-11-29T13:00:00+01:00"}`, true},
		{`{"error":{"code":"C"},"error":{"message":"m"}}`, false}, // encoding/json merges the two

		{`{"token":18446744073709551615}`, false},
		{`{"token":18446744073709551616}`, false},
		{`{"token":-1}`, false},
		{`{"token":1.5}`, false},
		{`{"token":1e3}`, false},
		{`{"token":01}`, false},
		{`{"token":"1"}`, false},
		{`{"size":1234567890}`, false},
		{`{"size":1.0}`, false},
		{`{"locked":null}`, false},
		{`{"locked":"true"}`, false},
		{`{"locked":1}`, false},
		{`{"locked":tru}`, false},
		{`{"locked":truex}`, false},
		{`{"name":null}`, false},
		{`{"name":"a\"b"}`, false},
		{`{"name":"a\u0041"}`, false},
		{"{\"name\":\"a\tb\"}", false},
		{"{\"name\":\"\xff\"}", false},
		{"{\"name\":\"\xed\xa0\x80\"}", false},
		{`{"Locked":true}`, false},
		{`{"NAME":"n"}`, false},
		{`{"future_field":1}`, false},
		{`{"error":null}`, false},
		{`{"error":"x"}`, false},
		{`{"error":{"code":"C","detail":{}}}`, false},
		{`{"error":{"code":"C"}`, false},
		{`{"expires_at":"yesterday"}`, false},
		{`{"expires_at":1}`, false},
		{`{"expires_at":null}`, false},
		{`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9}`, false},
		{`{"name":"n",}`, false},
		{`{"name":"n"`, false},
		{`{"name" "n"}`, false},
		{`{,}`, false},
		{`{} x`, false},
		{`{}{}`, false},
		{``, false},
		{`null`, false},
		{`[]`, false},
		{`"name"`, false},
		{strings.Repeat("{", 100), false},
	}
	for _, tt := range tests {
		if ok := scanReply([]byte(tt.data), new(LockResponse), new(bool)); ok != tt.scanned {
			t.Errorf("scanReply(%q): ok = %v, want %v", tt.data, ok, tt.scanned)
		}
		decodeRepliesBothWays(t, []byte(tt.data))
	}

	// The scanner reads the fields of both replies; those of the one that
	// the other lacks are read and dropped, as json.Unmarshal skips them.
	for _, tt := range []struct {
		data    string
		scanned bool
	}{
		{`{"unlocked":true,"name":"n"}`, true},
		{`{"unlocked":false,"name":"n","key":"k","token":7,"expires_at":"2026-11-28T13:00:00Z"}`, true},
		{`{"locked":true,"unlocked":true}`, true},
		{`{"unlocked":true,"unlocked":false}`, true},
		{`{"Unlocked":true}`, false},
		{`{"unlocked":true,"expires_at":"yesterday"}`, false},
	} {
		if ok := scanReply([]byte(tt.data), new(LockResponse), new(bool)); ok != tt.scanned {
			t.Errorf("scanReply(%q): ok = %v, want %v", tt.data, ok, tt.scanned)
		}
		decodeRepliesBothWays(t, []byte(tt.data))
	}
}

// On any input the scanner path and json.Unmarshal agree, errors included.
func FuzzDecodeResponses(f *testing.F) {
	for _, s := range []string{
		`{"locked":true,"name":"bench.0","key":"0123456789abcdef","token":42,"instance":"i"}`,
		`{"unlocked":true,"name":"n"}`,
		`{"locked":false,"name":"n","error":{"code":"NotLocked","message":"m"}}`,
		`{"size":8,"expires_at":"2026-11-28T13:00:00.5Z"}`,
		`{"token":18446744073709551616}`, `{"Name":"n"}`, `{"name":"a","name":"b"}`,
		`{"error":null}`, `{"error":{}}`, `{"name":"\u00e9"}`, `{} {}`, `null`, "\v{}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		decodeRepliesBothWays(t, data)
	})
}

// The replies of a lock cycle decode with one allocation per string field
// (the strings outlive the message buffer) and nothing else.
func TestDecodeResponsesAllocs(t *testing.T) {
	lockReply := []byte(`{"locked":true,"name":"bench.17","key":"3f2a9c0d1e4b5a6978a1b2c3d4e5f601","token":123456,"instance":"Xy12ab"}`)
	unlockReply := []byte(`{"unlocked":true,"name":"bench.17"}`)
	// The replies are made once: they escape (to json.Unmarshal, on the
	// other path), and a client has one anyway.
	var (
		lock   LockResponse
		unlock UnlockResponse
	)
	tests := []struct {
		name   string
		allocs float64
		decode func() error
	}{
		{"lock", 3, func() error { lock = LockResponse{}; return DecodeLockResponse(lockReply, &lock) }},
		{"unlock", 1, func() error { unlock = UnlockResponse{}; return DecodeUnlockResponse(unlockReply, &unlock) }},
	}
	for _, tt := range tests {
		got := testing.AllocsPerRun(100, func() {
			if err := tt.decode(); err != nil {
				t.Fatal(err)
			}
		})
		if got > tt.allocs {
			t.Errorf("%s reply: %v allocations, want at most %v", tt.name, got, tt.allocs)
		}
	}
}

// The replies of a lock cycle, as the service writes them, read by the
// scanner and by json.Unmarshal alone.
func BenchmarkDecodeResponse(b *testing.B) {
	lock, err := AppendLockResponse(nil, LockResponse{Locked: true, Name: "bench.u.1a2b3c4d.17",
		Key: "0123456789abcdef0123456789abcdef", Token: 1764331200123456, Instance: "Zx4Qm2Lp9Rt7Vw3Yb6Nc1D"})
	if err != nil {
		b.Fatal(err)
	}
	unlock := AppendUnlockResponse(nil, UnlockResponse{Unlocked: true, Name: "bench.u.1a2b3c4d.17"})
	run := func(name string, decode func() error) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := decode(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	run("lock/scan", func() error { var r LockResponse; return DecodeLockResponse(lock, &r) })
	run("lock/json.Unmarshal", func() error { var r LockResponse; return json.Unmarshal(lock, &r) })
	run("unlock/scan", func() error { var r UnlockResponse; return DecodeUnlockResponse(unlock, &r) })
	run("unlock/json.Unmarshal", func() error { var r UnlockResponse; return json.Unmarshal(unlock, &r) })
}
