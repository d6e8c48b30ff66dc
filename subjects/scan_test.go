package subjects

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// decodeBothWays decodes body with DecodeRequest (scanner first) and with
// encoding/json alone, and fails unless both give the same request and the
// same error.
func decodeBothWays(t *testing.T, body []byte) {
	t.Helper()
	got, gotErr := DecodeRequest(body)
	want, wantErr := Request{}, error(nil)
	if trimmed := bytes.TrimSpace(body); len(trimmed) > 0 {
		want, wantErr = decodeRequestJSON(trimmed)
	}
	if got != want || !reflect.DeepEqual(gotErr, wantErr) {
		t.Fatalf("body %q: scanner path gave %+v, %v; encoding/json gives %+v, %v", body, got, gotErr, want, wantErr)
	}
}

// The bodies the scanner takes, and the ones it must leave to
// encoding/json, decode exactly as encoding/json alone decodes them.
func TestScanRequest(t *testing.T) {
	tests := []struct {
		body    string
		scanned bool // whether the scanner reads it (rather than encoding/json)
	}{
		{`{}`, true},
		{"{ \t\r\n}", true},
		{`{"key":"0123456789abcdef"}`, true},
		{`{"key":"k-1","size":8}`, true},
		{` { "size" : 8 , "key" : "k" } `, true},
		{`{"size":20,"wait_timeout_seconds":30,"lock_timeout_seconds":0.5,"key":"k1"}`, true},
		{`{"size":0}`, true},
		{`{"size":999999999}`, true},
		{`{"wait_timeout_seconds":-1.5}`, true},
		{`{"lock_timeout_seconds":0.0001}`, true},
		{`{"lock_timeout_seconds":31536001}`, true},
		{`{"key":""}`, true},
		{`{"key":"with space"}`, true},
		{`{"key":"` + strings.Repeat("k", MaxKeyLength+1) + `"}`, true},
		{`{"key":"é"}`, true},
		{`{"key":"a","key":"b"}`, true}, // the last wins, as in encoding/json
		{`{"size":1,"size":0}`, true},
		{"{\"key\":\"\x7f\"}", true},

		{`{"size":1234567890}`, false},
		{`{"size":-0}`, false}, // a negative size is an error, left to encoding/json
		{`{"size":-7}`, false},
		{`{"size":-999999999}`, false},
		{`{"size":1.0}`, false},
		{`{"size":1e2}`, false},
		{`{"size":01}`, false},
		{`{"size":"1"}`, false},
		{`{"size":null}`, false},
		{`{"size":true}`, false},
		{`{"size":[1]}`, false},
		{`{"size":-}`, false},
		{`{"wait_timeout_seconds":1e3}`, false},
		{`{"wait_timeout_seconds":1.}`, false},
		{`{"wait_timeout_seconds":.5}`, false},
		{`{"wait_timeout_seconds":1.0000000000000000000000001}`, false},
		{`{"key":"a\"b"}`, false},
		{`{"key":"a\\b"}`, false},
		{`{"key":"a\u0041"}`, false},
		{"{\"key\":\"a\tb\"}", false},
		{"{\"key\":\"\xff\"}", false},
		{`{"Size":2}`, false},
		{`{"KEY":"k"}`, false},
		{`{"sise":2}`, false},
		{`{"key":"k",}`, false},
		{`{"key":"k"`, false},
		{`{"key":"k}`, false},
		{`{"key" "k"}`, false},
		{`{,}`, false},
		{`{} x`, false},
		{`{}{}`, false},
		{`{"key":"k"} {}`, false},
		{`null`, false},
		{`[]`, false},
		{`12`, false},
		{`"key"`, false},
	}
	for _, tt := range tests {
		trimmed := bytes.TrimSpace([]byte(tt.body))
		if _, _, _, ok := scanRequest(trimmed); ok != tt.scanned {
			t.Errorf("scanRequest(%q): ok = %v, want %v", tt.body, ok, tt.scanned)
		}
		decodeBothWays(t, []byte(tt.body))
	}
}

// On any input the scanner path and encoding/json agree, errors included.
func FuzzScanRequest(f *testing.F) {
	for _, s := range []string{
		"", "{}", " { } ", `{"size":2}`, `{"key":"k","lock_timeout_seconds":1.5}`,
		`{"size":-0,"wait_timeout_seconds":0.001}`, `{"key":"a\"b"}`, `{"key":"k","key":"k"}`,
		`{"Key":"k"}`, `{"size":1e1}`, `{"size":01}`, `{"wait_timeout_seconds":-0.0}`,
		`[`, `null`, `{"size":-1}`, `{} {}`, "\v{}\u00a0",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		decodeBothWays(t, body)
	})
}

// The bodies of a lock cycle decode without allocating, but for the key,
// which the engine keeps.
func TestScanRequestAllocs(t *testing.T) {
	tests := []struct {
		body   string
		allocs float64
	}{
		{`{}`, 0},
		{`{"size":8,"lock_timeout_seconds":30.5}`, 0},
		{`{"key":"0123456789abcdef0123456789abcdef"}`, 1},
	}
	for _, tt := range tests {
		body := []byte(tt.body)
		got := testing.AllocsPerRun(100, func() {
			if _, err := DecodeRequest(body); err != nil {
				t.Fatal(err)
			}
		})
		if got > tt.allocs {
			t.Errorf("DecodeRequest(%s): %v allocations, want at most %v", tt.body, got, tt.allocs)
		}
	}
}
