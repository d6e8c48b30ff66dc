// @ldlm/client: the TypeScript / JavaScript client of LDLM, the distributed
// lock manager served over NATS (docs/protocol.md of the repository).

export { Client, type ClientOptions, type LockOptions, type TryLockOptions } from "./client.js";
export { Lock } from "./lock.js";
export * from "./errors.js";
export { DEFAULT_PREFIX, encodeName, formatOwner, isPlainName, lockSubject, lostSubject } from "./names.js";
export { HEADER_OWNER, HEADER_SESSION, isSessionId, newSessionId, parseAttachReply, type AttachReply, type AttachedHeld, type AttachedWait } from "./sessions.js";
