package main

import "syscall"

// commandProcAttr makes the kernel send COMMAND SIGTERM when ldlm dies, so
// that a `kill -9` of ldlm, which frees the lock, does not leave COMMAND
// working on unprotected. (The signal goes when the thread that started
// COMMAND ends; the Go runtime keeps its threads for the life of the
// process unless a goroutine locked to one exits, which ldlm never does.)
func commandProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
