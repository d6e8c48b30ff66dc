package subjects

import "encoding/json"

// DecodeLockResponse decodes a lock, trylock or renew reply into *r with
// the same result as json.Unmarshal(data, r), error included. Clients
// decode two replies per lock cycle; with encoding/json that was more CPU
// than the service spends on both requests, so the replies the service
// writes (see AppendLockResponse) are read by a small scanner instead.
//
// The scanner takes one object of the known fields, spelt exactly, with
// strings without escapes, integers without fraction or exponent, and no
// null. Anything else (a field a newer service adds, errors of any kind)
// goes to json.Unmarshal itself, so the result never depends on the path
// taken: FuzzDecodeResponses checks that both agree on any input.
func DecodeLockResponse(data []byte, r *LockResponse) error {
	v, unlocked := *r, false
	if scanReply(data, &v, &unlocked) {
		*r = v
		return nil
	}
	return json.Unmarshal(data, r)
}

// DecodeUnlockResponse is DecodeLockResponse for the reply to unlock.
func DecodeUnlockResponse(data []byte, r *UnlockResponse) error {
	v, unlocked := LockResponse{Name: r.Name, Error: r.Error}, r.Unlocked
	if scanReply(data, &v, &unlocked) {
		*r = UnlockResponse{Unlocked: unlocked, Name: v.Name, Error: v.Error}
		return nil
	}
	return json.Unmarshal(data, r)
}

// scanReply reads data over *v and *unlocked as json.Unmarshal reads a
// lock or an unlock reply: present fields replace the values there, the
// others keep them; the fields of the one reply that the other lacks are
// read and dropped, as json.Unmarshal skips them. It returns false, and the
// values are to be thrown away, for anything the scanner does not read.
func scanReply(data []byte, v *LockResponse, unlocked *bool) bool {
	s := scanner{b: data}
	return s.object(func(name []byte) bool {
		var ok bool
		switch string(name) {
		case "locked":
			v.Locked, ok = s.boolean()
		case "unlocked":
			*unlocked, ok = s.boolean()
		case "name":
			v.Name, ok = s.text()
		case "key":
			v.Key, ok = s.text()
		case "token":
			v.Token, ok = s.uint64()
		case "size":
			v.Size, ok = s.smallInt()
		case "expires_at":
			// time.Time decodes the quoted text, as under encoding/json.
			start := s.i
			if _, ok = s.plainText(); ok {
				ok = v.ExpiresAt.UnmarshalJSON(s.b[start:s.i]) == nil
			}
		case "instance":
			v.Instance, ok = s.text()
		case "waited_ms":
			v.WaitedMS, ok = s.uint64()
		case "error":
			v.Error, ok = s.errorObject(v.Error)
		}
		return ok
	}) && s.end()
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
