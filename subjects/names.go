package subjects

import (
	"encoding/base64"
	"fmt"
	"strconv"
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

	// OpAttach is PREFIX.attach, without a lock name: a client sends it
	// after a reconnect, with its session, to bind the session to its new
	// connection and learn what the session still holds (AttachResponse).
	OpAttach = "attach"
)

// DefaultMaxNameLength is the longest lock name, in bytes, that the service
// accepts unless configured otherwise.
const DefaultMaxNameLength = 1024

// MaxNameLengthLimit is the highest name length a service may be
// configured with. NATS refuses a control line over 4,096 bytes and closes
// the connection that sends one; the longest subject the service publishes
// is PREFIX.events.KIND.NAME, and a name of this length takes at most 2,732
// bytes there once encoded, which leaves room for a prefix of up to
// MaxPrefixLength bytes and the longest KIND.
const MaxNameLengthLimit = 2048

// MaxPrefixLength is the longest subject prefix a service may use (see
// MaxNameLengthLimit).
const MaxPrefixLength = 256

// Subject returns the subject for operation op on the lock called name,
// encoding the name when it cannot stand in a subject as it is.
func Subject(prefix, op, name string) string {
	return prefix + "." + op + "." + EncodeName(name)
}

// EncodeName returns the subject form of a lock name: the name itself when
// it is a plain subject tail, else '~' followed by the unpadded base64url
// encoding of its bytes. A plain name is made of printable ASCII other than
// space, '*' and '>', has no empty token (no leading, trailing or double
// dot) and does not start with '~', so the two forms cannot be confused.
// "orders.123" stays "orders.123"; "My lock" becomes "~TXkgbG9jaw".
func EncodeName(name string) string {
	if isPlainName(name) {
		return name
	}
	return "~" + base64.RawURLEncoding.EncodeToString([]byte(name))
}

// DecodeName turns the subject form of a name (everything after PREFIX.OP.)
// back into the name. It fails with an *Error of code InvalidLockName when
// the tail is empty, not valid base64url after '~', not UTF-8, or longer
// than maxLen bytes once decoded (maxLen <= 0 means DefaultMaxNameLength).
// Each message says what to send instead.
func DecodeName(tail string, maxLen int) (string, error) {
	if maxLen <= 0 {
		maxLen = DefaultMaxNameLength
	}
	name := tail
	if strings.HasPrefix(tail, "~") {
		raw, err := base64.RawURLEncoding.DecodeString(tail[1:])
		if err != nil {
			return "", Errorf(CodeInvalidLockName, "lock name %s starts with '~', so the rest must be the name's bytes in unpadded base64url (RFC 4648 §5, no '='): encode the name with EncodeName, or see docs/protocol.md", quoteShort(tail))
		}
		name = string(raw)
	}
	switch {
	case name == "":
		return "", Errorf(CodeInvalidLockName, "lock name is empty: give a name of 1 to %d bytes", maxLen)
	case len(name) > maxLen:
		return "", Errorf(CodeInvalidLockName, "lock name %s is %d bytes long, over this service's limit of %d bytes: use a shorter name, e.g. a hash of the long one", quoteShort(name), len(name), maxLen)
	case !utf8.ValidString(name):
		return "", Errorf(CodeInvalidLockName, "lock name %s is not valid UTF-8: a name is text; encode binary names as text first, e.g. in hex", quoteShort(name))
	}
	return name, nil
}

// quoteMax is how many characters of a bad name an error message shows.
const quoteMax = 40

// quoteShort quotes s for an error message, cut to its first quoteMax
// characters (then followed by "...") so that a long name does not swamp
// the message.
func quoteShort(s string) string {
	if utf8.RuneCountInString(s) <= quoteMax {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%.*q...", quoteMax, s)
}

// NameFromSubject returns the lock name addressed by subject, which must
// start with PREFIX.OP. (the service's endpoints only receive such subjects).
func NameFromSubject(prefix, op, subject string, maxLen int) (string, error) {
	head := prefix + "." + op + "."
	if !strings.HasPrefix(subject, head) {
		return "", Errorf(CodeInvalidLockName, "subject %s does not address a lock: send to %sNAME", quoteShort(subject), head)
	}
	return DecodeName(subject[len(head):], maxLen)
}

func isPlainName(name string) bool {
	if name == "" || name[0] == '~' || name[0] == '.' || name[len(name)-1] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c > '~' || c == '*' || c == '>' || (c == '.' && name[i+1] == '.') {
			return false
		}
	}
	return true
}
