package engine

import (
	"time"

	"github.com/ldlm-io/ldlm/subjects"
)

// EventKind says what happened to a grant or a wait.
type EventKind uint8

// The kinds of Event.
const (
	// EventGranted: a slot was granted, at once or to a waiter (then
	// Duration is how long it waited).
	EventGranted EventKind = iota + 1
	// EventReleased: the holder unlocked with its key.
	EventReleased
	// EventExpired: the grant's lock timeout passed without a renew.
	EventExpired
	// EventOwnerGone: released because its owner went away (ReleaseOwner,
	// ReleaseStaleOwners).
	EventOwnerGone
	// EventForced: released by an operator (ForceUnlock).
	EventForced
	// EventWaitTimedOut: a waiter's wait timeout passed.
	EventWaitTimedOut
	// EventWaitCancelled: a waiter was cancelled by an unlock with its key.
	EventWaitCancelled
	// EventWaitOwnerGone: a waiter was dropped because its owner went away.
	EventWaitOwnerGone
	// EventWaitClosed: a waiter was failed because the engine closed.
	EventWaitClosed
)

var eventNames = [...]string{
	EventGranted:       "granted",
	EventReleased:      "released",
	EventExpired:       "expired",
	EventOwnerGone:     "released-on-disconnect",
	EventForced:        "force-released",
	EventWaitTimedOut:  "wait-timed-out",
	EventWaitCancelled: "wait-cancelled",
	EventWaitOwnerGone: "wait-dropped-on-disconnect",
	EventWaitClosed:    "wait-failed-on-close",
}

// String is the kind's name as events are published: "granted",
// "released", "expired", "released-on-disconnect", ….
func (k EventKind) String() string {
	if int(k) < len(eventNames) && eventNames[k] != "" {
		return eventNames[k]
	}
	return "unknown"
}

// Lost reports whether the holder lost its grant without unlocking it.
func (k EventKind) Lost() bool {
	return k == EventExpired || k == EventOwnerGone || k == EventForced
}

// Event is one thing that happened to a grant or a wait, for metrics,
// published events and telling holders that they lost a lock.
type Event struct {
	Kind  EventKind
	Name  string
	Token uint64 // the grant's fencing token; 0 for wait events
	Owner subjects.Owner
	// Duration is how long the request waited (EventGranted, wait events)
	// or how long the grant was held (releases).
	Duration time.Duration
}

func waitEndKind(err error) EventKind {
	switch err {
	case ErrWaitTimeout:
		return EventWaitTimedOut
	case ErrWaitCancelled:
		return EventWaitCancelled
	case ErrOwnerGone:
		return EventWaitOwnerGone
	default:
		return EventWaitClosed
	}
}
