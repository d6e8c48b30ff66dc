//go:build !linux

package main

import "syscall"

// commandProcAttr: outside Linux there is no parent-death signal, so a
// COMMAND whose ldlm was killed with SIGKILL runs on without the lock (the
// fencing token in LDLM_LOCK_TOKEN is what protects the resource then).
func commandProcAttr() *syscall.SysProcAttr { return nil }
