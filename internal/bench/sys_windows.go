package bench

import (
	"math"
	"syscall"
	"time"
)

// fileLimit returns the number of connections this process may hold open:
// Windows has no per-process limit of open files to raise (sockets are
// handles, bounded by memory), so there is no figure to report but "as
// many as needed".
func fileLimit() (uint64, error) {
	return math.MaxUint64, nil
}

// processCPU is the user and kernel CPU time of the process so far.
func processCPU() time.Duration {
	h, err := syscall.GetCurrentProcess()
	if err != nil {
		return 0
	}
	var creation, exit, kernel, user syscall.Filetime
	if err := syscall.GetProcessTimes(h, &creation, &exit, &kernel, &user); err != nil {
		return 0
	}
	// A Filetime here is a duration in units of 100 ns.
	ticks := func(f syscall.Filetime) time.Duration {
		return time.Duration(uint64(f.HighDateTime)<<32|uint64(f.LowDateTime)) * 100
	}
	return ticks(kernel) + ticks(user)
}
