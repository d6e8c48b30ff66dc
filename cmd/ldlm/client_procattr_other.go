//go:build !linux

package main

import (
	"os"
	"syscall"
)

// commandProcAttr: outside Linux there is no parent-death signal, so a
// COMMAND whose ldlm was killed with SIGKILL runs on without the lock (the
// fencing token in LDLM_LOCK_TOKEN is what protects the resource then).
// COMMAND stays in ldlm's process group.
func commandProcAttr() *syscall.SysProcAttr { return nil }

// signalCommand sends sig to COMMAND.
func signalCommand(p *os.Process, _ *syscall.SysProcAttr, sig os.Signal) error {
	return p.Signal(sig)
}
