package clientlib_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ldlm-io/ldlm/clientlib"
)

// connect opens a NATS connection to url and a lock client on it, as an
// application does once at start (see ExampleNew). done closes both.
func connect(url string) (c *clientlib.Client, done func()) {
	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	c, err = clientlib.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	return c, func() {
		_ = c.Close()
		nc.Close()
	}
}

// A lock is identified by its name.
func ExampleNew() {
	url, stop := exampleServer()
	defer stop()

	nc, err := nats.Connect(url) // the connection your service already has
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	client, err := clientlib.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	ctx := context.Background()
	lock, err := client.Lock(ctx, "my-task")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("locked", lock.Name())
	if err := lock.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	// Output: locked my-task
}

// Simple lock: block until the lock is obtained.
func ExampleClient_Lock() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()

	// Block until lock is obtained
	lock, err := client.Lock(ctx, "my-task")
	if err != nil {
		log.Fatal(err)
	}

	// Do work, then release lock
	fmt.Println("working")
	if err := lock.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	// Output: working
}

// Wait timeout: give up waiting after a while. Not getting the lock is not
// an error; Locked says whether it was obtained.
func ExampleClient_Lock_waitTimeout() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()

	other, doneOther := connect(url) // someone else holds the lock
	defer doneOther()
	if _, err := other.Lock(ctx, "my-task"); err != nil {
		log.Fatal(err)
	}

	// Wait at most 100 milliseconds to acquire lock
	lock, err := client.Lock(ctx, "my-task", clientlib.WithWaitTimeout(100*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	if !lock.Locked() {
		fmt.Println("Could not obtain lock within 100ms.")
		return
	}
	// Do work, then release lock
	_ = lock.Unlock(ctx)
	// Output: Could not obtain lock within 100ms.
}

// Try lock: never wait for the lock.
func ExampleClient_TryLock() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()

	other, doneOther := connect(url) // someone else holds the lock
	defer doneOther()
	if _, err := other.Lock(ctx, "my-task"); err != nil {
		log.Fatal(err)
	}

	// This is non-blocking
	lock, err := client.TryLock(ctx, "my-task")
	if err != nil {
		log.Fatal(err)
	}
	if !lock.Locked() {
		fmt.Println("Lock already acquired.")
		return
	}
	// Do work, then release lock
	_ = lock.Unlock(ctx)
	// Output: Lock already acquired.
}

// Lock context: the lock is held while the function runs, and released when
// it returns. The function's context is cancelled if the lock is lost.
func ExampleClient_WithLock() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()

	err := client.WithLock(context.Background(), "my-task", func(ctx context.Context) error {
		// Do work. Lock will be released when the function returns.
		fmt.Println("working under the lock")
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: working under the lock
}

// Lock context with wait timeout: when the lock is not obtained in time,
// the function does not run and WithLock returns ErrNotObtained.
func ExampleClient_WithLock_waitTimeout() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()

	work := func(ctx context.Context) error {
		fmt.Println("working under the lock")
		return nil
	}
	err := client.WithLock(ctx, "my-task", work, clientlib.WithWaitTimeout(30*time.Second))
	if errors.Is(err, clientlib.ErrNotObtained) {
		fmt.Println("Could not obtain lock within 30 seconds.")
	} else if err != nil {
		log.Fatal(err)
	}
	// Output: working under the lock
}

// Try-lock context: run the function only if the lock is free now.
func ExampleClient_WithTryLock() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()

	err := client.WithTryLock(context.Background(), "my-task", func(ctx context.Context) error {
		// Do work. Lock will be released when the function returns.
		fmt.Println("working under the lock")
		return nil
	})
	switch {
	case errors.Is(err, clientlib.ErrNotObtained):
		fmt.Println("Lock already acquired.")
	case err != nil:
		log.Fatal(err)
	}
	// Output: working under the lock
}

// Size: a lock with 20 slots admits 20 holders at once, like a semaphore.
func ExampleWithSize() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()

	// Number of expensive operation slots
	const esSlots = 20

	lock, err := client.Lock(ctx, "expensive_operation", clientlib.WithSize(esSlots))
	if err != nil {
		log.Fatal(err)
	}
	// Do operation
	fmt.Println("holding one of", lock.Size(), "slots")
	_ = lock.Unlock(ctx)
	// Output: holding one of 20 slots
}

// Timeout: the service releases the lock unless it is renewed within the
// lock timeout. The client renews it in the background while you hold it.
func ExampleWithLockTimeout() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()

	lock, err := client.Lock(ctx, "my-task", clientlib.WithLockTimeout(300*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("expires in about", time.Until(lock.ExpiresAt()).Round(time.Minute), "unless renewed")
	_ = lock.Unlock(ctx)
	// Output: expires in about 5m0s unless renewed
}

// Releasing a lock.
func ExampleLock_Unlock() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()

	lock, err := client.Lock(ctx, "my-task")
	if err != nil {
		log.Fatal(err)
	}

	// Do task

	if err := lock.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	<-lock.Done()
	fmt.Println(lock.Err())
	// Output: ldlm: lock was unlocked
}

// Renewing a lock by hand, with automatic renewal turned off.
func ExampleLock_Renew() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()

	lock, err := client.Lock(ctx, "my-task",
		clientlib.WithLockTimeout(300*time.Second), clientlib.WithAutoRenew(false))
	if err != nil {
		log.Fatal(err)
	}

	// Do some work

	if err := lock.Renew(ctx, 300*time.Second); err != nil {
		log.Fatal(err) // a *LostError if the lock had already expired
	}

	// Do more work

	if err := lock.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("renewed and released")
	// Output: renewed and released
}

// Done is closed when the lock is lost; Err says why.
func ExampleLock_Done() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()

	lock, err := client.Lock(context.Background(), "my-task",
		clientlib.WithLockTimeout(100*time.Millisecond), clientlib.WithAutoRenew(false))
	if err != nil {
		log.Fatal(err)
	}
	<-lock.Done() // not renewed: lost after 100ms
	fmt.Println(errors.Is(lock.Err(), clientlib.ErrLockLost), errors.Is(lock.Err(), clientlib.ErrExpired))
	fmt.Println(lock.Err())
	// Output:
	// true true
	// ldlm: lock "my-task" lost: lock timeout passed without renewal
}

// The service tells the holder when an operator releases its lock (a
// request to ldlm.admin.unlock.NAME, as below), when its lock timeout
// passes, and when the service instance that granted it stops or is
// replaced: Done is closed at once, with the cause in Err.
func ExampleLock_Done_forceReleased() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()

	lock, err := client.Lock(context.Background(), "my-task")
	if err != nil {
		log.Fatal(err)
	}

	// An operator releases every holder of "my-task".
	operator, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer operator.Close()
	if _, err := operator.Request("ldlm.admin.unlock.my-task", nil, 5*time.Second); err != nil {
		log.Fatal(err)
	}

	<-lock.Done()
	fmt.Println(errors.Is(lock.Err(), clientlib.ErrForceReleased))
	fmt.Println(lock.Err())
	// Output:
	// true
	// ldlm: lock "my-task" lost: an operator force-released the lock
}

// fencedStore is a resource protected by a lock: it refuses a write that
// carries an older fencing token than one it has seen.
type fencedStore struct {
	mu        sync.Mutex
	lastToken uint64
	value     string
}

func (s *fencedStore) Write(token uint64, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token < s.lastToken {
		return fmt.Errorf("token %d is older than %d: refused", token, s.lastToken)
	}
	s.lastToken, s.value = token, value
	return nil
}

// Fencing tokens: a holder that stalled past its lock timeout cannot
// overwrite the work of the next holder.
func ExampleLock_Token() {
	url, stop := exampleServer()
	defer stop()
	a, doneA := connect(url)
	defer doneA()
	b, doneB := connect(url)
	defer doneB()
	ctx := context.Background()
	store := &fencedStore{}

	lockA, err := a.Lock(ctx, "store", clientlib.WithLockTimeout(100*time.Millisecond), clientlib.WithAutoRenew(false))
	if err != nil {
		log.Fatal(err)
	}
	// A stalls (a long GC pause, say) and its lock expires. B gets the lock.
	lockB, err := b.Lock(ctx, "store")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("B:", store.Write(lockB.Token(), "from B"))
	// A wakes up, unaware, and writes: the store refuses.
	fmt.Println("A refused:", store.Write(lockA.Token(), "from A") != nil)
	fmt.Println("value:", store.value)
	// Output:
	// B: <nil>
	// A refused: true
	// value: from B
}

// A sync.Locker for code that wants one.
func ExampleClient_NewLocker() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()

	var mu sync.Locker = client.NewLocker("counter")
	count := 0
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			mu.Lock()
			defer mu.Unlock()
			count++
		})
	}
	wg.Wait()
	fmt.Println(count)
	// Output: 10
}

// Primary/backup failover: every instance of a service asks for the same
// lock; the one holding it is the primary, the others wait in Lock. When
// the primary dies, its connection closes, the service releases its lock,
// and a backup takes over.
func Example_primaryBackup() {
	url, stop := exampleServer()
	defer stop()

	// instance runs one instance of the service on its own connection.
	instance := func(name string, nc *nats.Conn, primary chan<- string) {
		client, err := clientlib.New(nc)
		if err != nil {
			log.Fatal(err)
		}
		defer client.Close()
		lock, err := client.Lock(context.Background(), "orders-primary")
		if err != nil {
			return // shut down while waiting
		}
		primary <- name
		<-lock.Done() // serve as the primary until the lock is lost
	}

	ncA, _ := nats.Connect(url)
	ncB, _ := nats.Connect(url)
	defer ncB.Close()
	primary := make(chan string)
	go instance("A", ncA, primary)
	fmt.Println(<-primary, "is primary")
	go instance("B", ncB, primary) // B waits
	ncA.Close()                    // A crashes
	fmt.Println(<-primary, "is primary")
	// Output:
	// A is primary
	// B is primary
}

// Clustered failover: N of the nodes are active at once (a lock of size N);
// the others stand by and one of them takes over when an active node dies.
func Example_clusteredFailover() {
	url, stop := exampleServer()
	defer stop()
	const active = 3

	node := func(id int, nc *nats.Conn, activated chan<- int) {
		client, err := clientlib.New(nc)
		if err != nil {
			log.Fatal(err)
		}
		defer client.Close()
		lock, err := client.Lock(context.Background(), "cluster-active", clientlib.WithSize(active))
		if err != nil {
			return
		}
		activated <- id
		<-lock.Done() // do the active node's work until the lock is lost
	}

	activated := make(chan int)
	conns := map[int]*nats.Conn{}
	for id := 1; id <= 4; id++ {
		conns[id], _ = nats.Connect(url)
		defer conns[id].Close()
		go node(id, conns[id], activated)
		if id <= active {
			fmt.Println("node", <-activated, "active")
		}
	}
	conns[2].Close() // node 2 dies; node 4 was standing by
	fmt.Println("node", <-activated, "active")
	// Output:
	// node 1 active
	// node 2 active
	// node 3 active
	// node 4 active
}

// Task locking: workers that find the same task let only one of them do
// it, and the others move on instead of waiting.
func Example_taskLocking() {
	url, stop := exampleServer()
	defer stop()
	worker1, done1 := connect(url)
	defer done1()
	worker2, done2 := connect(url)
	defer done2()
	ctx := context.Background()

	running, finish, finished := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		_ = worker1.WithTryLock(ctx, "task-42", func(ctx context.Context) error {
			fmt.Println("worker 1 runs task-42")
			close(running)
			<-finish
			return nil
		})
	}()

	<-running
	err := worker2.WithTryLock(ctx, "task-42", func(ctx context.Context) error {
		fmt.Println("worker 2 runs task-42")
		return nil
	})
	if errors.Is(err, clientlib.ErrNotObtained) {
		fmt.Println("worker 2 skips task-42: another worker has it")
	}
	close(finish)
	<-finished
	// Output:
	// worker 1 runs task-42
	// worker 2 skips task-42: another worker has it
}

// Resource utilisation limiting: at most 2 jobs use the GPUs at once,
// however many workers there are.
func Example_resourceLimiting() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()

	var running, most atomic.Int32
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			err := client.WithLock(ctx, "gpu", func(ctx context.Context) error {
				n := running.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(10 * time.Millisecond) // use the GPU
				running.Add(-1)
				return nil
			}, clientlib.WithSize(2))
			if err != nil {
				log.Fatal(err)
			}
		})
	}
	wg.Wait()
	fmt.Println("never more than 2 jobs at once:", most.Load() <= 2)
	// Output: never more than 2 jobs at once: true
}

// Client-side rate limiting: at most 2 calls to an external API per window.
// Each call takes a slot of a lock of size 2 whose lock timeout is the
// window, with auto-renew off, and never unlocks it: the slot frees itself
// when the window has passed, and the next call waits in Lock until then.
func Example_clientSideRateLimit() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()
	ctx := context.Background()
	const perWindow, window = 2, 200 * time.Millisecond

	start := time.Now()
	for call := 1; call <= 4; call++ {
		_, err := client.Lock(ctx, "api.example.com",
			clientlib.WithSize(perWindow), clientlib.WithLockTimeout(window), clientlib.WithAutoRenew(false))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("call", call) // call the API
	}
	// Calls 3 and 4 had to wait for the slots of calls 1 and 2 to expire.
	fmt.Println("4 calls took at least one window:", time.Since(start) >= window)
	// Output:
	// call 1
	// call 2
	// call 3
	// call 4
	// 4 calls took at least one window: true
}

// Server-side rate limiting: an API admits at most 3 requests per user per
// minute, and refuses the others at once (HTTP 429) rather than queueing
// them. Each request TryLocks a slot that expires with the window.
func Example_serverSideRateLimit() {
	url, stop := exampleServer()
	defer stop()
	client, done := connect(url)
	defer done()

	allow := func(ctx context.Context, user string) bool {
		slot, err := client.TryLock(ctx, "ratelimit."+user,
			clientlib.WithSize(3), clientlib.WithLockTimeout(time.Minute), clientlib.WithAutoRenew(false))
		if err != nil {
			log.Print(err)
			return false // or true: decide whether to fail open
		}
		return slot.Locked()
	}

	for request := 1; request <= 5; request++ {
		if allow(context.Background(), "alice") {
			fmt.Println("request", request, "served")
		} else {
			fmt.Println("request", request, "refused: 429 Too Many Requests")
		}
	}
	// Output:
	// request 1 served
	// request 2 served
	// request 3 served
	// request 4 refused: 429 Too Many Requests
	// request 5 refused: 429 Too Many Requests
}
