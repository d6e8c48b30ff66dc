package subjects

import "strconv"

// scanRequest reads the request bodies clients send on every lock cycle
// ({}, {"key":"…"}, {"key":"…","size":8}, …) without encoding/json, which
// costs a decoder, its buffer and reflection per request. It accepts only
// a plain subset of JSON: one object of the known fields, each at most
// once, spelt exactly, with
//   - a key of printable ASCII without escapes,
//   - a size of up to 9 digits, optionally negative,
//   - timeouts without an exponent, of up to 24 characters.
//
// For anything else (escapes, other spellings, duplicates, null, other
// types, trailing data, syntax errors) ok is false and the caller decodes
// with encoding/json, so every error, and every unusual body, is handled by
// that one path. FuzzScanRequest checks that both agree wherever ok is true.
func scanRequest(trimmed []byte) (r Request, g given, ok bool) {
	s := scanner{b: trimmed}
	ok = s.whole(func(name []byte) bool {
		var ok bool
		switch string(name) {
		case "key":
			var v []byte
			// Copied: the key outlives the message buffer (the engine
			// keeps it).
			v, ok = s.plainString()
			r.Key, g = string(v), g|givenKey
		case "size":
			r.Size, ok = s.smallInt()
			g |= givenSize
		case "wait_timeout_seconds":
			r.WaitTimeoutSeconds, ok = s.plainFloat()
		case "lock_timeout_seconds":
			r.LockTimeoutSeconds, ok = s.plainFloat()
		}
		return ok
	})
	return r, g, ok
}

// scanner walks b from position i. It reads the plain JSON of the bodies
// that requests and replies usually are; whatever it is not sure about, its
// callers leave to encoding/json.
type scanner struct {
	b []byte
	i int
}

// next consumes c if it comes next.
func (s *scanner) next(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
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

// plainString reads a JSON string of printable ASCII without escapes and
// returns its contents, which alias b.
func (s *scanner) plainString() ([]byte, bool) {
	if !s.next('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], true
		case c < ' ' || c > '~' || c == '\\':
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// digits consumes a run of decimal digits and returns how many there were.
func (s *scanner) digits() int {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}

// integer consumes -?(0|[1-9][0-9]*), the integer part of a JSON number,
// and returns its text.
func (s *scanner) integer() ([]byte, bool) {
	start := s.i
	s.next('-')
	n := s.digits()
	if n == 0 || (n > 1 && s.b[s.i-n] == '0') {
		return nil, false
	}
	return s.b[start:s.i], true
}

// smallInt reads a JSON integer of at most 9 digits, which fits an int on
// every platform.
func (s *scanner) smallInt() (int, bool) {
	text, ok := s.integer()
	if !ok || len(text) > 10 || (len(text) == 10 && text[0] != '-') {
		return 0, false
	}
	if s.i < len(s.b) && (s.b[s.i] == '.' || s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		return 0, false // encoding/json refuses a fraction for an int
	}
	n := 0
	neg := text[0] == '-'
	if neg {
		text = text[1:]
	}
	for _, c := range text {
		n = n*10 + int(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// plainFloat reads a JSON number without an exponent, of at most 24
// characters, and converts it as encoding/json does.
func (s *scanner) plainFloat() (float64, bool) {
	start := s.i
	if _, ok := s.integer(); !ok {
		return 0, false
	}
	if s.next('.') && s.digits() == 0 {
		return 0, false
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		return 0, false
	}
	text := s.b[start:s.i]
	if len(text) > 24 {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(text), 64)
	return v, err == nil
}
