//go:build !unix && !windows

package bench

import (
	"math"
	"time"
)

// fileLimit: this system has no limit of open files that the benchmarks
// know how to read, so they assume none.
func fileLimit() (uint64, error) {
	return math.MaxUint64, nil
}

// processCPU is not known on this system: the CPU columns read 0.
func processCPU() time.Duration {
	return 0
}
