package subjects

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

// The wire vectors are shared by every client's test suite (Go, Python,
// TypeScript): one file of cases, so that the clients cannot drift apart
// on what the protocol says. This test runs the cases that the subjects
// package decides: request bodies, name encoding, subject tails, replies
// and owner headers. The client behaviour (notices) is run by clientlib.

const vectorsFile = "testdata/wire-vectors.json"

type vectorPad struct {
	Char  string `json:"char"`
	Count int    `json:"count"`
}

type vectors struct {
	Version    int                              `json:"version"`
	ErrorCodes map[ErrorCode]map[string]*string `json:"error_codes"`
	Requests   []struct {
		Name      string     `json:"name"`
		Op        string     `json:"op"`
		Body      string     `json:"body"`
		Pad       *vectorPad `json:"pad"`
		Pending   string     `json:"pending"`
		CheckedBy string     `json:"checked_by"`
		Expect    struct {
			Error   ErrorCode `json:"error"`
			Request *Request  `json:"request"`
		} `json:"expect"`
	} `json:"requests"`
	Names []struct {
		Name     string `json:"name"`
		LockName string `json:"lock_name"`
		Expect   struct {
			Token        string    `json:"token"`
			Subject      string    `json:"subject"`
			ServiceError ErrorCode `json:"service_error"`
		} `json:"expect"`
	} `json:"names"`
	SubjectTails []struct {
		Name   string `json:"name"`
		Tail   string `json:"tail"`
		Expect struct {
			LockName string    `json:"lock_name"`
			Error    ErrorCode `json:"error"`
		} `json:"expect"`
	} `json:"subject_tails"`
	Replies []struct {
		Name   string `json:"name"`
		Op     string `json:"op"`
		Body   string `json:"body"`
		Expect struct {
			Fields json.RawMessage `json:"fields"`
			Error  ErrorCode       `json:"error"`
		} `json:"expect"`
	} `json:"replies"`
	Owners []struct {
		Name     string `json:"name"`
		ServerID string `json:"server_id"`
		ClientID uint64 `json:"client_id"`
		Prefix   string `json:"prefix"`
		Expect   struct {
			Header      string `json:"header"`
			LostSubject string `json:"lost_subject"`
		} `json:"expect"`
	} `json:"owners"`
	OwnerHeaders []struct {
		Name    string `json:"name"`
		Header  string `json:"header"`
		Pending string `json:"pending"`
		Expect  struct {
			Server   string    `json:"server"`
			ClientID uint64    `json:"client_id"`
			Error    ErrorCode `json:"error"`
		} `json:"expect"`
	} `json:"owner_headers"`
	SessionHeaders []struct {
		Name   string `json:"name"`
		Header string `json:"header"`
		Expect struct {
			Session string    `json:"session"`
			Error   ErrorCode `json:"error"`
		} `json:"expect"`
	} `json:"session_headers"`
	AttachReplies []struct {
		Name   string `json:"name"`
		Body   string `json:"body"`
		Expect struct {
			Fields *AttachResponse `json:"fields"`
			Error  ErrorCode       `json:"error"`
		} `json:"expect"`
	} `json:"attach_replies"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	data, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", vectorsFile, err)
	}
	if v.Version != 1 {
		t.Fatalf("%s: version %d, this test reads version 1", vectorsFile, v.Version)
	}
	return v
}

// codeOf returns the code of err, an *Error, or "" for nil.
func codeOf(t *testing.T, err error) ErrorCode {
	t.Helper()
	if err == nil {
		return ""
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not an *Error", err)
	}
	return e.Code
}

func TestVectorsErrorCodes(t *testing.T) {
	v := loadVectors(t)
	for _, code := range []ErrorCode{CodeBadRequest, CodeInvalidLockName, CodeInvalidLockSize, CodeLockSizeMismatch,
		CodeInvalidTimeout, CodeInvalidLockKey, CodeLockKeyInUse, CodeLockDoesNotExist, CodeNotLocked,
		CodeLockWaitTimeout, CodeLockWaitCancelled, CodeOwnerGone, CodeLimitExceeded, CodeInternal, CodeUnavailable} {
		names, ok := v.ErrorCodes[code]
		if !ok {
			t.Errorf("code %s is missing from error_codes", code)
			continue
		}
		if g := names["go"]; g == nil || *g != "Err"+string(code) {
			t.Errorf("code %s: Go name %v, want Err%s", code, g, code)
		}
	}
	if len(v.ErrorCodes) != 15 {
		t.Errorf("error_codes has %d codes, the protocol 15", len(v.ErrorCodes))
	}
}

func TestVectorsRequests(t *testing.T) {
	for _, tc := range loadVectors(t).Requests {
		t.Run(tc.Name, func(t *testing.T) {
			switch {
			case tc.Pending != "":
				t.Skip("pending: " + tc.Pending)
			case tc.CheckedBy == "service":
				t.Skip("decided by the running service")
			}
			body := tc.Body
			if tc.Pad != nil {
				body += strings.Repeat(tc.Pad.Char, tc.Pad.Count)
			}
			req, err := DecodeRequest([]byte(body))
			if err == nil {
				err = req.CheckFor(tc.Op)
			}
			if got := codeOf(t, err); got != tc.Expect.Error {
				t.Fatalf("%s %q: error %v, want code %q", tc.Op, body, err, tc.Expect.Error)
			}
			if tc.Expect.Request != nil && req != *tc.Expect.Request {
				t.Errorf("%s %q: decoded %+v, want %+v", tc.Op, body, req, *tc.Expect.Request)
			}
		})
	}
}

func TestVectorsNames(t *testing.T) {
	for _, tc := range loadVectors(t).Names {
		t.Run(tc.Name, func(t *testing.T) {
			if got := EncodeName(tc.LockName); got != tc.Expect.Token {
				t.Errorf("EncodeName(%.40q) = %.40q, want %.40q", tc.LockName, got, tc.Expect.Token)
			}
			if got := Subject(DefaultPrefix, OpLock, tc.LockName); got != tc.Expect.Subject {
				t.Errorf("Subject(%.40q) = %.40q, want %.40q", tc.LockName, got, tc.Expect.Subject)
			}
			back, err := DecodeName(tc.Expect.Token, 0)
			if got := codeOf(t, err); got != tc.Expect.ServiceError {
				t.Fatalf("DecodeName(%.40q): %v, want code %q", tc.Expect.Token, err, tc.Expect.ServiceError)
			}
			if err == nil && back != tc.LockName {
				t.Errorf("DecodeName(%.40q) = %.40q, want %.40q", tc.Expect.Token, back, tc.LockName)
			}
		})
	}
}

func TestVectorsSubjectTails(t *testing.T) {
	for _, tc := range loadVectors(t).SubjectTails {
		t.Run(tc.Name, func(t *testing.T) {
			name, err := DecodeName(tc.Tail, 0)
			if got := codeOf(t, err); got != tc.Expect.Error {
				t.Fatalf("DecodeName(%.40q): %v, want code %q", tc.Tail, err, tc.Expect.Error)
			}
			if err == nil && name != tc.Expect.LockName {
				t.Errorf("DecodeName(%.40q) = %q, want %q", tc.Tail, name, tc.Expect.LockName)
			}
		})
	}
}

// The expected fields are decoded with encoding/json into the reply type
// and compared with what the client's decoder makes of the body.
func TestVectorsReplies(t *testing.T) {
	for _, tc := range loadVectors(t).Replies {
		t.Run(tc.Name, func(t *testing.T) {
			var gotErr *Error
			var err error
			var same bool
			var got, want any
			switch tc.Op {
			case OpUnlock:
				var g, w UnlockResponse
				err = DecodeUnlockResponse([]byte(tc.Body), &g)
				if tc.Expect.Fields != nil {
					if jerr := json.Unmarshal(tc.Expect.Fields, &w); jerr != nil {
						t.Fatal(jerr)
					}
				}
				gotErr, g.Error = g.Error, nil
				same, got, want = g == w, g, w
			default:
				var g, w LockResponse
				err = DecodeLockResponse([]byte(tc.Body), &g)
				if tc.Expect.Fields != nil {
					if jerr := json.Unmarshal(tc.Expect.Fields, &w); jerr != nil {
						t.Fatal(jerr)
					}
				}
				gotErr, g.Error = g.Error, nil
				// Equal instants, whatever the zone they are written in.
				same = g.ExpiresAt.Equal(w.ExpiresAt)
				g.ExpiresAt = w.ExpiresAt
				same, got, want = same && g == w, g, w
			}
			if tc.Expect.Fields == nil {
				if err == nil {
					t.Fatalf("decoding %q succeeded, want an error", tc.Body)
				}
				return
			}
			if err != nil {
				t.Fatalf("decoding %q: %v", tc.Body, err)
			}
			if !same {
				t.Errorf("decoded %+v, want %+v", got, want)
			}
			var code ErrorCode
			if gotErr != nil {
				code = gotErr.Code
			}
			if code != tc.Expect.Error {
				t.Errorf("error code %q, want %q", code, tc.Expect.Error)
			}
		})
	}
}

func TestVectorsOwners(t *testing.T) {
	v := loadVectors(t)
	for _, tc := range v.Owners {
		t.Run(tc.Name, func(t *testing.T) {
			owner := FormatOwner(tc.ServerID, tc.ClientID)
			if owner != tc.Expect.Header {
				t.Errorf("FormatOwner = %q, want %q", owner, tc.Expect.Header)
			}
			if got := LostSubject(tc.Prefix, owner); got != tc.Expect.LostSubject {
				t.Errorf("LostSubject = %q, want %q", got, tc.Expect.LostSubject)
			}
		})
	}
	for _, tc := range v.OwnerHeaders {
		t.Run(tc.Name, func(t *testing.T) {
			if tc.Pending != "" {
				t.Skip("pending: " + tc.Pending)
			}
			owner, err := ParseOwner(tc.Header)
			if got := codeOf(t, err); got != tc.Expect.Error {
				t.Fatalf("ParseOwner(%.40q): %v, want code %q", tc.Header, err, tc.Expect.Error)
			}
			if err == nil && (owner.ServerID != tc.Expect.Server || owner.ClientID != tc.Expect.ClientID) {
				t.Errorf("ParseOwner(%.40q) = %.40q, %d, want %.40q, %d", tc.Header, owner.ServerID, owner.ClientID, tc.Expect.Server, tc.Expect.ClientID)
			}
		})
	}
}

func TestVectorsSessions(t *testing.T) {
	v := loadVectors(t)
	if len(v.SessionHeaders) == 0 || len(v.AttachReplies) == 0 {
		t.Fatal("no session_headers or attach_replies cases")
	}
	for _, tc := range v.SessionHeaders {
		t.Run(tc.Name, func(t *testing.T) {
			got, err := ParseSession(tc.Header)
			if code := codeOf(t, err); code != tc.Expect.Error {
				t.Fatalf("ParseSession(%q): %v, want code %q", tc.Header, err, tc.Expect.Error)
			}
			if got != tc.Expect.Session {
				t.Errorf("ParseSession(%q) = %q, want %q", tc.Header, got, tc.Expect.Session)
			}
		})
	}
	for _, tc := range v.AttachReplies {
		t.Run(tc.Name, func(t *testing.T) {
			var r AttachResponse
			if err := DecodeAttachResponse([]byte(tc.Body), &r); err != nil {
				t.Fatal(err)
			}
			var code ErrorCode
			if r.Error != nil {
				code = r.Error.Code
			}
			if code != tc.Expect.Error {
				t.Fatalf("error code %q, want %q", code, tc.Expect.Error)
			}
			if tc.Expect.Fields != nil && !reflect.DeepEqual(r, *tc.Expect.Fields) {
				t.Errorf("decoded %+v, want %+v", r, *tc.Expect.Fields)
			}
			// What the service writes for these fields is the body itself.
			if r.Error == nil {
				if out, _ := json.Marshal(r); string(out) != tc.Body {
					t.Errorf("encoded as %s, want %s", out, tc.Body)
				}
			}
		})
	}
}
