package subjects

import (
	"encoding/base64"
	"strings"
	"unicode/utf8"
)

// DefaultPrefix is the first token of every LDLM subject unless the service
// is configured with another one.
const DefaultPrefix = "ldlm"

// The operations, the second token of a subject.
const (
	OpLock    = "lock"    // blocking acquire: waits while all slots are held
	OpTryLock = "trylock" // acquire only if a slot is free now
	OpUnlock  = "unlock"  // release a grant, or cancel a wait, by key
	OpRenew   = "renew"   // set a new lock timeout from now, by key
)

// DefaultMaxNameLength is the longest lock name, in bytes, that the service
// accepts unless configured otherwise.
const DefaultMaxNameLength = 1024

// encodedMarker starts the subject form of a name that is not a plain
// subject tail. A plain name never starts with it, so the two forms cannot
// be confused.
const encodedMarker = '~'

// Subject returns the subject for operation op on the lock called name,
// encoding the name when it cannot stand in a subject as it is.
func Subject(prefix, op, name string) string {
	return prefix + "." + op + "." + EncodeName(name)
}

// EncodeName returns the subject form of a lock name: the name itself when
// it is a plain subject tail, else '~' followed by the unpadded base64url
// encoding of its bytes. A plain name is made of printable ASCII other than
// space, '*' and '>', has no empty token (no leading, trailing or double
// dot) and does not start with '~'. "orders.123" stays "orders.123";
// "My lock" becomes "~TXkgbG9jaw".
func EncodeName(name string) string {
	if isPlainName(name) {
		return name
	}
	return string(encodedMarker) + base64.RawURLEncoding.EncodeToString([]byte(name))
}

// DecodeName turns the subject form of a name (everything after PREFIX.OP.)
// back into the name. It fails with an *Error of code InvalidLockName when
// the tail is empty, not valid base64url after '~', not UTF-8, or longer
// than maxLen bytes once decoded (maxLen <= 0 means DefaultMaxNameLength).
func DecodeName(tail string, maxLen int) (string, error) {
	if maxLen <= 0 {
		maxLen = DefaultMaxNameLength
	}
	name := tail
	if strings.HasPrefix(tail, string(encodedMarker)) {
		raw, err := base64.RawURLEncoding.DecodeString(tail[1:])
		if err != nil {
			return "", Errorf(CodeInvalidLockName, "lock name %.40q... starts with '~' but the rest is not unpadded base64url: encode the name with EncodeName", tail)
		}
		name = string(raw)
	}
	switch {
	case name == "":
		return "", Errorf(CodeInvalidLockName, "lock name is empty: put it after the operation, as in %s.%s.NAME", DefaultPrefix, OpLock)
	case len(name) > maxLen:
		return "", Errorf(CodeInvalidLockName, "lock name is %d bytes long; the limit is %d", len(name), maxLen)
	case !utf8.ValidString(name):
		return "", Errorf(CodeInvalidLockName, "lock name is not valid UTF-8")
	}
	return name, nil
}

// NameFromSubject returns the lock name addressed by subject, which must
// start with PREFIX.OP. (the service's endpoints only receive such subjects).
func NameFromSubject(prefix, op, subject string, maxLen int) (string, error) {
	head := prefix + "." + op + "."
	if !strings.HasPrefix(subject, head) {
		return "", Errorf(CodeInvalidLockName, "subject %q is not of the form %sNAME", subject, head)
	}
	return DecodeName(subject[len(head):], maxLen)
}

func isPlainName(name string) bool {
	if name == "" || name[0] == encodedMarker || name[0] == '.' || name[len(name)-1] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c > '~' || c == '*' || c == '>' {
			return false
		}
		if c == '.' && name[i+1] == '.' {
			return false
		}
	}
	return true
}
