package ldlmtest

import (
	"bytes"
	"sync"
)

// SyncBuffer is a bytes.Buffer that a process or a logger writes to while
// a test reads it: the output of a child process, or a service's log.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
