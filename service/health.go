package service

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// A service that can no longer do its job stops answering, loudly, rather
// than living on silently dead: Done and Err tell its owner (ldlm exits 1,
// for a supervisor to restart it), and micro discovery no longer lists it.

// Done is closed when the service stopped answering by itself: one of its
// NATS connections was closed for good (nats.go gave up reconnecting, or
// the server closed it for a protocol error), or it found an older
// instance serving the same prefix. Err says which. A service in that state
// is of no use: call Stop and exit with an error, so that a supervisor
// starts a fresh one.
func (s *Service) Done() <-chan struct{} { return s.failed }

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
		s.log.Error("lock service stopped answering", "err", err)
		s.failErr = err
		if s.micro != nil {
			if err := s.micro.Stop(); err != nil {
				s.log.Warn("stopping micro service", "err", err)
			}
		}
		close(s.failed)
	})
}

// ErrConnectionClosed is why a service stops itself when one of its NATS
// connections is closed for good.
var ErrConnectionClosed = errors.New("a NATS connection of the lock service was closed for good")

// watchConnections steps the service down when its connection, or its
// system connection, is closed for good: without the first nobody can
// reach it, without the second it would keep granting locks it can no
// longer free when their owners die.
func (s *Service) watchConnections() {
	s.ncClosed = s.nc.StatusChanged(nats.CLOSED)
	if s.sys != nil {
		s.sysClosed = s.sys.StatusChanged(nats.CLOSED)
	}
	closed := func(which string, nc *nats.Conn) error {
		err := fmt.Errorf("%w: the %s connection", ErrConnectionClosed, which)
		if last := nc.LastError(); last != nil {
			err = fmt.Errorf("%w (%v)", err, last)
		}
		return err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// A connection closed before the listener was added sends nothing.
		switch {
		case s.nc.IsClosed():
			s.stepDown(closed("service", s.nc))
			return
		case s.sys != nil && s.sys.IsClosed():
			s.stepDown(closed("system account", s.sys))
			return
		}
		select {
		case <-s.stop:
		case <-s.ncClosed:
			s.stepDown(closed("service", s.nc))
		case <-s.sysClosed: // nil without a system connection: never fires
			s.stepDown(closed("system account", s.sys))
		}
	}()
}
