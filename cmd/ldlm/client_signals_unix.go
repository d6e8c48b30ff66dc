//go:build unix

package main

import (
	"os"
	"syscall"
)

// forwardedSignals are passed on to COMMAND. While the lock is still being
// waited for, they end the wait instead.
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}
