package subjects

import (
	"encoding/json"
	"strconv"
)

// AppendLockResponse appends the JSON of r to dst, byte for byte what
// json.Marshal(r) gives, and returns the extended slice. The service
// answers every lock, trylock and renew with one; writing it by hand saves
// the reflection and allocations of encoding/json on every request. A
// value json.Marshal cannot encode (an expiry outside years 0-9999) gives
// json.Marshal's error.
func AppendLockResponse(dst []byte, r LockResponse) ([]byte, error) {
	start := len(dst)
	dst = append(dst, `{"locked":`...)
	dst = strconv.AppendBool(dst, r.Locked)
	dst = append(dst, `,"name":`...)
	dst = appendJSONString(dst, r.Name)
	if r.Key != "" {
		dst = append(dst, `,"key":`...)
		dst = appendJSONString(dst, r.Key)
	}
	if r.Token != 0 {
		dst = append(dst, `,"token":`...)
		dst = strconv.AppendUint(dst, r.Token, 10)
	}
	if r.Size != 0 {
		dst = append(dst, `,"size":`...)
		dst = strconv.AppendInt(dst, int64(r.Size), 10)
	}
	if !r.ExpiresAt.IsZero() {
		// AppendText writes what time.Time.MarshalJSON quotes, and fails
		// where it fails (a year outside 0-9999, a zone offset of a day).
		b, err := r.ExpiresAt.AppendText(append(dst, `,"expires_at":"`...))
		if err != nil {
			_, err = json.Marshal(r)
			return dst[:start], err
		}
		dst = append(b, '"')
	}
	if r.Instance != "" {
		dst = append(dst, `,"instance":`...)
		dst = appendJSONString(dst, r.Instance)
	}
	if r.Error != nil {
		dst = append(dst, `,"error":`...)
		dst = appendJSONError(dst, r.Error)
	}
	return append(dst, '}'), nil
}

// AppendUnlockResponse appends the JSON of r to dst, byte for byte what
// json.Marshal(r) gives.
func AppendUnlockResponse(dst []byte, r UnlockResponse) []byte {
	dst = append(dst, `{"unlocked":`...)
	dst = strconv.AppendBool(dst, r.Unlocked)
	dst = append(dst, `,"name":`...)
	dst = appendJSONString(dst, r.Name)
	if r.Error != nil {
		dst = append(dst, `,"error":`...)
		dst = appendJSONError(dst, r.Error)
	}
	return append(dst, '}')
}

func appendJSONError(dst []byte, e *Error) []byte {
	dst = append(dst, `{"code":`...)
	dst = appendJSONString(dst, string(e.Code))
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, e.Message)
	return append(dst, '}')
}

// appendJSONString appends s as json.Marshal quotes it. Plain ASCII, the
// usual case, is copied; a string with anything json.Marshal escapes
// (quotes, backslash, control characters, <, > and & which it escapes for
// HTML, and all non-ASCII, where it also replaces invalid UTF-8) goes
// through json.Marshal itself.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // a string always marshals
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
