package subjects

import (
	"strconv"
	"unicode/utf8"
)

// scanRequest reads the bodies clients send on every lock cycle ({},
// {"key":"…"}, {"key":"…","size":8}, …) without the decoder, buffer and
// reflection that encoding/json costs per request. It takes one object of
// the known fields, spelt exactly: a key without escapes, a size of up to
// 9 digits, timeouts without an exponent of up to 24 characters. For
// anything else ok is false and the caller decodes with encoding/json,
// which alone decides on errors. FuzzScanRequest checks that both agree.
func scanRequest(trimmed []byte) (r Request, sizeGiven, keyGiven, ok bool) {
	s := scanner{b: trimmed}
	ok = s.object(func(name []byte) bool {
		var ok bool
		switch string(name) {
		case "key":
			// A string copy: the engine keeps the key past the message.
			r.Key, ok = s.text()
			keyGiven = true
		case "size":
			r.Size, ok = s.smallInt()
			sizeGiven = true
		case "wait_timeout_seconds":
			r.WaitTimeoutSeconds, ok = s.plainFloat()
		case "lock_timeout_seconds":
			r.LockTimeoutSeconds, ok = s.plainFloat()
		}
		return ok
	}) && s.end()
	return r, sizeGiven, keyGiven, ok
}

// scanner reads the plain JSON that request and reply bodies usually are,
// from b[i:].
type scanner struct {
	b []byte
	i int
}

// object reads a JSON object, after white space, from s.i. For each member
// it reads the name and the colon, then calls value, positioned at the
// value, which reads it and returns false if it cannot (an unknown name
// included). A name may come twice: encoding/json, too, decodes each
// member in turn, so the last wins (but for an object into an *Error
// already there, which errorObject leaves to encoding/json).
//
// A value must be followed by ',' or '}', so the number readers below need
// not look for an exponent, which they do not take: it fails here.
func (s *scanner) object(value func(name []byte) bool) bool {
	s.space()
	if !s.next('{') {
		return false
	}
	s.space()
	if s.next('}') {
		return true
	}
	for {
		name, ok := s.plainText()
		s.space()
		if !ok || !s.next(':') {
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

// next consumes c if it comes next.
func (s *scanner) next(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether nothing but white space is left.
func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

// space skips JSON white space.
func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
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
	switch rest := s.b[s.i:]; {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		s.i += 4
		return true, true
	case len(rest) >= 5 && string(rest[:5]) == "false":
		s.i += 5
		return false, true
	}
	return false, false
}

// digits consumes a run of decimal digits and returns how many there were.
func (s *scanner) digits() int {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}

// number consumes -?(0|[1-9][0-9]*)(.[0-9]+)?, a JSON number without an
// exponent, and returns its text.
func (s *scanner) number() ([]byte, bool) {
	start := s.i
	s.next('-')
	n := s.digits()
	if n == 0 || (n > 1 && s.b[s.i-n] == '0') || (s.next('.') && s.digits() == 0) {
		return nil, false
	}
	return s.b[start:s.i], true
}

// uint64 reads a JSON integer of 1 to 19 digits without a sign, which
// always fits a uint64.
func (s *scanner) uint64() (uint64, bool) {
	text, ok := s.number()
	if !ok || len(text) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range text {
		if c < '0' { // a sign or a fraction
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// smallInt reads a JSON integer of 1 to 9 digits without a sign, which
// fits an int on every platform. A negative size, an error in a request
// and never sent in a reply, is left to encoding/json.
func (s *scanner) smallInt() (int, bool) {
	start := s.i
	n, ok := s.uint64()
	return int(n), ok && s.i-start <= 9
}

// plainFloat reads a JSON number without an exponent, of at most 24
// characters, and converts it as encoding/json does.
func (s *scanner) plainFloat() (float64, bool) {
	text, ok := s.number()
	if !ok || len(text) > 24 {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(text), 64)
	return v, err == nil
}
