package main

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// commandProcAttr makes the kernel send COMMAND SIGTERM when ldlm dies, so
// that a `kill -9` of ldlm, which frees the lock, does not leave COMMAND
// working on unprotected. (The signal goes when the thread that started
// COMMAND ends; the Go runtime keeps its threads for the life of the
// process unless a goroutine locked to one exits, which ldlm never does.)
//
// Unless ldlm runs on a terminal, COMMAND also gets a process group of its
// own, so that the signals ldlm sends when the lock is lost, and those it
// passes on, reach everything COMMAND started: `sh -c 'step1; step2'`
// must not leave step1 running without the lock once sh is gone. On a
// terminal COMMAND stays in ldlm's group, the terminal's foreground group,
// so that it can read the terminal and Ctrl-C reaches it.
func commandProcAttr() *syscall.SysProcAttr {
	_, notTerminal := unix.IoctlGetTermios(int(os.Stdin.Fd()), unix.TCGETS)
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: notTerminal != nil}
}

// signalCommand sends sig to COMMAND, and to its whole process group when
// it has one of its own.
func signalCommand(p *os.Process, attr *syscall.SysProcAttr, sig os.Signal) error {
	if s, ok := sig.(syscall.Signal); ok && attr != nil && attr.Setpgid {
		return syscall.Kill(-p.Pid, s)
	}
	return p.Signal(sig)
}
