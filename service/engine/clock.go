package engine

import "time"

// Clock is the engine's source of time, replaceable so tests can move time
// by hand (see FakeClock in fakeclock_test.go).
//
// The engine calls Now, AfterFunc and Timer.Stop while holding its mutex, so
// an implementation must not call f from inside AfterFunc and must not wait
// for a running f in Stop. f may run on any goroutine. Now must return
// times after 1970: the engine stores times as Unix nanoseconds.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once, d after now, unless the timer is stopped.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface {
	// Stop prevents the call if it has not started and reports whether it
	// did. The engine copes with a call that could not be stopped.
	Stop() bool
}

// realClock is the default Clock: the time package.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
