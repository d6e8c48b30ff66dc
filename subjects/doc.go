// Package subjects is the wire contract of LDLM: the NATS subjects the lock
// service answers, the JSON bodies of requests and replies, the error codes,
// and the headers that tie a lock to the connection that holds it.
//
// The service and every client import this package and nothing else of each
// other, so a client never pulls in the server. Anything a client in another
// language needs to know is also written down in docs/protocol.md.
//
// A request is a NATS request to PREFIX.OP.NAME, for example
//
//	ldlm.lock.orders.123        lock "orders.123", waiting if it is held
//	ldlm.trylock.job            lock "job" only if it is free now
//	ldlm.unlock.job             release "job" (the body carries the key)
//	ldlm.renew.job              push back the lock timeout of "job"
//
// A name that cannot stand in a subject as it is ("My lock", "a*b", "é")
// travels base64url-encoded behind a '~': see EncodeName.
package subjects
