package subjects

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestEncodeName(t *testing.T) {
	tests := []struct{ name, want string }{
		{"job", "job"},
		{"orders.123", "orders.123"},
		{"a-b_c~d$e", "a-b_c~d$e"},
		{"My lock", "~TXkgbG9jaw"},
		{"a*b", "~YSpi"},
		{"a>b", "~YT5i"},
		{"~job", "~fmpvYg"},
		{"é", "~w6k"},
		{".job", "~LmpvYg"},
		{"job.", "~am9iLg"},
		{"a..b", "~YS4uYg"},
		{"tab\there", "~dGFiCWhlcmU"},
	}
	for _, tt := range tests {
		if got := EncodeName(tt.name); got != tt.want {
			t.Errorf("EncodeName(%q) = %q, want %q", tt.name, got, tt.want)
		}
		if back, err := DecodeName(EncodeName(tt.name), 0); err != nil || back != tt.name {
			t.Errorf("DecodeName(EncodeName(%q)) = %q, %v", tt.name, back, err)
		}
	}
	if got := Subject("ldlm", OpLock, "My lock"); got != "ldlm.lock.~TXkgbG9jaw" {
		t.Errorf("Subject = %q", got)
	}
}

// Every bad name is an InvalidLockName whose message says what is wrong
// and what to do, and shows the name cut short only when it is long.
func TestDecodeNameErrors(t *testing.T) {
	long := strings.Repeat("a", 1025)
	tests := []struct {
		tail   string
		maxLen int
		want   []string // in the message
	}{
		{"", 0, []string{"empty", "1 to 1024 bytes"}},
		{"~", 0, []string{"empty"}},
		{"~!!", 0, []string{`"~!!"`, "base64url", "EncodeName"}},
		{"~TXkgbG9jaw==", 0, []string{`"~TXkgbG9jaw=="`, "no '='"}}, // padded
		{"~_w", 0, []string{`"\xff"`, "not valid UTF-8", "encode"}}, // decodes to 0xff
		{long, 0, []string{`"` + long[:quoteMax] + `"...`, "1025 bytes", "limit of 1024", "shorter name"}},
		{"abcd", 3, []string{`"abcd"`, "4 bytes", "limit of 3"}},
		{"~" + strings.Repeat("!", 50), 0, []string{`"~` + strings.Repeat("!", quoteMax-1) + `"...`}},
	}
	for _, tt := range tests {
		_, err := DecodeName(tt.tail, tt.maxLen)
		var e *Error
		if !errors.As(err, &e) || e.Code != CodeInvalidLockName {
			t.Errorf("DecodeName(%.20q, %d) = %v, want InvalidLockName", tt.tail, tt.maxLen, err)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(e.Message, w) {
				t.Errorf("DecodeName(%.20q, %d): message %q does not contain %q", tt.tail, tt.maxLen, e.Message, w)
			}
		}
		// "..." only marks a name that was cut.
		if cut := utf8.RuneCountInString(tt.tail) > quoteMax; cut != strings.Contains(e.Message, `"...`) {
			t.Errorf("DecodeName(%.20q, %d): message %q; want \"...\" after the name only when it is cut", tt.tail, tt.maxLen, e.Message)
		}
	}
}

func TestQuoteShort(t *testing.T) {
	for in, want := range map[string]string{
		"":                      `""`,
		"job":                   `"job"`,
		strings.Repeat("é", 40): `"` + strings.Repeat("é", 40) + `"`,
		strings.Repeat("é", 41): `"` + strings.Repeat("é", 40) + `"...`,
		"a\x00b":                `"a\x00b"`,
	} {
		if got := quoteShort(in); got != want {
			t.Errorf("quoteShort(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestNameFromSubject(t *testing.T) {
	name, err := NameFromSubject("ldlm", OpLock, "ldlm.lock.orders.123", 0)
	if err != nil || name != "orders.123" {
		t.Fatalf("got %q, %v", name, err)
	}
	_, err = NameFromSubject("ldlm", OpLock, "ldlm.trylock.x", 0)
	if err == nil || !strings.Contains(err.Error(), "send to ldlm.lock.NAME") {
		t.Fatalf("a subject of another operation: %v, want an error that says to send to ldlm.lock.NAME", err)
	}
}

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		body string
		want Request
		code ErrorCode
	}{
		{body: "", want: Request{}},
		{body: "  \n", want: Request{}},
		{body: "{}", want: Request{}},
		{body: `{"size":20,"wait_timeout_seconds":30,"lock_timeout_seconds":0.5,"key":"k1"}`,
			want: Request{Size: 20, WaitTimeoutSeconds: 30, LockTimeoutSeconds: 0.5, Key: "k1"}},
		{body: `{"size":0}`, code: CodeInvalidLockSize},
		{body: `{"size":-1}`, code: CodeInvalidLockSize},
		{body: `{"size":"1"}`, code: CodeBadRequest},
		{body: `{"size":null}`, want: Request{}},
		{body: `{"wait_timeout_seconds":-1}`, code: CodeInvalidTimeout},
		{body: `{"lock_timeout_seconds":31536001}`, code: CodeInvalidTimeout},
		{body: `{"lock_timeout_seconds":0.0001}`, code: CodeInvalidTimeout},
		{body: `{"key":""}`, code: CodeInvalidLockKey},
		{body: `{"key":"` + strings.Repeat("k", MaxKeyLength+1) + `"}`, code: CodeInvalidLockKey},
		{body: `{"Size":2}`, code: CodeBadRequest}, // names are exact, though encoding/json alone would match "Size"
		{body: `{"sise":2}`, code: CodeBadRequest},
		{body: `{} x`, code: CodeBadRequest},
		{body: `null`, code: CodeBadRequest},
		{body: `[]`, code: CodeBadRequest},
		{body: `12`, code: CodeBadRequest},
	}
	for _, tt := range tests {
		got, err := DecodeRequest([]byte(tt.body))
		if tt.code != "" {
			var e *Error
			if !errors.As(err, &e) || e.Code != tt.code {
				t.Errorf("DecodeRequest(%.40q): error %v, want code %s", tt.body, err, tt.code)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("DecodeRequest(%.40q) = %+v, %v; want %+v", tt.body, got, err, tt.want)
		}
	}
}

func TestCheckFor(t *testing.T) {
	tests := []struct {
		op   string
		req  Request
		code ErrorCode // "" = fits
	}{
		{OpLock, Request{Size: 2, WaitTimeoutSeconds: 1, LockTimeoutSeconds: 1, Key: "k"}, ""},
		{OpTryLock, Request{Size: 2, LockTimeoutSeconds: 1, Key: "k"}, ""},
		{OpTryLock, Request{WaitTimeoutSeconds: 1}, CodeBadRequest},
		{OpUnlock, Request{Key: "k"}, ""},
		{OpUnlock, Request{}, CodeInvalidLockKey},
		{OpUnlock, Request{Key: "k", LockTimeoutSeconds: 1}, CodeBadRequest},
		{OpRenew, Request{Key: "k", LockTimeoutSeconds: 1}, ""},
		{OpRenew, Request{Key: "k"}, CodeInvalidTimeout},
		{OpRenew, Request{LockTimeoutSeconds: 1}, CodeInvalidLockKey},
		{OpRenew, Request{Key: "k", LockTimeoutSeconds: 1, Size: 2}, CodeBadRequest},
		{"steal", Request{}, CodeBadRequest},
	}
	for _, tt := range tests {
		err := tt.req.CheckFor(tt.op)
		var e *Error
		switch {
		case tt.code == "" && err != nil:
			t.Errorf("%s %+v: unexpected %v", tt.op, tt.req, err)
		case tt.code != "" && (!errors.As(err, &e) || e.Code != tt.code):
			t.Errorf("%s %+v: error %v, want code %s", tt.op, tt.req, err, tt.code)
		}
	}
}

func TestDurations(t *testing.T) {
	r := Request{WaitTimeoutSeconds: 1.5, LockTimeoutSeconds: 300}
	if r.WaitTimeout() != 1500*time.Millisecond || r.LockTimeout() != 5*time.Minute {
		t.Fatalf("got %v and %v", r.WaitTimeout(), r.LockTimeout())
	}
}

func TestOwner(t *testing.T) {
	const id = "NDKZ6YSB6RWTNV7MV4AGFVB4TVC5QOXUQ7Z3CBF2ZJMS6GJTK2ZNEMNF"
	v := FormatOwner(id, 42)
	o, err := ParseOwner(v)
	if v != id+":42" || o != (Owner{ServerID: id, ClientID: 42}) || o.String() != v || err != nil {
		t.Fatalf("%q → %+v %v", v, o, err)
	}
	if legacy, err := ParseOwner("nats-1:7"); legacy != (Owner{ServerID: "nats-1", ClientID: 7}) || err != nil {
		t.Fatalf("a server name instead of the id: %+v %v", legacy, err)
	}
	if (Owner{}).String() != "" || !(Owner{}).IsZero() || o.IsZero() {
		t.Fatal("the zero Owner is no owner")
	}
	for _, bad := range []string{"", ":1", "n1", "n1:", "n1:0", "n1:-1", "n1:x", "n 1:1", "n\x01:1", "é:1",
		strings.Repeat("s", MaxOwnerLength-1) + ":1"} {
		if _, err := ParseOwner(bad); err == nil {
			t.Errorf("ParseOwner(%.40q) must fail", bad)
		}
	}
	if _, err := ParseOwner(strings.Repeat("s", MaxOwnerLength-2) + ":1"); err != nil {
		t.Errorf("an owner of %d bytes: %v", MaxOwnerLength, err)
	}
}

// Any valid name survives the trip through a subject, and its subject form
// is a valid run of subject tokens.
func FuzzNameRoundTrip(f *testing.F) {
	for _, s := range []string{"job", "My lock", "a.b", "~x", "é", ".", "..", "a*", ">"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if name == "" || !utf8.ValidString(name) || len(name) > DefaultMaxNameLength {
			return
		}
		tail := EncodeName(name)
		for _, tok := range strings.Split(tail, ".") {
			if tok == "" || strings.ContainsAny(tok, " \t\r\n*>") {
				t.Fatalf("EncodeName(%q) = %q is not a valid subject tail", name, tail)
			}
		}
		back, err := DecodeName(tail, 0)
		if err != nil || back != name {
			t.Fatalf("round trip of %q: %q, %v", name, back, err)
		}
	})
}

// No body makes the decoder panic, and what it accepts is within limits.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{"", "{}", `{"size":2}`, `{"key":"k","lock_timeout_seconds":1.5}`, `[`, `null`, `{"size":-1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeRequest(body)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code == "" || e.Message == "" {
				t.Fatalf("error without code or message: %v", err)
			}
			return
		}
		if r.Size < 0 || r.WaitTimeoutSeconds < 0 || r.WaitTimeoutSeconds > MaxTimeoutSeconds ||
			r.LockTimeoutSeconds < 0 || r.LockTimeoutSeconds > MaxTimeoutSeconds {
			t.Fatalf("accepted out-of-range request %+v", r)
		}
		if r.Key != "" && CheckKey(r.Key) != nil {
			t.Fatalf("accepted bad key %q", r.Key)
		}
	})
}
