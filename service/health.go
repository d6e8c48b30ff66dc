package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// A service that can no longer do its job stops answering, loudly, rather
// than living on silently dead: Done and Err tell its owner (ldlm starts a
// new service when it was deposed, and otherwise exits 1, for a supervisor
// to restart it), and micro discovery no longer lists it.

// Done is closed when the service has stopped answering, for any reason:
// Stop returned, or it stopped by itself because one of its NATS
// connections was closed for good (nats.go gave up reconnecting, or the
// server closed it for a protocol error), it found an older instance
// serving the same prefix, or (JetStream state) it was deposed. Err says
// which. A service that stopped by itself is of no use: call Stop. If Err
// matches ErrDeposed, start a new service on the same connections (it
// stands by, or takes over if no instance answers); otherwise exit with an
// error, so that a supervisor starts a fresh process.
func (s *Service) Done() <-chan struct{} { return s.failed }

// ErrDeposed is why a service with JetStream state stops by itself when it
// can no longer act on the state stream while its connections live on: as
// the active, a write was refused (another instance took over) or not
// acknowledged in time; as a standby, following the stream or taking over
// failed. The process has nothing to repair: a new service on the same
// connections loads the stream again and stands by. Exiting instead would
// take down an embedded NATS server that may be a member of the stream's
// quorum.
var ErrDeposed = errors.New("no longer acting on the lock state (deposed, or the standby lost the stream): start the service again on the same connections")

// ErrStopped is Err after Stop, when the service had not stopped by itself
// before.
var ErrStopped = errors.New("the lock service was stopped")

// Err says why Done was closed; nil before.
func (s *Service) Err() error {
	select {
	case <-s.failed:
		return s.failErr
	default:
		return nil
	}
}

// stepDown stops answering requests (so `nats micro ping` no longer finds
// this instance), logs why and closes Done. It may be called from the
// service's own goroutines, which Stop waits for, so it does not call Stop.
func (s *Service) stepDown(err error) {
	s.failOnce.Do(func() {
		level := slog.LevelError
		if errors.Is(err, ErrDeposed) {
			level = slog.LevelWarn // its owner starts it again
		}
		s.log.Log(context.Background(), level, "lock service stopped answering", "err", err)
		s.failErr = err
		s.stopMicro()
		close(s.failed)
	})
}

// deposed steps the service down with ErrDeposed, unless one of its
// connections is closed for good: then a new service on them could not
// work either, and the reason is ErrConnectionClosed.
func (s *Service) deposed(err error) {
	for _, c := range []struct {
		which string
		nc    *nats.Conn
	}{{"service", s.nc}, {"system account", s.sys}} {
		if c.nc != nil && c.nc.IsClosed() {
			s.stepDown(fmt.Errorf("%w: the %s connection (%w)", ErrConnectionClosed, c.which, err))
			return
		}
	}
	s.stepDown(fmt.Errorf("%w: %w", ErrDeposed, err))
}

// stopMicro stops answering: micro drains the subscriptions, and the
// instance no longer answers PREFIX.admin.instances.
func (s *Service) stopMicro() {
	if s.instancesSub != nil {
		_ = s.instancesSub.Unsubscribe() // a second call's error: already done
	}
	if s.micro != nil {
		if err := s.micro.Stop(); err != nil {
			s.log.Warn("stopping micro service", "err", err)
		}
	}
}

// ErrConnectionClosed is why a service stops itself when one of its NATS
// connections is closed for good.
var ErrConnectionClosed = errors.New("a NATS connection of the lock service was closed for good")

// watch steps the service down when its connection, or its system
// connection, is closed for good (without the first nobody can reach it,
// without the second it would keep granting locks it can no longer free
// when their owners die), or when an older instance serves its prefix,
// which it checks every sweep interval.
func (s *Service) watch() {
	// A connection closed before its listener was added sends nothing.
	ncClosed := s.nc.StatusChanged(nats.CLOSED)
	if s.nc.IsClosed() {
		ncClosed <- nats.CLOSED
	}
	var sysClosed chan nats.Status // nil without a system connection: never fires
	if s.sys != nil {
		sysClosed = s.sys.StatusChanged(nats.CLOSED)
		if s.sys.IsClosed() {
			sysClosed <- nats.CLOSED
		}
	}
	closed := func(which string, nc *nats.Conn) error {
		err := fmt.Errorf("%w: the %s connection", ErrConnectionClosed, which)
		if last := nc.LastError(); last != nil {
			err = fmt.Errorf("%w (%v)", err, last)
		}
		return err
	}
	every := positiveOr(s.cfg.SweepInterval, rivalCheckInterval)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.nc.RemoveStatusListener(ncClosed)
		if sysClosed != nil {
			defer s.sys.RemoveStatusListener(sysClosed)
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			var err error
			select {
			case <-s.stop:
				return
			case <-ncClosed:
				err = closed("service", s.nc)
			case <-sysClosed:
				err = closed("system account", s.sys)
			case <-t.C:
				if s.rec != nil {
					continue // with JetStream state, the stream decides who answers
				}
				ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
				err = s.checkRivals(ctx)
				cancel()
				if !errors.Is(err, ErrDuplicateInstance) {
					continue
				}
			}
			s.stepDown(err)
			return
		}
	}()
}
