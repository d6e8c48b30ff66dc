package subjects

import "time"

// Operations under PREFIX.admin., for operators. They live under their own
// subjects so that NATS permissions can allow applications to lock while
// denying them administration (deny PREFIX.admin.>).
const (
	OpAdminList   = "admin.list"   // the locks with holders and waiters, a page at a time
	OpAdminUnlock = "admin.unlock" // PREFIX.admin.unlock.NAME: force release
	OpAdminStatus = "admin.status" // version, uptime, counts, liveness
	// OpAdminInstances is answered by every instance on the prefix, the
	// active and each standby: see InstanceInfo.
	OpAdminInstances = "admin.instances"
)

// The second tokens of the subjects the service publishes on:
//
//	PREFIX.lost.OWNER        LostNotice: connection OWNER lost a grant without unlocking it
//	PREFIX.events.KIND.NAME  Event (NAME encoded), only when the service runs with events on
//	PREFIX.instance.EVENT    InstanceNotice
const (
	LostToken     = "lost"
	EventsToken   = "events"
	InstanceToken = "instance"
)

// LostSubject is where the service tells the connection owner (a
// FormatOwner value) about grants it lost. Clients subscribe to it for
// their own connection.
func LostSubject(prefix, owner string) string {
	return prefix + "." + LostToken + "." + EncodeName(owner)
}

// TenantLostSubject is where a service with one namespace per account
// publishes the notices for owner of account: PREFIX.lost.ACCOUNT.OWNER.
// The NATS config lets each account import only its own, mapped to
// PREFIX.lost.OWNER, so clients subscribe to LostSubject in either mode.
func TenantLostSubject(prefix, account, owner string) string {
	return prefix + "." + LostToken + "." + account + "." + EncodeName(owner)
}

// Reasons in LostNotice and Event.
const (
	ReasonExpired    = "expired"                // lock timeout passed without renew
	ReasonDisconnect = "released-on-disconnect" // the owner's connection closed
	ReasonForced     = "force-released"         // an operator released it
)

// LostNotice tells a holder that its grant is gone.
type LostNotice struct {
	Name   string `json:"name"`
	Token  uint64 `json:"token"`
	Reason string `json:"reason"`
}

// Event is a published event: PREFIX.events.KIND.NAME.
type Event struct {
	Kind    string    `json:"kind"`              // granted, released, expired, released-on-disconnect, force-released, wait-timed-out, …
	Account string    `json:"account,omitempty"` // with one namespace per account
	Name    string    `json:"name"`
	Token   uint64    `json:"token,omitempty"`
	Owner   string    `json:"owner,omitempty"`
	Time    time.Time `json:"time"`
	// DurationSeconds is how long the request waited (granted, wait
	// events) or how long the grant was held (releases).
	DurationSeconds float64 `json:"duration_seconds"`
}

// AdminSubject is PREFIX.admin.OP, or PREFIX.admin.unlock.NAME.
func AdminSubject(prefix, op, name string) string {
	if op == OpAdminUnlock {
		return prefix + "." + op + "." + EncodeName(name)
	}
	return prefix + "." + op
}

// ForceUnlockRequest selects which grants of a lock an operator releases:
// the one with Key, else the one with Token, else every holder.
type ForceUnlockRequest struct {
	// Account names the namespace when the service keeps one per account.
	Account string `json:"account,omitempty"`
	Key     string `json:"key,omitempty"`
	Token   uint64 `json:"token,omitempty"`
}

// ForceUnlockResponse lists the tokens of the released grants.
type ForceUnlockResponse struct {
	Unlocked bool     `json:"unlocked"`
	Name     string   `json:"name"`
	Released []uint64 `json:"released,omitempty"`
	Error    *Error   `json:"error,omitempty"`
}

// ListRequest asks for one page of the lock list. The zero value (or an
// empty body) asks for the first page of every lock.
type ListRequest struct {
	// After is the Next of the page before: the list goes on with the
	// locks whose names sort after it.
	After string `json:"after,omitempty"`
	// Limit is the most locks on the page: 1 to MaxListLimit, default
	// DefaultListLimit. A page also ends before it would pass
	// MaxListPageBytes.
	Limit int `json:"limit,omitempty"`
	// Prefix lists only the locks whose names start with it.
	Prefix string `json:"prefix,omitempty"`
}

// Bounds of a list page. A page stays far below the 1 MiB that NATS
// carries by default, whatever the locks hold.
const (
	DefaultListLimit = 1000
	MaxListLimit     = 10_000
	MaxListPageBytes = 512 << 10
	// MaxListEntries is the most holders, and the most waiters, listed for
	// one lock; LockInfo's totals count them all.
	MaxListEntries = 100
)

// ListResponse is one page of the locks the service holds, sorted by name.
type ListResponse struct {
	Locks []LockInfo `json:"locks"`
	// Next, when not empty, is where the next page starts: send it as
	// ListRequest.After. Empty on the last page.
	Next  string `json:"next,omitempty"`
	Error *Error `json:"error,omitempty"`
}

// LockInfo describes one lock for operators.
type LockInfo struct {
	// Account is the lock's namespace when the service keeps one per account.
	Account string       `json:"account,omitempty"`
	Name    string       `json:"name"`
	Size    int          `json:"size"`
	Holders []HolderInfo `json:"holders"`
	Waiters []WaiterInfo `json:"waiters,omitempty"`
	// HoldersTotal and WaitersTotal count every holder and waiter; the
	// lists above show at most MaxListEntries of each.
	HoldersTotal int `json:"holders_total"`
	WaitersTotal int `json:"waiters_total,omitempty"`
}

// HolderInfo describes a grant. Only a prefix of the key is shown: enough
// to tell grants apart, not enough to unlock.
type HolderInfo struct {
	Owner      string    `json:"owner,omitempty"`
	KeyPrefix  string    `json:"key_prefix"`
	Token      uint64    `json:"token"`
	AcquiredAt time.Time `json:"acquired_at"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
}

// WaiterInfo describes a parked lock request.
type WaiterInfo struct {
	Owner    string    `json:"owner,omitempty"`
	Since    time.Time `json:"since"`
	Deadline time.Time `json:"deadline,omitzero"`
}

// KeyPrefix returns the part of key that HolderInfo shows: its first 6
// characters, 24 of the 128 bits of a key the service made. A short key,
// which a client may have chosen, is not shown at all: its prefix would be
// most of it.
func KeyPrefix(key string) string {
	if len(key) < 24 {
		return "******"
	}
	return key[:6] + "…"
}

// StatusResponse describes the running service.
type StatusResponse struct {
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	Uptime    float64   `json:"uptime_seconds"`
	Prefix    string    `json:"prefix"`
	Locks     int       `json:"locks"`
	Holders   int       `json:"holders"`
	Waiters   int       `json:"waiters"`
	Owners    int       `json:"owners"` // connections that hold or wait for a lock
	Liveness  string    `json:"liveness"`
	LastSweep time.Time `json:"last_sweep,omitzero"`
	// ClearOnDisconnect is false when locks survive their connection.
	ClearOnDisconnect bool `json:"clear_on_disconnect"`
	// Tenants is true when every account has its own lock namespace.
	Tenants bool   `json:"tenants"`
	Error   *Error `json:"error,omitempty"`
}

// The roles in InstanceInfo.
const (
	RoleActive  = "active"  // answers lock requests
	RoleStandby = "standby" // follows the active's state stream, to take over when it goes
)

// InstanceInfo is one instance's answer on PREFIX.admin.instances. Every
// instance of the prefix answers, standbys too (they answer nothing else:
// they register no micro service, so that `nats micro ping` finds the
// active alone). There is no knowing how many will answer: a requester
// gathers answers for a short while, as `nats micro ping` does.
type InstanceInfo struct {
	// ID names this process's instance of the service, made when it
	// started; it stays the same when a standby takes over.
	ID string `json:"id"`
	// MicroID is the id `nats micro info ldlm` shows; only the active has
	// one.
	MicroID string `json:"micro_id,omitempty"`
	// Instance is the id in grants and announcements. With JetStream state
	// it is the state's, so every instance of the prefix has the same one.
	Instance string `json:"instance"`
	Role     string `json:"role"`  // RoleActive or RoleStandby
	State    string `json:"state"` // where the locks live: "memory" or "jetstream"
	Version  string `json:"version"`
	// Server is the name of the NATS server the instance is connected to.
	Server string `json:"server"`
	// Since is when the instance took its role (by its clock), and
	// RoleSeconds how long ago that was when it answered.
	Since       time.Time `json:"since"`
	RoleSeconds float64   `json:"role_seconds"`
	// Sequence, with JetStream state, is the sequence in the state stream
	// of the last record the active wrote (acknowledged by the stream), or
	// the standby applied. A standby with a lower sequence than the
	// active's is that many records behind.
	Sequence uint64 `json:"sequence,omitempty"`
	// IdleSeconds (a standby) is how long ago it last applied a record.
	IdleSeconds float64 `json:"idle_seconds,omitempty"`
}

// InstanceSubject is PREFIX.instance.EVENT, EVENT InstanceStarted or
// InstanceStopped.
func InstanceSubject(prefix, event string) string {
	return prefix + "." + InstanceToken + "." + event
}

// InstanceNotice announces that an instance of the service started or
// stopped. Lock replies carry the instance that granted them; a client
// that hears that another instance started, or that its instance stopped,
// knows its locks are gone (the service keeps its state in memory only).
type InstanceNotice struct {
	Instance string    `json:"instance"`
	Event    string    `json:"event"` // InstanceStarted or InstanceStopped
	Time     time.Time `json:"time"`
}

// The events of InstanceNotice.
const (
	InstanceStarted = "started"
	InstanceStopped = "stopped"
)
