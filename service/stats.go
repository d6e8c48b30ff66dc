package service

import (
	"sync/atomic"

	"github.com/nats-io/nats.go/micro"
)

// opStats counts requests and error replies per lock operation. The four
// operations share one micro endpoint, whose own counts lump them
// together; these show in that endpoint's "data" in `nats micro stats ldlm`.
// The map is filled once and only read after; a subject's second token
// that is not in it is no lock operation.
type opStats map[string]*opCounts

type opCounts struct {
	requests, errors atomic.Uint64
}

// OpCounts is one operation's counts as `nats micro stats` shows them.
type OpCounts struct {
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
}

// data is micro's StatsHandler: the counts of each operation for the
// requests endpoint, nothing for the others.
func (s opStats) data(e *micro.Endpoint) any {
	if e.Name != RequestsEndpoint {
		return nil
	}
	out := map[string]OpCounts{}
	for op, c := range s {
		out[op] = OpCounts{Requests: c.requests.Load(), Errors: c.errors.Load()}
	}
	return out
}
