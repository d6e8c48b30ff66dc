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
	dst = strconv.AppendBool(append(dst, `{"locked":`...), r.Locked)
	dst = appendJSONString(append(dst, `,"name":`...), r.Name)
	if r.Key != "" {
		dst = appendJSONString(append(dst, `,"key":`...), r.Key)
	}
	if r.Token != 0 {
		dst = strconv.AppendUint(append(dst, `,"token":`...), r.Token, 10)
	}
	if r.Size != 0 {
		dst = strconv.AppendInt(append(dst, `,"size":`...), int64(r.Size), 10)
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
		dst = appendJSONString(append(dst, `,"instance":`...), r.Instance)
	}
	if r.WaitedMS != 0 {
		dst = strconv.AppendUint(append(dst, `,"waited_ms":`...), r.WaitedMS, 10)
	}
	if r.Error != nil {
		dst = appendJSONError(append(dst, `,"error":`...), r.Error)
	}
	return append(dst, '}'), nil
}

// AppendUnlockResponse appends the JSON of r to dst, byte for byte what
// json.Marshal(r) gives.
func AppendUnlockResponse(dst []byte, r UnlockResponse) []byte {
	dst = strconv.AppendBool(append(dst, `{"unlocked":`...), r.Unlocked)
	dst = appendJSONString(append(dst, `,"name":`...), r.Name)
	if r.Error != nil {
		dst = appendJSONError(append(dst, `,"error":`...), r.Error)
	}
	return append(dst, '}')
}

func appendJSONError(dst []byte, e *Error) []byte {
	dst = appendJSONString(append(dst, `{"code":`...), string(e.Code))
	dst = appendJSONString(append(dst, `,"message":`...), e.Message)
	return append(dst, '}')
}

// appendJSONString appends s as json.Marshal quotes it. Plain ASCII, the
// usual case, is copied; anything json.Marshal may escape or replace
// (quotes, backslash, control characters, <, >, &, non-ASCII) goes through
// json.Marshal itself.
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
