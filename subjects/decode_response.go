package subjects

import (
	"encoding/json"
	"unicode/utf8"
)

// DecodeLockResponse decodes a lock, trylock or renew reply into *r with
// the same result as json.Unmarshal(data, r), error included. Clients
// decode two replies per lock cycle; with encoding/json that was more CPU
// than the service spends on both requests, so the replies the service
// writes (see AppendLockResponse) are read by a small scanner instead.
//
// The scanner takes one object of the known fields, each at most once and
// spelt exactly, with strings without escapes, integers without fraction or
// exponent, and no null. Anything else (a field a newer service adds, other
// spellings, escapes, null, errors of any kind) is decoded by
// json.Unmarshal itself, so the result never depends on the path taken.
// FuzzDecodeResponses checks that both agree on any input.
func DecodeLockResponse(data []byte, r *LockResponse) error {
	return decodeReply(data, r, scanLockResponse)
}

// DecodeUnlockResponse is DecodeLockResponse for the reply to unlock.
func DecodeUnlockResponse(data []byte, r *UnlockResponse) error {
	return decodeReply(data, r, scanUnlockResponse)
}

func decodeReply[R any](data []byte, r *R, scan func([]byte, R) (R, bool)) error {
	if v, ok := scan(data, *r); ok {
		*r = v
		return nil
	}
	return json.Unmarshal(data, r)
}

// scanLockResponse reads data over v as json.Unmarshal would: fields that
// are present replace v's, the others keep v's values. ok is false for
// anything the scanner does not read; v is then to be thrown away.
func scanLockResponse(data []byte, v LockResponse) (LockResponse, bool) {
	s := scanner{b: data}
	ok := s.whole(func(name []byte) bool {
		var ok bool
		switch string(name) {
		case "locked":
			v.Locked, ok = s.boolean()
		case "name":
			v.Name, ok = s.text()
		case "key":
			v.Key, ok = s.text()
		case "token":
			v.Token, ok = s.uint64()
		case "size":
			v.Size, ok = s.smallInt()
		case "expires_at":
			// time.Time decodes itself from the quoted text, as it
			// does under encoding/json.
			start := s.i
			if _, ok = s.plainText(); ok {
				ok = v.ExpiresAt.UnmarshalJSON(s.b[start:s.i]) == nil
			}
		case "instance":
			v.Instance, ok = s.text()
		case "error":
			v.Error, ok = s.errorObject(v.Error)
		}
		return ok
	})
	return v, ok
}

// scanUnlockResponse is scanLockResponse for UnlockResponse.
func scanUnlockResponse(data []byte, v UnlockResponse) (UnlockResponse, bool) {
	s := scanner{b: data}
	ok := s.whole(func(name []byte) bool {
		var ok bool
		switch string(name) {
		case "unlocked":
			v.Unlocked, ok = s.boolean()
		case "name":
			v.Name, ok = s.text()
		case "error":
			v.Error, ok = s.errorObject(v.Error)
		}
		return ok
	})
	return v, ok
}

// whole reads an object (see object) that, but for white space, must be
// all of b.
func (s *scanner) whole(value func(name []byte) bool) bool {
	s.space()
	if !s.object(value) {
		return false
	}
	s.space()
	return s.i == len(s.b)
}

// object reads a JSON object starting at s.i. For each member it reads the name and the colon and calls
// value with the name, positioned at the value; value reads the value and
// returns false if it cannot (an unknown name included). A name seen
// twice also gives false: encoding/json's rules for duplicates are left
// to encoding/json.
func (s *scanner) object(value func(name []byte) bool) bool {
	if !s.next('{') {
		return false
	}
	s.space()
	if s.next('}') {
		return true
	}
	var seen [8][]byte // more members than this goes to encoding/json
	for n := 0; ; n++ {
		name, ok := s.plainString()
		if !ok || n == len(seen) {
			return false
		}
		for _, prev := range seen[:n] {
			if string(prev) == string(name) {
				return false
			}
		}
		seen[n] = name
		s.space()
		if !s.next(':') {
			return false
		}
		s.space()
		if !value(name) {
			return false
		}
		s.space()
		if s.next('}') {
			return true
		}
		if !s.next(',') {
			return false
		}
		s.space()
	}
}

// plainText reads a JSON string without escapes or control characters
// whose contents are valid UTF-8: encoding/json takes such contents as
// they are. The contents alias b.
func (s *scanner) plainText() ([]byte, bool) {
	if !s.next('"') {
		return nil, false
	}
	start := s.i
	ascii := true
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			contents := s.b[start : s.i-1]
			// encoding/json replaces invalid UTF-8; leave that to it.
			return contents, ascii || utf8.Valid(contents)
		case c < ' ' || c == '\\':
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
		s.i++
	}
	return nil, false
}

// text is plainText as a string.
func (s *scanner) text() (string, bool) {
	b, ok := s.plainText()
	return string(b), ok
}

// boolean reads true or false.
func (s *scanner) boolean() (bool, bool) {
	rest := s.b[s.i:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		s.i += 4
		return true, true
	case len(rest) >= 5 && string(rest[:5]) == "false":
		s.i += 5
		return false, true
	}
	return false, false
}

// uint64 reads a JSON integer of 1 to 19 digits without a sign, which
// always fits a uint64. A fraction or exponent after it is refused by
// the caller, which expects a ',' or '}' next.
func (s *scanner) uint64() (uint64, bool) {
	text, ok := s.integer()
	if !ok || text[0] == '-' || len(text) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range text {
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// errorObject reads the "error" member of a reply. encoding/json decodes
// an object into the *Error already there, if any; that case goes to it.
func (s *scanner) errorObject(old *Error) (*Error, bool) {
	if old != nil {
		return nil, false
	}
	var e Error
	ok := s.object(func(name []byte) bool {
		var ok bool
		switch string(name) {
		case "code":
			var code string
			code, ok = s.text()
			e.Code = ErrorCode(code)
		case "message":
			e.Message, ok = s.text()
		}
		return ok
	})
	return &e, ok
}
