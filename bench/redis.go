package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ldlm-io/ldlm/internal/bench"
)

var errNoRedis = errors.New("redis-server not found")

// unlockScript deletes the lock only if it still holds our token: the
// compare-and-delete every Redis lock client uses.
var unlockScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`)

// redisLockTTL is the PX of every lock: long enough never to expire here.
const redisLockTTL = 30 * time.Second

// redisPoll is how often a contended Redis client retries.
const redisPoll = time.Millisecond

// redisSystem is a redis-server started for the run, on a free loopback
// port, with persistence off (LDLM keeps its locks in memory too).
type redisSystem struct {
	cmd     *exec.Cmd
	addr    string
	timeout time.Duration
	runID   string
}

func startRedis(path string, timeout time.Duration) (*redisSystem, error) {
	bin, err := exec.LookPath(path)
	if err != nil {
		return nil, errNoRedis
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &redisSystem{addr: "127.0.0.1:" + strconv.Itoa(port), timeout: timeout, runID: strconv.FormatInt(time.Now().UnixNano(), 36)}
	s.cmd = exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning")
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	// Wait until it answers, at most 10 s.
	c := redis.NewClient(&redis.Options{Addr: s.addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return s, nil
		}
		if time.Now().After(deadline) {
			s.close()
			return nil, fmt.Errorf("redis-server on %s does not answer: %w", s.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *redisSystem) close() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

// workloads: each worker locks with SET NX PX and a token of its own and
// unlocks with the script. One client, whose pool holds a connection per
// worker, as an application would have.
func (s *redisSystem) workloads(n int, contended bool) ([]namedWorkload, func(), error) {
	c := redis.NewClient(&redis.Options{Addr: s.addr, PoolSize: n, MinIdleConns: n})
	ctx := context.Background()
	if err := unlockScript.Load(ctx, c).Err(); err != nil {
		c.Close()
		return nil, nil, err
	}
	workers := make([]bench.Cycle, n)
	name, kind := "bench.c."+s.runID, bench.WorkContended
	if !contended {
		kind = bench.WorkUncontended
	}
	for i := range workers {
		if !contended {
			name := "bench.u." + s.runID + "." + strconv.Itoa(i)
			workers[i] = s.cycle(c, name, i, false)
		} else {
			workers[i] = s.cycle(c, name, i, true)
		}
	}
	return []namedWorkload{{system: "redis", conns: "pool", Workload: bench.Workload{Name: kind, Workers: workers}}},
		func() { c.Close() }, nil
}

// cycle locks name (polling every redisPoll while it is taken, when poll
// is set) and unlocks it.
func (s *redisSystem) cycle(c *redis.Client, name string, worker int, poll bool) bench.Cycle {
	seq := 0
	return func() error {
		seq++
		token := s.runID + "-" + strconv.Itoa(worker) + "-" + strconv.Itoa(seq)
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		for {
			ok, err := c.SetNX(ctx, name, token, redisLockTTL).Result()
			if err != nil {
				return fmt.Errorf("SET NX %s: %w", name, err)
			}
			if ok {
				break
			}
			if !poll {
				return fmt.Errorf("SET NX %s: taken", name)
			}
			select {
			case <-time.After(redisPoll):
			case <-ctx.Done():
				return fmt.Errorf("lock %s: %w", name, ctx.Err())
			}
		}
		deleted, err := unlockScript.Run(ctx, c, []string{name}, token).Int()
		if err != nil {
			return fmt.Errorf("unlock %s: %w", name, err)
		}
		if deleted != 1 {
			return fmt.Errorf("unlock %s: not held", name)
		}
		return nil
	}
}
