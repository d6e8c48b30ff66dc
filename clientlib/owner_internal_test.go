package clientlib

// The service on main names a connection's server by its name in the
// Ldlm-Owner header and in its liveness checks; the clientlib tests run
// against it. Delete this file together with ownerUsesServerName once the
// service accepts SERVER_ID:CLIENT_ID (WIRE-V2 item 1).
func init() { ownerUsesServerName = true }

// OwnerUsesServerName tells the external tests which form the owner has.
func OwnerUsesServerName() bool { return ownerUsesServerName }
