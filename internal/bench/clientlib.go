package bench

import (
	"context"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
)

// libClients are the Go clients of the clientlib workloads, one per
// connection, as an application has them.
type libClients map[*nats.Conn]*clientlib.Client

func (libs libClients) of(c *client) (*clientlib.Client, error) {
	if lc := libs[c.nc]; lc != nil {
		return lc, nil
	}
	lc, err := clientlib.New(c.nc, clientlib.WithPrefix(c.prefix), clientlib.WithRequestTimeout(c.timeout))
	if err != nil {
		return nil, err
	}
	libs[c.nc] = lc
	return lc, nil
}

func (libs libClients) close() {
	for _, lc := range libs {
		_ = lc.Close()
	}
}

// clientlibWorkers are the uncontended and contended workers through
// clientlib: TryLock of a name of their own, or Lock of one shared name,
// then Unlock. Like the plain rows, a cycle makes no context of its own:
// TryLock and Unlock are bounded by the client's request timeout, and Lock,
// which the plain row bounds by its request timeout, waits as long as the
// service keeps it waiting (a context per Lock would be work that the plain
// row does not do).
func (t *Target) clientlibWorkers(workload string, clients []*client, libs libClients) ([]Cycle, error) {
	workers := make([]Cycle, len(clients))
	for i, c := range clients {
		lc, err := libs.of(c)
		if err != nil {
			return nil, err
		}
		var name string
		var lock func(ctx context.Context) (*clientlib.Lock, error)
		switch workload {
		case WorkUncontended:
			name = "bench.lu." + t.runID + "." + strconv.Itoa(i)
			lock = func(ctx context.Context) (*clientlib.Lock, error) { return lc.TryLock(ctx, name) }
		case WorkContended:
			name = "bench.lc." + t.runID
			lock = func(ctx context.Context) (*clientlib.Lock, error) { return lc.Lock(ctx, name) }
		default:
			return nil, fmt.Errorf("no clientlib run of workload %q", workload)
		}
		workers[i] = func() error {
			ctx := context.Background()
			l, err := lock(ctx)
			if err != nil {
				return err
			}
			if !l.Locked() {
				return fmt.Errorf("%s: not locked: %w", name, l.Err())
			}
			return l.Unlock(ctx)
		}
	}
	return workers, nil
}
