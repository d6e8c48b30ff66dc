package subjects

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// checkLockResponse fails unless AppendLockResponse gives what json.Marshal
// gives, error included.
func checkLockResponse(t *testing.T, r LockResponse) {
	t.Helper()
	want, wantErr := json.Marshal(r)
	prefix := []byte("before")
	got, gotErr := AppendLockResponse(prefix, r)
	if (gotErr != nil) != (wantErr != nil) {
		t.Fatalf("%+v: AppendLockResponse error %v, json.Marshal error %v", r, gotErr, wantErr)
	}
	if wantErr == nil && !bytes.Equal(got, append([]byte("before"), want...)) {
		t.Fatalf("%+v:\nAppendLockResponse %s\njson.Marshal        before%s", r, got, want)
	}
}

func checkUnlockResponse(t *testing.T, r UnlockResponse) {
	t.Helper()
	want, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if got := AppendUnlockResponse([]byte("before"), r); !bytes.Equal(got, append([]byte("before"), want...)) {
		t.Fatalf("%+v:\nAppendUnlockResponse %s\njson.Marshal          before%s", r, got, want)
	}
}

// Names and messages with everything json.Marshal escapes.
var awkwardStrings = []string{
	"", "job", "orders.123", `a"b`, `a\b`, "tab\there", "nl\nx", "cr\rx", "\b\f", "\x00\x01\x1f\x7f",
	"<script>&</script>", "é", "日本", "\u2028\u2029", "bad\xffutf8", "\xc3", "~TXkgbG9jaw",
}

func TestAppendResponses(t *testing.T) {
	expires := []time.Time{
		{},
		time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 28, 12, 0, 0, 123456789, time.UTC),
		time.Date(2026, 11, 28, 12, 0, 0, 120000000, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 5*3600+30*60)),
		time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("y", -(23*3600+59*60+59))),
		time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("z", 24*3600)), // json.Marshal fails
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),                    // json.Marshal fails
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),                       // json.Marshal fails
		time.Date(0, 1, 1, 0, 0, 0, 1, time.UTC),
	}
	errs := []*Error{nil, {Code: CodeLockWaitTimeout, Message: "waited 1s"}, {Code: "Odd<&>", Message: "quote \" and \\"}}
	for _, s := range awkwardStrings {
		for _, e := range errs {
			checkLockResponse(t, LockResponse{Name: s, Error: e})
			checkUnlockResponse(t, UnlockResponse{Unlocked: e == nil, Name: s, Error: e})
		}
		for _, exp := range expires {
			checkLockResponse(t, LockResponse{Locked: true, Name: "n", Key: s, Token: 1 << 63, Size: 8, ExpiresAt: exp, Instance: s})
			checkLockResponse(t, LockResponse{Locked: true, Name: "n", Key: s, Token: 1, ExpiresAt: exp, Instance: s, WaitedMS: 90061})
		}
	}
	checkLockResponse(t, LockResponse{Locked: true, Name: "n", Size: -3})
}

// On any input AppendLockResponse and AppendUnlockResponse write what
// json.Marshal writes.
func FuzzAppendResponses(f *testing.F) {
	for _, s := range awkwardStrings {
		f.Add(true, s, s, uint64(7), 2, int64(1764331200), int64(123456789), 0, s, "", "")
	}
	f.Add(false, "n", "", uint64(0), 0, int64(0), int64(0), -3600, "", "Code", "message <b>")
	f.Add(true, "n", "k", uint64(1), 1, int64(-62167219201), int64(999999999), 90000, "i", "", "")
	f.Add(true, "n", "k", uint64(1), 1, int64(253402300800), int64(0), 0, "i", "", "")
	f.Fuzz(func(t *testing.T, ok bool, name, key string, token uint64, size int, sec, nsec int64, offset int, instance, code, message string) {
		var e *Error
		if code != "" || message != "" {
			e = &Error{Code: ErrorCode(code), Message: message}
		}
		var exp time.Time
		if sec != 0 || nsec != 0 {
			exp = time.Unix(sec, nsec).In(time.FixedZone("", offset%(48*3600)))
		}
		checkLockResponse(t, LockResponse{Locked: ok, Name: name, Key: key, Token: token, Size: size, ExpiresAt: exp, Instance: instance, WaitedMS: token >> 1, Error: e})
		checkUnlockResponse(t, UnlockResponse{Unlocked: ok, Name: name, Error: e})
	})
}

// The usual replies are written without allocating.
func TestAppendResponsesAllocs(t *testing.T) {
	buf := make([]byte, 0, 512)
	r := LockResponse{Locked: true, Name: "orders.123", Key: "0123456789abcdef", Token: 1764331200123456,
		Size: 1, ExpiresAt: time.Date(2026, 11, 28, 12, 0, 0, 123456789, time.UTC), Instance: "inst-1"}
	got := testing.AllocsPerRun(100, func() {
		_, _ = AppendLockResponse(buf[:0], r)
		_ = AppendUnlockResponse(buf[:0], UnlockResponse{Unlocked: true, Name: "orders.123"})
	})
	if got != 0 {
		t.Errorf("%v allocations, want 0", got)
	}
}
