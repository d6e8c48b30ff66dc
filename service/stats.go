package service

import (
	"sync/atomic"

	"github.com/nats-io/nats.go/micro"

	"github.com/ldlm-io/ldlm/subjects"
)

// opStats counts requests and error replies per lock operation. The four
// operations share one micro endpoint, whose own counts lump them
// together; these show in that endpoint's "data" in `nats micro stats ldlm`.
type opStats struct {
	lock, trylock, unlock, renew opCounts
}

type opCounts struct {
	requests, errors atomic.Uint64
}

// OpCounts is one operation's counts as `nats micro stats` shows them.
type OpCounts struct {
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
}

func (s *opStats) of(op string) *opCounts {
	switch op {
	case subjects.OpLock:
		return &s.lock
	case subjects.OpTryLock:
		return &s.trylock
	case subjects.OpUnlock:
		return &s.unlock
	case subjects.OpRenew:
		return &s.renew
	}
	return nil
}

func (s *opStats) count(op string) {
	if c := s.of(op); c != nil {
		c.requests.Add(1)
	}
}

func (s *opStats) countError(op string) {
	if c := s.of(op); c != nil {
		c.errors.Add(1)
	}
}

// data is micro's StatsHandler: the counts of each operation for the
// requests endpoint, nothing for the others.
func (s *opStats) data(e *micro.Endpoint) any {
	if e.Name != RequestsEndpoint {
		return nil
	}
	out := map[string]OpCounts{}
	for _, op := range []string{subjects.OpLock, subjects.OpTryLock, subjects.OpUnlock, subjects.OpRenew} {
		c := s.of(op)
		out[op] = OpCounts{Requests: c.requests.Load(), Errors: c.errors.Load()}
	}
	return out
}
