// Package engine is the in-memory state of the LDLM lock server: which
// locks exist, who holds them, who waits for them, and when grants and
// waits time out. It knows nothing about NATS; the service's adapter turns
// each request into one call here and each result into one reply.
//
// # Locks are named semaphores
//
// A lock is identified by its name and has a size: the number of holders it
// admits at once (1, the default, makes it a mutex). The first request for a
// name creates the lock with that request's size; while the lock exists every
// request must use the same size. A lock exists only while it has a holder or
// a waiter. When the last one leaves, the engine forgets the lock entirely,
// so memory follows the number of locks in use, not the number of names ever
// used, and a later request may create the name again with any size.
//
// # Keys and fencing tokens
//
// Every grant has a key, the holder's secret: Unlock and Renew must present
// it. A client may choose its key; otherwise the engine generates 128 random
// bits from a ChaCha8 generator seeded from crypto/rand, written as 32
// lowercase hex characters. A key may hold or wait for a given lock only
// once at a time, so clients should use a fresh key for every request.
//
// Every grant also gets a fencing token from a single counter of the
// engine. Tokens only grow, across all locks and even when a lock is
// forgotten and created again, so a protected resource can refuse a write
// carrying a token older than one it has already seen. The counter lives
// in memory: a new Engine starts again (see WithFirstToken), or above the
// tokens of the records it restores (Record, Restore).
//
// # Waiters, FIFO order and why callbacks
//
// TryLock never waits. Lock parks the request at the end of the lock's
// queue when all slots are taken; each freed slot goes to the oldest waiter.
// Because a lock only has waiters while all its slots are taken, a new
// request never overtakes a waiter.
//
// The engine never blocks its caller. Lock returns at once, either with a
// grant or having parked the request, which its done callback completes
// later. The server therefore needs no goroutine per waiting client, and
// cancelling or shutting down never has to interrupt a blocked call.
//
// A client that gives up waiting sends Unlock with the key of its lock
// request: it releases the grant if one raced in, or cancels the wait. This
// needs the unlock to reach the engine after the lock request it cancels:
// the service reads one connection's requests in the order they were sent.
//
// # Timeouts
//
// A grant may have a lock timeout: unless renewed in time it is released
// and its slot passes to the next waiter. A wait may have a wait timeout.
// Both run on a Clock, which tests replace with a FakeClock (WithClock).
//
// # Owners
//
// Each request may name an owner (a subjects.Owner, the one wire type the
// engine uses), usually the client connection. When the owner goes away,
// ReleaseOwner releases its grants and drops its waits in one call;
// OwnerMark and ReleaseStaleOwners let a periodic sweep release owners
// whose disconnection was missed.
package engine
