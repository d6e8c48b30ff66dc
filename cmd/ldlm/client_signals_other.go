//go:build !unix

package main

import (
	"os"
	"syscall"
)

// forwardedSignals are passed on to COMMAND (on systems without Unix
// signals, the two that Go delivers everywhere). While the lock is still
// being waited for, they end the wait instead.
var forwardedSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}
