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
	if v, ok := scanReply(data, "locked", *r); ok {
		*r = v
		return nil
	}
	return json.Unmarshal(data, r)
}

// DecodeUnlockResponse is DecodeLockResponse for the reply to unlock.
func DecodeUnlockResponse(data []byte, r *UnlockResponse) error {
	// The scanner reads it as a lock reply whose flag is "unlocked". A
	// lock reply's other fields, which json.Unmarshal would skip here,
	// are read and dropped.
	if v, ok := scanReply(data, "unlocked", LockResponse{Locked: r.Unlocked, Name: r.Name, Error: r.Error}); ok {
		*r = UnlockResponse{Unlocked: v.Locked, Name: v.Name, Error: v.Error}
		return nil
	}
	return json.Unmarshal(data, r)
}

// scanReply reads data over v as json.Unmarshal would: fields that are
// present replace v's, the others keep v's values. flag is the name of the
// field that goes to v.Locked. ok is false for anything the scanner does
// not read; v is then to be thrown away.
func scanReply(data []byte, flag string, v LockResponse) (LockResponse, bool) {
	s := scanner{b: data}
	ok := s.object(func(name []byte) bool {
		var ok bool
		switch string(name) {
		case flag:
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
	}) && s.end()
	return v, ok
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
