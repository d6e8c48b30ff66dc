// Errors: one class per protocol error code (docs/protocol.md), plus the
// client's own. All extend LdlmError; branch with instanceof or on `code`.

/** The protocol's error codes, as the service sends them. */
export type ErrorCode =
  | "BadRequest"
  | "InvalidLockName"
  | "InvalidLockSize"
  | "LockSizeMismatch"
  | "InvalidTimeout"
  | "InvalidLockKey"
  | "LockKeyInUse"
  | "LockDoesNotExist"
  | "NotLocked"
  | "LockWaitTimeout"
  | "LockWaitCancelled"
  | "OwnerGone"
  | "LimitExceeded"
  | "Unavailable"
  | "Internal";

/**
 * Base of every error of this package. `code` is the protocol error code
 * when the service (or the client, checking before sending) gave one, and
 * undefined for the client's own errors.
 */
export class LdlmError extends Error {
  readonly code: string | undefined;
  /** The lock the failed operation was about, when there is one. */
  readonly lockName: string | undefined;

  constructor(message: string, opts: { code?: string; lockName?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = opts.code;
    this.lockName = opts.lockName;
  }
}

type CodeOpts = { lockName?: string; cause?: unknown };

/** Defines the class of one protocol code. */
function codeClass<C extends ErrorCode>(code: C) {
  return class extends LdlmError {
    static readonly CODE: C = code;
    declare readonly code: C;
    constructor(message: string = code, opts: CodeOpts = {}) {
      super(message, { ...opts, code });
    }
  };
}

/** The body is not a JSON object of the documented fields. */
export class BadRequestError extends codeClass("BadRequest") {}
/** Empty, too long, not UTF-8, or a broken `~` encoding. */
export class InvalidLockNameError extends codeClass("InvalidLockName") {}
/** Size below 1 or above the service's limit. */
export class InvalidLockSizeError extends codeClass("InvalidLockSize") {}
/** The lock exists (held or waited for) with another size. */
export class LockSizeMismatchError extends codeClass("LockSizeMismatch") {}
/** A timeout is negative, too large, or missing for renew. */
export class InvalidTimeoutError extends codeClass("InvalidTimeout") {}
/** Unlock/renew: the key neither holds nor waits for the lock. */
export class InvalidLockKeyError extends codeClass("InvalidLockKey") {}
/** Lock/trylock: that key already holds or waits for this lock. */
export class LockKeyInUseError extends codeClass("LockKeyInUse") {}
/** Unlock/renew: no one holds or waits for the lock. */
export class LockDoesNotExistError extends codeClass("LockDoesNotExist") {}
/** Unlock/renew: the lock has waiters but no holders. */
export class NotLockedError extends codeClass("NotLocked") {}
/**
 * Lock: not granted within the wait timeout. `lock()` reports this as a
 * Lock whose `locked` is false, not by throwing; this is its signal's reason.
 */
export class LockWaitTimeoutError extends codeClass("LockWaitTimeout") {}
/** Lock: the wait was cancelled by an unlock with its key. */
export class LockWaitCancelledError extends codeClass("LockWaitCancelled") {}
/** The requesting connection closed while it waited. */
export class OwnerGoneError extends codeClass("OwnerGone") {}
/** A configured limit of the service is reached. */
export class LimitExceededError extends codeClass("LimitExceeded") {}
/** The service is stopping (the client retries within its budget first). */
export class UnavailableError extends codeClass("Unavailable") {}
/** A fault of the service. */
export class InternalError extends codeClass("Internal") {}

/** The error class of every protocol code. */
export const ERRORS_BY_CODE: Readonly<Record<ErrorCode, new (message?: string, opts?: CodeOpts) => LdlmError>> = {
  BadRequest: BadRequestError,
  InvalidLockName: InvalidLockNameError,
  InvalidLockSize: InvalidLockSizeError,
  LockSizeMismatch: LockSizeMismatchError,
  InvalidTimeout: InvalidTimeoutError,
  InvalidLockKey: InvalidLockKeyError,
  LockKeyInUse: LockKeyInUseError,
  LockDoesNotExist: LockDoesNotExistError,
  NotLocked: NotLockedError,
  LockWaitTimeout: LockWaitTimeoutError,
  LockWaitCancelled: LockWaitCancelledError,
  OwnerGone: OwnerGoneError,
  LimitExceeded: LimitExceededError,
  Unavailable: UnavailableError,
  Internal: InternalError,
};

/**
 * The error for the `error` object of a reply: the class of its code, or
 * a plain LdlmError carrying an unknown code (a newer service).
 */
export function errorFromReply(error: { code?: unknown; message?: unknown }, lockName?: string): LdlmError {
  const code = typeof error.code === "string" ? error.code : "";
  const message = typeof error.message === "string" && error.message !== "" ? error.message : code || "error";
  const cls = Object.hasOwn(ERRORS_BY_CODE, code) ? ERRORS_BY_CODE[code as ErrorCode] : undefined;
  if (cls === undefined) {
    return new LdlmError(message, { code: code || undefined, lockName });
  }
  return new cls(message, { lockName });
}

/** Codes that, answering unlock or renew of a grant we had, mean it is gone. */
export const LOST_CODES: ReadonlySet<string> = new Set(["InvalidLockKey", "LockDoesNotExist", "NotLocked"]);

// --- the client's own errors (code undefined) ---

/** Why a held lock was lost (LockLostError.reason). */
export type LostReason =
  /** its lock timeout passed without a renewal (as the client counted, or the service said) */
  | "expired"
  /** an operator released it (PREFIX.admin.unlock.NAME) */
  | "force-released"
  /** the service released it, believing the connection gone */
  | "released-on-disconnect"
  /** the service refused a renewal: the key holds nothing (`cause` is that error) */
  | "refused"
  /** the NATS connection it was granted over dropped or reconnected as another client */
  | "connection-lost"
  /** the service instance that granted it stopped, or another instance started */
  | "instance-gone";

/**
 * A held lock is no longer held, and not because it was unlocked. It is the
 * reason of the lock's `signal`, and `unlock()` and `renew()` of a lost lock
 * throw it (so that work done without the lock does not pass unnoticed).
 */
export class LockLostError extends LdlmError {
  readonly reason: LostReason | string;
  constructor(lockName: string, reason: LostReason | string, detail?: string, cause?: unknown) {
    super(`ldlm: lock ${JSON.stringify(lockName)} lost (${reason})${detail ? `: ${detail}` : ""}`, { lockName, cause });
    this.reason = reason;
  }
}

/** tryLock found every slot held: the reason of a not-obtained Lock's signal. */
export class NotObtainedError extends LdlmError {}

/** Nobody answered on the lock subjects within the budget: is ldlm running? */
export class NoServiceError extends LdlmError {}

/** The NATS connection is down or changed while the request was out. */
export class ConnectionLostError extends LdlmError {}

/** The client was closed. */
export class ClientClosedError extends LdlmError {}

/** No reply in time (the request may or may not have been served; the client cleaned up). */
export class RequestTimeoutError extends LdlmError {}

/** The reply was not a valid LDLM reply. */
export class UnexpectedReplyError extends LdlmError {}
