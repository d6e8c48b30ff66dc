// Client: lock requests over one NATS connection, and the service's notices.

import { randomBytes } from "node:crypto";

import { connect } from "@nats-io/transport-node";
import {
  createInbox,
  headers as newHeaders,
  type ConnectionOptions,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Status,
  type Subscription,
} from "@nats-io/nats-core";

import {
  ClientClosedError,
  ConnectionLostError,
  errorFromReply,
  LdlmError,
  LockLostError,
  LockWaitTimeoutError,
  LOST_CODES,
  NoServiceError,
  NotObtainedError,
  RequestTimeoutError,
  UnavailableError,
  UnexpectedReplyError,
  InvalidTimeoutError,
  BadRequestError,
} from "./errors.js";
import { Lock, type Epoch, type LockHost } from "./lock.js";
import { DEFAULT_PREFIX, formatOwner, lockSubject, lostSubject } from "./names.js";
import { HEADER_OWNER, HEADER_SESSION, newSessionId, parseAttachReply, type AttachReply } from "./sessions.js";

/** Options of a Client. */
export interface ClientOptions {
  /** First token of the lock subjects (the service's LDLM_SUBJECT_PREFIX). Default "ldlm". */
  prefix?: string;
  /**
   * Budget of tryLock, unlock and renew, retries included (no responders,
   * Unavailable); also how long lock() without a wait timeout keeps asking
   * while no service answers, and the bound of each try of the attach
   * after a reconnect (asked again for max(this, 60 s)). Default 5.
   */
  requestTimeoutSeconds?: number;
  /** Bound of the unlock the client sends on its own to withdraw a request given up on. Default 5. */
  cleanupTimeoutSeconds?: number;
  /**
   * The service runs with LDLM_NO_CLEAR_ON_DISCONNECT=true: a reconnect
   * does not lose the held locks (give them a lock timeout). With sessions
   * this matters only when no reply to the attach after a reconnect says
   * which locks the service kept (a service older than sessions).
   */
  keepOnDisconnect?: boolean;
  /**
   * Send the Ldlm-Session header, an id made once per client, so that the
   * client's locks belong to the client rather than to its NATS
   * connection: when the NATS server cuts the connection (shutdown,
   * restart) and the client reconnects within the service's
   * LDLM_RECONNECT_GRACE (5 s), it re-attaches and keeps its locks (same
   * key and token, still renewed) and its place in lock queues. Closing
   * the connection still frees them at once. false: every lock belongs to
   * the connection and is lost on any reconnect. Default true.
   */
  sessions?: boolean;
}

/** Options of one lock() call. */
export interface LockOptions {
  /** Slots of the lock (a semaphore); every request for the lock must agree. Default 1. */
  size?: number;
  /** Give up waiting after this long: lock() then resolves to a Lock whose `locked` is false. Default: wait. */
  waitTimeoutSeconds?: number;
  /** The service releases the lock unless renewed within this long. Default: no timeout. */
  lockTimeoutSeconds?: number;
  /** Renew a lock with a lock timeout in the background. Default true. */
  autoRenew?: boolean;
  /** Abort to stop waiting: lock() rejects with the signal's reason and leaves nothing behind. */
  signal?: AbortSignal;
}

/** Options of one tryLock() call. */
export type TryLockOptions = Omit<LockOptions, "waitTimeoutSeconds">;

const RETRY_FIRST_MS = 10;
const RETRY_MAX_MS = 1000;
// The attach after a reconnect is asked until answered for at least this
// long (docs/protocol.md, "What a client does on a reconnect"): a takeover
// of the service took up to 12 s in tests, and the service keeps a
// session's locks until the reconnect grace after it restored its state.
const ATTACH_BUDGET_MIN_MS = 60_000;
// Releases that got no answer are asked again with pauses doubling up to
// this, until answered (docs/protocol.md, "Unconfirmed releases").
const RELEASE_RETRY_MAX_MS = 5000;
// At most this many unconfirmed releases are remembered; beyond, the oldest is dropped.
const PENDING_RELEASES_MAX = 10_000;
const RELEASE_BATCH = 256; // unlocks of one round of retries out at a time
const REMEMBERED = 64; // early lost notices and gone instances kept

interface LockReply {
  locked?: boolean;
  unlocked?: boolean;
  name?: string;
  key?: string;
  token?: number;
  size?: number;
  instance?: string;
  waited_ms?: number;
  error?: { code?: string; message?: string };
}

interface LostNotice {
  name: string;
  token: number;
  reason: string;
}

/**
 * A request that ends when its connection epoch ends, or (waiting locks,
 * `instance` true) when another instance takes over. The attach after a
 * reconnect may move a waiting lock's request to the new epoch instead.
 */
interface Watch {
  epoch: Epoch;
  instance: boolean;
  key?: string; // of a lock request, which an attach reply names
  interrupt?: () => void;
}

/** Why one request ended without a reply. */
type Interrupt =
  | { kind: "aborted"; signal?: AbortSignal } // no signal: its connection or the serving instance changed
  | { kind: "timeout" }
  | { kind: "closed"; error: unknown };

class Interrupted extends Error {
  constructor(readonly why: Interrupt) {
    super(why.kind);
  }
}

const encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);
const decoder = new TextDecoder();

/**
 * Takes locks over a NATS connection. One Client serves any number of
 * concurrent lock() calls and held locks on that one connection.
 *
 * `await Client.connect({ servers })` makes a client that owns its
 * connection (closed by `close()`); `new Client(nc)` uses a connection the
 * application keeps owning.
 */
export class Client implements LockHost, AsyncDisposable {
  readonly nc: NatsConnection;
  readonly prefix: string;
  readonly #ownsConnection: boolean;
  readonly #requestMs: number;
  readonly #cleanupMs: number;
  readonly #keepOnDisconnect: boolean;
  // The session id sent in Ldlm-Session (undefined: sessions off);
  // replaced when the service says it forgot it. #attached is the epoch
  // whose attach was settled (or that needed none): until then, what
  // earlier epochs held and waited for is neither kept nor lost.
  #session: string | undefined;
  #attached: Epoch | undefined;

  // Replies come to one wildcard subscription, matched by their last token:
  // cheaper than a subscription per request, and, unlike nc.request, it lets
  // a waiting lock be abandoned at any moment and wait without a timeout.
  readonly #inbox: string;
  readonly #replySub: Subscription;
  readonly #pending = new Map<string, (m: Msg) => void>();
  // Requests that end when their connection epoch ends, or (waiting locks)
  // when another instance takes over: a set, cheaper than signal listeners.
  readonly #interruptible = new Set<Watch>();
  #seq = 0;

  readonly #instanceSub: Subscription;
  readonly #lostSubs = new Map<string, Subscription>();
  readonly #status: AsyncIterable<Status> & { stop?: () => void };
  #connUp: boolean;

  #closed = false;
  #cur: Epoch | undefined; // the connection as it is now; undefined while down
  #changed = deferred(); // resolved and replaced whenever #cur changes
  readonly #held = new Set<Lock>();
  readonly #cleanups = new Set<Promise<unknown>>();

  // Releases that got no answer (an unlock of ours ran out of budget
  // without a reply, or an attach listed a grant or wait we do not know):
  // key → lock name, oldest first. One background loop (#releaseLoop)
  // asks them again until answered; it runs while the map is not empty.
  // Everything here runs on the event loop's one thread.
  readonly #unconfirmed = new Map<string, string>();
  #releaseRunning = false;
  #releaseDone: Promise<void> = Promise.resolve();
  readonly #stop = new AbortController(); // aborted by close(): ends the background loop's waits

  // What the service's notices said.
  #instance = ""; // the instance that serves now, as last heard
  #unsure = false; // #instance came from a reply when none was known
  readonly #goneInstances: string[] = [];
  readonly #unmatched: LostNotice[] = []; // recent lost notices that matched no held lock

  /** Connects to NATS and returns a client that owns the connection. */
  static async connect(natsOptions: ConnectionOptions = {}, options: ClientOptions = {}): Promise<Client> {
    const nc = await connect(natsOptions);
    try {
      return new Client(nc, options, true);
    } catch (e) {
      await nc.close();
      throw e;
    }
  }

  /** A client over nc, which the caller keeps owning (close the client first). */
  constructor(nc: NatsConnection, options: ClientOptions = {}, ownsConnection = false) {
    if (nc.isClosed()) {
      throw new ConnectionLostError("ldlm: the NATS connection is closed");
    }
    this.nc = nc;
    this.prefix = options.prefix ?? DEFAULT_PREFIX;
    if (this.prefix === "") {
      throw new LdlmError("ldlm: the subject prefix must not be empty");
    }
    this.#ownsConnection = ownsConnection;
    this.#requestMs = seconds(options.requestTimeoutSeconds, 5) * 1000;
    this.#cleanupMs = seconds(options.cleanupTimeoutSeconds, 5) * 1000;
    this.#keepOnDisconnect = options.keepOnDisconnect ?? false;
    this.#session = options.sessions === false ? undefined : newSessionId();

    const inboxPrefix = (nc as unknown as { options?: { inboxPrefix?: string } }).options?.inboxPrefix;
    this.#inbox = createInbox(inboxPrefix);
    this.#replySub = nc.subscribe(`${this.#inbox}.*`, {
      callback: (_err, msg) => {
        const token = msg.subject.slice(this.#inbox.length + 1);
        this.#pending.get(token)?.(msg);
      },
    });
    // Subscribed before any request goes out: the server handles one
    // connection's messages in order, so no announcement made after our
    // first request is missed.
    this.#instanceSub = nc.subscribe(`${this.prefix}.instance.*`, { callback: (_e, m) => this.#onInstance(m) });
    this.#connUp = nc.info !== undefined;
    this.#status = nc.status();
    void this.#watchStatus();
    void nc.closed().then(() => this.#refresh());
    this.#refresh();
  }

  /**
   * Unlocks every lock still held, stops listening to the service, and
   * closes the connection if the client owns it. Waiting lock() calls
   * reject with ClientClosedError, after withdrawing their requests. The
   * background retries of unanswered unlocks stop: closing the connection
   * ends the session, and the service frees all of it at once.
   */
  async close(): Promise<void> {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    const held = [...this.#held];
    await Promise.allSettled(held.map((l) => l.unlock()));
    // Closing ends the session deliberately: the service frees all of it,
    // unconfirmed releases included, so their retries stop here.
    this.#stop.abort();
    this.#unconfirmed.clear();
    this.#refresh(); // ends the epoch: waiting calls give up and withdraw
    while (this.#cleanups.size > 0) {
      await Promise.allSettled([...this.#cleanups]);
    }
    await this.#releaseDone;
    this.#status.stop?.();
    for (const sub of [this.#instanceSub, this.#replySub, ...this.#lostSubs.values()]) {
      safely(() => sub.unsubscribe());
    }
    this.#lostSubs.clear();
    if (this.#ownsConnection && !this.nc.isClosed()) {
      await this.nc.close();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Acquires the lock `name` (any string), waiting while all its slots are
   * held. Resolves to a held Lock, or to a Lock whose `locked` is false when
   * `waitTimeoutSeconds` passed first.
   *
   * Aborting `signal` while waiting rejects with the signal's reason; the
   * client then sends an unlock with the request's key, which releases a
   * grant that raced with the abort or withdraws the wait: nothing is left
   * behind. If the connection drops or reconnects, or another instance of
   * the service starts, while waiting, the request is withdrawn the same way
   * and asked again for the time that is left. When no service answers (or
   * it answers Unavailable), lock() asks again with growing pauses, until
   * the wait timeout, or for requestTimeoutSeconds without one.
   *
   * With `lockTimeoutSeconds` the lock is renewed in the background unless
   * `autoRenew: false`.
   */
  lock(name: string, options: LockOptions = {}): Promise<Lock> {
    return this.#acquire("lock", name, options);
  }

  /**
   * Acquires the lock `name` only if a slot is free now. Resolves to a Lock
   * whose `locked` is false when every slot is held. Waits for the service's
   * reply at most requestTimeoutSeconds (retries included); if that passes
   * or `signal` aborts first, it withdraws the request as lock() does.
   */
  tryLock(name: string, options: TryLockOptions = {}): Promise<Lock> {
    if ((options as LockOptions).waitTimeoutSeconds !== undefined) {
      return Promise.reject(new BadRequestError("tryLock never waits: waitTimeoutSeconds is for lock()", { lockName: name }));
    }
    return this.#acquire("trylock", name, options);
  }

  /**
   * Runs fn with the lock from lock(name, options) and unlocks it when fn
   * settles. fn gets the Lock: check `lock.locked` when a wait timeout is
   * set, and pass `lock.signal` to the work. It resolves to fn's result; if
   * the lock was lost meanwhile, it rejects with the LockLostError instead.
   */
  withLock<T>(name: string, options: LockOptions, fn: (lock: Lock) => Promise<T> | T): Promise<T>;
  withLock<T>(name: string, fn: (lock: Lock) => Promise<T> | T): Promise<T>;
  async withLock<T>(name: string, a: LockOptions | ((lock: Lock) => Promise<T> | T), b?: (lock: Lock) => Promise<T> | T): Promise<T> {
    const [options, fn] = typeof a === "function" ? [{}, a] : [a, b!];
    return run(await this.lock(name, options), fn);
  }

  /** withLock with tryLock: fn gets a Lock whose `locked` is false when a slot was not free. */
  withTryLock<T>(name: string, options: TryLockOptions, fn: (lock: Lock) => Promise<T> | T): Promise<T>;
  withTryLock<T>(name: string, fn: (lock: Lock) => Promise<T> | T): Promise<T>;
  async withTryLock<T>(name: string, a: TryLockOptions | ((lock: Lock) => Promise<T> | T), b?: (lock: Lock) => Promise<T> | T): Promise<T> {
    const [options, fn] = typeof a === "function" ? [{}, a] : [a, b!];
    return run(await this.tryLock(name, options), fn);
  }

  // --- acquiring ---

  async #acquire(op: "lock" | "trylock", name: string, o: LockOptions): Promise<Lock> {
    const size = o.size;
    const wait = o.waitTimeoutSeconds ?? 0;
    const lockTimeout = o.lockTimeoutSeconds ?? 0;
    if (wait < 0 || lockTimeout < 0 || !Number.isFinite(wait) || !Number.isFinite(lockTimeout)) {
      throw new InvalidTimeoutError(`timeouts must be finite and not negative (wait ${wait}, lock ${lockTimeout})`, { lockName: name });
    }
    const signal = o.signal;
    const start = performance.now();
    // The caller's budget: the wait timeout of lock(); requestTimeout for tryLock.
    const budgetEnd = op === "trylock" ? start + this.#requestMs : wait > 0 ? start + wait * 1000 : Infinity;
    let noServiceSince = 0; // start of the current run of no-responders / Unavailable
    let lastNoService: LdlmError | undefined;
    for (let tries = 0; ; tries++) {
      if (tries > 0) {
        // The first retry (a changed connection or instance) goes at once;
        // the last one at the end of the budget.
        const pause = tries === 1 ? 0 : Math.min(RETRY_FIRST_MS * 2 ** Math.min(tries - 2, 10), RETRY_MAX_MS);
        const end = budgetEnd === Infinity && noServiceSince ? noServiceSince + this.#requestMs : budgetEnd;
        await sleep(Math.min(pause, Math.max(0, end - performance.now())), signal);
      }
      signal?.throwIfAborted(); // nothing sent by this try yet: nothing to clean up
      if (this.#closed) {
        throw new ClientClosedError(`ldlm: ${op} ${JSON.stringify(name)}: client closed`, { lockName: name });
      }
      const ep = await this.#currentEpoch(op === "lock", signal, budgetEnd, name, op);
      if (ep === undefined) {
        return notObtained(name, new LockWaitTimeoutError(`not granted within ${wait}s (the connection was down)`, { lockName: name }));
      }
      const req: Record<string, unknown> = { key: newKey() };
      if (size !== undefined) req.size = size;
      if (lockTimeout > 0) req.lock_timeout_seconds = lockTimeout;
      let localTimeout: number | undefined;
      if (op === "trylock") {
        localTimeout = Math.max(1, budgetEnd - performance.now());
      } else if (wait > 0) {
        const left = budgetEnd - performance.now();
        if (left < 1) {
          if (lastNoService) throw lastNoService;
          return notObtained(name, new LockWaitTimeoutError(`not granted within ${wait}s`, { lockName: name }));
        }
        req.wait_timeout_seconds = left / 1000;
        localTimeout = left + this.#requestMs;
      }
      const key = req.key as string;
      const subject = lockSubject(this.prefix, op, name);
      const sentAt = performance.now();
      const sent = ep.headers;
      const watch: Watch = { epoch: ep, instance: op === "lock", key };
      let msg: Msg;
      try {
        msg = await this.#call(subject, req, sent, localTimeout, signal, watch);
      } catch (e) {
        if (!(e instanceof Interrupted)) throw e;
        const why = e.why;
        this.#withdraw(name, key);
        if (signal?.aborted) throw signal.reason;
        if (this.#closed) throw new ClientClosedError(`ldlm: ${op} ${JSON.stringify(name)}: client closed`, { lockName: name });
        if (why.kind === "aborted" && op === "lock") continue; // connection or instance changed: ask again
        if (why.kind === "timeout" && op === "lock" && watch.epoch !== this.#cur) {
          // A wait kept across a cut connection that no attach took over:
          // no reply could come. As without sessions, the wait timeout is
          // up (or, before it, ask again).
          continue;
        }
        if (why.kind === "timeout") {
          if (lastNoService) throw lastNoService; // the budget ran out while asking again
          throw new RequestTimeoutError(`ldlm: ${op} ${JSON.stringify(name)}: no reply from the lock service in time (withdrawn)`, { lockName: name });
        }
        throw new ConnectionLostError(`ldlm: ${op} ${JSON.stringify(name)}: the NATS connection was lost while waiting for the reply (withdrawn)`, { lockName: name, cause: why.kind === "closed" ? why.error : undefined });
      }

      if (isNoResponders(msg)) {
        // Nobody received the request: nothing to clean up.
        noServiceSince ||= performance.now();
        lastNoService = this.#noService(subject, noServiceSince, name);
        if (this.#noServiceBudgetLeft(budgetEnd, noServiceSince)) continue;
        throw lastNoService;
      }
      const reply = decodeReply(msg, name);
      if (reply.error?.code === "Unavailable") {
        noServiceSince ||= performance.now();
        lastNoService = new UnavailableError(reply.error.message, { lockName: name });
        if (this.#noServiceBudgetLeft(budgetEnd, noServiceSince)) continue;
        throw lastNoService;
      }
      noServiceSince = 0;
      lastNoService = undefined;
      if (reply.error?.code === "LockWaitTimeout") {
        return notObtained(name, errorFromReply(reply.error, name));
      }
      if (reply.error?.code === "OwnerGone") {
        // The service released our session: later requests use a new one.
        this.#forgetSession(sent);
      }
      if (reply.error?.code === "OwnerGone" && op === "lock") {
        // The service saw our connection close while we waited: once we
        // see it too, ask again over the new one.
        this.#refresh();
        if (watch.epoch.ac.signal.aborted) {
          tries = 0;
          continue;
        }
      }
      if (reply.error) {
        throw errorFromReply(reply.error, name);
      }
      if (!reply.locked) {
        if (op === "trylock") {
          return notObtained(name, new NotObtainedError(`ldlm: trylock ${JSON.stringify(name)}: every slot is held`, { lockName: name }));
        }
        this.#withdraw(name, key);
        throw new UnexpectedReplyError(`ldlm: lock ${JSON.stringify(name)}: the service replied locked=false without an error`, { lockName: name });
      }

      // The lock timeout runs from the grant: sent + waited_ms is never
      // later than it (docs/protocol.md, "Replies").
      const waited = reply.waited_ms;
      const waitedMs = typeof waited === "number" && Number.isFinite(waited) && waited > 0 ? waited : 0;
      const lock = new Lock(this, {
        name,
        key,
        token: Number(reply.token ?? 0),
        size: Number(reply.size ?? size ?? 1),
        instance: typeof reply.instance === "string" ? reply.instance : "",
        epoch: watch.epoch, // an attach may have moved the request to a later epoch
        lockTimeoutSeconds: lockTimeout,
        autoRenew: o.autoRenew ?? true,
        sentAt,
        waitedMs,
      });
      if (lockTimeout > 0 && sentAt + waitedMs + lockTimeout * 1000 <= performance.now()) {
        // Expired on arrival by our count (a lock timeout shorter than the
        // transit): of no use. Give it back now rather than leave it held
        // for its whole timeout; the caller gets it lost, as when its
        // timeout passes while held.
        this.#release(name, key);
        if (signal?.aborted) throw signal.reason;
        lock.lose("expired", "its lock timeout passed before the grant reached the client (given back)");
        return lock;
      }
      const refused = this.#register(lock);
      if (refused === undefined) {
        if (signal?.aborted) {
          // The caller gave up as the grant came: do not hand it out.
          this.#held.delete(lock);
          this.#release(name, key);
          throw signal.reason;
        }
        lock.startWatch();
        return lock;
      }
      if (refused.reason === "expired" || refused.reason === "force-released" || refused.reason === "released-on-disconnect") {
        // Granted, and released by the service before we saw the reply:
        // the caller gets the lock as it is, lost.
        lock.loseWith(refused);
        return lock;
      }
      // Granted over a connection that is gone, by an instance that is gone,
      // or to a client closed meanwhile: release it in case, ask again.
      this.#release(name, key);
      if (this.#closed) throw new ClientClosedError(`ldlm: ${op} ${JSON.stringify(name)}: client closed`, { lockName: name });
      if (signal?.aborted) throw signal.reason;
      if (op === "lock") continue;
      throw refused;
    }
  }

  #noServiceBudgetLeft(budgetEnd: number, since: number): boolean {
    const now = performance.now();
    const end = budgetEnd === Infinity ? since + this.#requestMs : budgetEnd;
    return now < end;
  }

  #noService(subject: string, since: number, name: string): NoServiceError {
    const secs = Math.max(0, (performance.now() - since) / 1000).toFixed(1);
    return new NoServiceError(
      `ldlm: no lock service answered on ${subject} for ${secs}s: is ldlm running, with subject prefix ${JSON.stringify(this.prefix)}?`,
      { lockName: name },
    );
  }

  // --- releasing and renewing (LockHost) ---

  /** @internal */
  async unlockHeld(lock: Lock): Promise<void> {
    if (this.nc.isClosed()) {
      return; // the service releases what a closed connection held
    }
    let reply: LockReply;
    try {
      reply = await this.#simple("unlock", lock.name, { key: lock.key }, this.#requestMs);
    } catch (e) {
      // No answer: the grant may still be held. The caller learns that the
      // release is not confirmed; the client keeps asking in the background.
      if (unanswered(e)) this.#retryRelease(lock.name, lock.key);
      throw e;
    }
    if (reply.error?.code === "Unavailable") this.#retryRelease(lock.name, lock.key);
    // InvalidLockKey, LockDoesNotExist or NotLocked here say the grant was
    // gone before the unlock (the work under it may not have been
    // protected): the caller gets that error (wire vectors, "replies").
    if (reply.error) {
      throw errorFromReply(reply.error, lock.name);
    }
  }

  /** @internal */
  async renewHeld(lock: Lock, secondsValue: number): Promise<number> {
    if (!(secondsValue > 0) || !Number.isFinite(secondsValue)) {
      throw new InvalidTimeoutError(`renew needs a lock timeout above 0, got ${secondsValue}`, { lockName: lock.name });
    }
    const sentAt = performance.now();
    const reply = await this.#simple("renew", lock.name, { key: lock.key, lock_timeout_seconds: secondsValue }, this.#requestMs);
    if (reply.error && LOST_CODES.has(reply.error.code ?? "")) {
      const cause = errorFromReply(reply.error, lock.name);
      lock.lose("refused", "the service refused the renewal", cause);
      throw lock.lostError ?? cause;
    }
    if (reply.error) {
      throw errorFromReply(reply.error, lock.name);
    }
    if (!reply.locked) {
      throw new UnexpectedReplyError(`ldlm: renew ${JSON.stringify(lock.name)}: the service replied locked=false without an error`, { lockName: lock.name });
    }
    return sentAt;
  }

  /** @internal */
  forget(lock: Lock): void {
    this.#held.delete(lock);
  }

  /**
   * One unlock or renew, retried on no responders and Unavailable within
   * budgetMs. Throws transport errors; the service's error is in the reply.
   */
  async #simple(op: "unlock" | "renew", name: string, body: Record<string, unknown>, budgetMs: number): Promise<LockReply> {
    const subject = lockSubject(this.prefix, op, name);
    const end = performance.now() + budgetMs;
    let since = 0;
    let unavailable: LockReply | undefined; // the last Unavailable answer
    for (let tries = 0; ; tries++) {
      if (tries > 0) {
        await sleep(Math.min(RETRY_FIRST_MS * 2 ** Math.min(tries - 1, 10), RETRY_MAX_MS, Math.max(0, end - performance.now())));
      }
      const left = end - performance.now();
      let msg: Msg;
      try {
        msg = await this.#call(subject, body, this.#cur?.headers, Math.max(1, left));
      } catch (e) {
        if (e instanceof Interrupted && e.why.kind === "timeout") {
          if (unavailable) return unavailable; // the budget ran out while asking again
          if (since) throw this.#noService(subject, since, name);
          throw new RequestTimeoutError(`ldlm: ${op} ${JSON.stringify(name)}: no reply from the lock service in ${budgetMs / 1000}s`, { lockName: name });
        }
        if (e instanceof Interrupted && e.why.kind === "closed") {
          throw new ConnectionLostError(`ldlm: ${op} ${JSON.stringify(name)}: the NATS connection is closed`, { lockName: name, cause: e.why.error });
        }
        throw e;
      }
      if (isNoResponders(msg)) {
        since ||= performance.now();
        if (performance.now() < end) continue;
        throw this.#noService(subject, since, name);
      }
      const reply = decodeReply(msg, name);
      if (reply.error?.code === "Unavailable" && performance.now() < end) {
        unavailable = reply;
        continue;
      }
      return reply;
    }
  }

  /**
   * Sends unlock with the key of a request given up on: it releases a
   * grant that raced in, or cancels the queued wait (docs/protocol.md,
   * "Waiting and giving up"). The service handles a connection's requests
   * in order, so the unlock is read after the lock request. Runs in the
   * background, bounded by the cleanup timeout; close() waits for it. If
   * no answer came within it, the release is asked again later
   * (#retryRelease).
   */
  #withdraw(name: string, key: string): void {
    if (this.nc.isClosed()) {
      return; // the service releases what a closed connection held or waited for
    }
    const p = this.#simple("unlock", name, { key }, this.#cleanupMs).then(
      (reply) => {
        if (reply.error?.code === "Unavailable") this.#retryRelease(name, key);
      },
      (e: unknown) => {
        if (unanswered(e)) this.#retryRelease(name, key);
      },
    );
    this.#cleanups.add(p);
    void p.finally(() => this.#cleanups.delete(p));
  }

  /** Unlocks a grant whose reply we received but will not hand out. */
  #release(name: string, key: string): void {
    this.#withdraw(name, key);
  }

  // --- releases that got no answer (docs/protocol.md, "Unconfirmed releases") ---

  /**
   * Remembers an unlock of key that got no answer, to be asked again in
   * the background until the service answers it (or the client closes):
   * otherwise the grant would stay with the session for as long as the
   * client lives. At most PENDING_RELEASES_MAX are kept, the oldest
   * dropped.
   */
  #retryRelease(name: string, key: string): void {
    if (this.#closed || this.nc.isClosed()) return; // the service frees what a closed connection had
    this.#unconfirmed.delete(key); // re-added as the newest
    if (this.#unconfirmed.size >= PENDING_RELEASES_MAX) {
      const [oldKey, oldName] = this.#unconfirmed.entries().next().value!;
      this.#unconfirmed.delete(oldKey);
      console.warn(
        `ldlm: more than ${PENDING_RELEASES_MAX} unlocks are unanswered: no longer retrying the release of ${JSON.stringify(oldName)}; ` +
          "it stays held until its lock timeout, an operator's release, or the client closes",
      );
    }
    this.#unconfirmed.set(key, name);
    if (!this.#releaseRunning) {
      this.#releaseRunning = true;
      this.#releaseDone = this.#releaseLoop();
    }
  }

  /**
   * The one background task of #unconfirmed: sends every remembered
   * unlock, forgets those answered (any reply but Unavailable), and waits
   * 10 ms doubling to 5 s before the next round. It waits for a
   * connection while there is none, and ends when nothing is left, the
   * connection closed for good, or close() stopped it.
   */
  async #releaseLoop(): Promise<void> {
    let pause = RETRY_FIRST_MS;
    while (this.#unconfirmed.size > 0 && !this.#closed) {
      if (this.nc.isClosed()) {
        this.#unconfirmed.clear(); // the service frees what a closed connection had
        break;
      }
      if (this.#cur === undefined) {
        await until(this.#changed.promise, Infinity, this.#stop.signal);
        continue;
      }
      const round = [...this.#unconfirmed];
      for (let i = 0; i < round.length && !this.#closed; i += RELEASE_BATCH) {
        await Promise.all(round.slice(i, i + RELEASE_BATCH).map(([key, name]) => this.#releaseOnce(name, key)));
      }
      if (this.#unconfirmed.size === 0) break;
      await sleep(pause, this.#stop.signal);
      pause = Math.min(pause * 2, RELEASE_RETRY_MAX_MS);
    }
    this.#releaseRunning = false;
  }

  /** One try of an unconfirmed release, bounded by the request timeout. */
  async #releaseOnce(name: string, key: string): Promise<void> {
    let msg: Msg;
    try {
      msg = await this.#call(lockSubject(this.prefix, "unlock", name), { key }, this.#cur?.headers, this.#requestMs, this.#stop.signal);
    } catch {
      return; // no reply in time, closing, or the connection closed: the next round (if any) asks again
    }
    if (isNoResponders(msg)) return;
    const reply = parseJSON(msg.data) as LockReply | undefined;
    if (reply?.error?.code === "Unavailable") return;
    // Any other reply ends it: unlocked, or the key holds nothing (anymore).
    this.#unconfirmed.delete(key);
  }

  /** @internal for tests: how many releases wait for an answer. */
  get unconfirmedReleases(): number {
    return this.#unconfirmed.size;
  }

  // --- requests ---

  /**
   * Publishes one request and resolves with its reply. It rejects with
   * Interrupted when timeoutMs passes, when one of the signals aborts, or
   * when the connection is closed; a reply after that is dropped.
   */
  #call(
    subject: string,
    body: Record<string, unknown> | undefined,
    headers: MsgHdrs | undefined,
    timeoutMs: number | undefined,
    signal?: AbortSignal,
    watch?: Watch,
  ): Promise<Msg> {
    return new Promise<Msg>((resolve, reject) => {
      if (signal?.aborted || watch?.epoch.ac.signal.aborted) {
        reject(new Interrupted({ kind: "aborted", signal: signal?.aborted ? signal : undefined }));
        return;
      }
      const token = (++this.#seq).toString(36);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () => {
        done();
        reject(new Interrupted({ kind: "aborted", signal }));
      };
      // The entry is watch itself, so that the caller sees the epoch an
      // attach moved it to.
      const entry = watch;
      if (entry) {
        entry.interrupt = () => {
          done();
          reject(new Interrupted({ kind: "aborted" }));
        };
      }
      const done = () => {
        this.#pending.delete(token);
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        if (entry) this.#interruptible.delete(entry);
      };
      this.#pending.set(token, (m) => {
        done();
        resolve(m);
      });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          done();
          reject(new Interrupted({ kind: "timeout" }));
        }, timeoutMs);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
      if (entry) this.#interruptible.add(entry);
      try {
        const payload = body === undefined ? EMPTY : encoder.encode(JSON.stringify(body));
        this.nc.publish(subject, payload, { reply: `${this.#inbox}.${token}`, headers });
      } catch (e) {
        done();
        reject(new Interrupted({ kind: "closed", error: e }));
      }
    });
  }

  // --- the connection ---

  async #watchStatus(): Promise<void> {
    try {
      for await (const s of this.#status) {
        if (s.type === "disconnect") this.#connUp = false;
        if (s.type === "reconnect") this.#connUp = true;
        this.#refresh();
      }
    } catch {
      // the iterator ends with the connection
    }
  }

  /** The owner identity of the connection as it is now; undefined while down. */
  #connState(): { up: boolean; owner: string | undefined } {
    const info = this.nc.info;
    if (this.nc.isClosed() || !this.#connUp || info === undefined) {
      return { up: false, owner: undefined };
    }
    if (info.client_id === undefined || info.client_id === 0) {
      return { up: true, owner: undefined }; // a server without client ids: send no owner header
    }
    return { up: true, owner: formatOwner(info.server_id, info.client_id) };
  }

  /**
   * Compares the connection as it is now with the current epoch. When it
   * dropped or reconnected as another client, the epoch ends: its waits are
   * aborted (and asked again), and its locks are lost, since the service
   * releases the locks of a connection that goes away (unless
   * keepOnDisconnect). The lost-notice subscription follows the owner.
   */
  #refresh(): void {
    const { up, owner } = this.#connState();
    if (up && !this.#closed && owner !== undefined) {
      this.#listenLost(owner); // before any request names owner
    }
    let lost: Lock[] = [];
    const cur = this.#cur;
    if (cur !== undefined && (!up || owner !== cur.owner || this.#closed)) {
      // With a session, the service keeps the epoch's grants and waits for
      // a while: its waiting lock requests go on waiting for their reply
      // (on the same inbox, which nats.js keeps across a reconnect), and
      // the next epoch's attach decides about them and the held locks.
      const survives = cur.session !== undefined && !this.#closed && !this.nc.isClosed();
      cur.ac.abort(new ConnectionLostError("ldlm: the NATS connection changed"));
      for (const e of [...this.#interruptible]) {
        if (e.epoch === cur && !(survives && e.instance)) e.interrupt?.();
      }
      if (!survives && !this.#keepOnDisconnect && !this.#closed) {
        lost = [...this.#held].filter((l) => l.epoch === cur);
      }
      this.#cur = undefined;
      this.#changed.resolve();
      this.#changed = deferred();
    }
    if (this.#closed) {
      for (const e of [...this.#interruptible]) e.interrupt?.(); // also those an attach was to judge
    }
    if (this.#cur === undefined && this.nc.isClosed()) {
      // No reconnect will come: what the session kept for an attach is lost.
      this.#settle(undefined, undefined);
    }
    if (this.#cur === undefined && up && !this.#closed) {
      const session = owner !== undefined ? this.#session : undefined;
      const ep: Epoch = { owner, ac: new AbortController(), session, headers: epochHeaders(owner, session) };
      const first = this.#attached === undefined;
      this.#cur = ep;
      this.#changed.resolve();
      this.#changed = deferred();
      if (first || session === undefined) {
        this.#settle(ep, undefined); // nothing to attach, or no session: as before
      } else {
        void this.#reattach(ep);
      }
    }
    for (const l of lost) {
      l.lose("connection-lost", "the NATS connection it was granted over dropped or reconnected");
    }
    this.#dropLostSubs();
  }

  // --- sessions (docs/protocol.md, "Sessions") ---

  /**
   * Sends the session's attach over ep, a connection that replaced
   * another, and settles with its reply what earlier epochs held and
   * waited for.
   */
  async #reattach(ep: Epoch): Promise<void> {
    let reply: AttachReply | undefined;
    try {
      reply = await this.#askAttach(ep);
    } catch {
      reply = undefined; // an unreadable reply: as if none came
    }
    this.#settle(ep, reply);
  }

  /**
   * Sends PREFIX.attach over ep until it is answered: each try bounded by
   * the request timeout, asked again while no service answers (no
   * responders, Unavailable, or a try that timed out: a restarting or
   * taking-over service) with pauses doubling from 10 ms to 1 s, for the
   * attach budget, max(request timeout, 60 s), from the reconnect.
   * Meanwhile the locks stay held and waits keep waiting. Undefined when no
   * usable answer came (then as without sessions): the budget passed (a
   * service older than sessions does not answer attach), an error other
   * than Unavailable, or ep ended (another reconnect, close()).
   */
  async #askAttach(ep: Epoch): Promise<AttachReply | undefined> {
    const subject = `${this.prefix}.attach`;
    const end = performance.now() + Math.max(this.#requestMs, ATTACH_BUDGET_MIN_MS);
    for (let tries = 0; ; tries++) {
      if (tries > 0) {
        const pause = Math.min(RETRY_FIRST_MS * 2 ** Math.min(tries - 1, 10), RETRY_MAX_MS);
        if (performance.now() + pause >= end) return undefined;
        await sleep(pause, ep.ac.signal);
      }
      if (this.#closed || this.#cur !== ep) return undefined; // another connection attaches for itself
      const left = end - performance.now();
      if (left <= 0) return undefined;
      let msg: Msg;
      try {
        // ep's signal aborts when ep ends (another reconnect, close()): the
        // attach is then moot, and leaves no timer behind.
        msg = await this.#call(subject, undefined, ep.headers, Math.max(1, Math.min(left, this.#requestMs)), ep.ac.signal);
      } catch (e) {
        if (e instanceof Interrupted && e.why.kind === "timeout") continue; // unanswered: ask again
        return undefined; // ep ended, or the connection closed
      }
      if (isNoResponders(msg)) continue;
      const reply = parseAttachReply(msg.data); // an unreadable reply throws: as if none came
      if (reply.error?.code === "Unavailable") continue;
      return reply.error === undefined && reply.attached ? reply : undefined;
    }
  }

  /**
   * Decides, for the current epoch ep, about the locks and lock requests
   * of earlier epochs, from the attach reply (undefined: none came, or none
   * was sent; then as without sessions). A listed lock stays held and a
   * listed wait keeps waiting for its reply, both now of ep; the others
   * are lost, or interrupted to be asked again. With ep undefined (the
   * connection closed for good) everything of earlier epochs ends.
   */
  #settle(ep: Epoch | undefined, reply: AttachReply | undefined): void {
    if (this.#closed || this.#cur !== ep) return; // a later connection settles for itself
    if (ep !== undefined) this.#attached = ep;
    const held = new Map<string, string>(); // key → name
    const waiting = new Set<string>();
    for (const h of reply?.held ?? []) {
      held.set(h.key, h.name);
      waiting.add(h.key); // a wait granted meanwhile: its reply is on the way
    }
    for (const w of reply?.waiting ?? []) waiting.add(w.key);
    const released: Lock[] = [];
    const lost: Lock[] = [];
    for (const l of this.#held) {
      if (l.epoch === ep) continue;
      if (reply !== undefined && held.get(l.key) === l.name) {
        l.epoch = ep;
      } else if (reply !== undefined) {
        released.push(l);
      } else if (!this.#keepOnDisconnect) {
        lost.push(l);
      }
    }
    for (const e of [...this.#interruptible]) {
      if (e.epoch === ep) continue;
      if (reply !== undefined && ep !== undefined && e.instance && e.key !== undefined && waiting.has(e.key)) {
        e.epoch = ep;
      } else {
        e.interrupt?.();
      }
    }
    if (reply !== undefined && !reply.resumed) this.#newSession();
    if (reply !== undefined && ep !== undefined && reply.held.length + reply.waiting.length > 0) {
      // Decided once the replies delivered with this one are handled (a
      // grant's reply may be on its way to its lock() call, which then
      // holds or gives it back itself).
      setImmediate(() => this.#releaseUnknown(reply));
    }
    for (const l of released) {
      l.lose("connection-lost", "released while disconnected: the lock service released it while the client was reconnecting");
    }
    for (const l of lost) {
      l.lose("connection-lost", "the NATS connection it was granted over dropped or reconnected");
    }
    this.#dropLostSubs();
  }

  /**
   * Releases in the background (#retryRelease) what the attach reply
   * lists and the client does not know: a grant no live Lock has, a wait
   * no lock() call waits for (e.g. an unlock of ours that the cut
   * connection lost, or a request given up on). Left alone, the session
   * would keep them for as long as the client lives.
   */
  #releaseUnknown(reply: AttachReply): void {
    if (this.#closed) return;
    const known = new Set<string>();
    for (const l of this.#held) known.add(l.key);
    for (const e of this.#interruptible) if (e.key !== undefined) known.add(e.key);
    for (const x of [...reply.held, ...reply.waiting]) {
      if (!known.has(x.key)) this.#retryRelease(x.name, x.key);
    }
  }

  /**
   * Whether a grant made over ep, which is not the current epoch, may
   * still be kept: ep carried the session, and the current connection's
   * attach has not settled yet (it will judge the grant).
   */
  #unsettled(ep: Epoch | undefined): boolean {
    return ep?.session !== undefined && (this.#cur === undefined || this.#attached !== this.#cur);
  }

  /** Replaces the session id: the service forgot the old one (and refuses it for a while). */
  #newSession(): void {
    if (this.#session === undefined) return;
    this.#session = newSessionId();
    const cur = this.#cur;
    if (cur !== undefined && cur.owner !== undefined) {
      cur.session = this.#session;
      cur.headers = epochHeaders(cur.owner, cur.session);
    }
  }

  /**
   * An OwnerGone reply to a request sent with headers: if they carried the
   * current session, the service released it; later requests use a new one.
   */
  #forgetSession(headers: MsgHdrs | undefined): void {
    if (this.#session !== undefined && headers?.get(HEADER_SESSION) === this.#session) {
      this.#newSession();
    }
  }

  /** @internal for tests: the session id sent now (undefined: sessions off). */
  get sessionId(): string | undefined {
    return this.#session;
  }

  /** @internal for tests: whether the current connection's attach (or its first connect) is settled. */
  get attachSettled(): boolean {
    return this.#cur !== undefined && this.#attached === this.#cur;
  }

  /** The current epoch; lock() waits for the connection to come back, within its budget. */
  async #currentEpoch(wait: boolean, signal: AbortSignal | undefined, budgetEnd: number, name: string, op: string): Promise<Epoch | undefined> {
    for (;;) {
      if (this.#closed) throw new ClientClosedError(`ldlm: ${op} ${JSON.stringify(name)}: client closed`, { lockName: name });
      if (this.#cur !== undefined) return this.#cur;
      if (this.nc.isClosed()) throw new ConnectionLostError(`ldlm: ${op} ${JSON.stringify(name)}: the NATS connection is closed`, { lockName: name });
      if (!wait) throw new ConnectionLostError(`ldlm: ${op} ${JSON.stringify(name)}: not connected`, { lockName: name });
      const left = budgetEnd - performance.now();
      if (left <= 0) return undefined;
      await until(this.#changed.promise, left, signal);
      signal?.throwIfAborted();
    }
  }

  // --- the service's notices ---

  #listenLost(owner: string): void {
    if (this.#lostSubs.has(owner)) return;
    try {
      const sub = this.nc.subscribe(lostSubject(this.prefix, owner), { callback: (_e, m) => this.#onLost(m) });
      this.#lostSubs.set(owner, sub);
    } catch {
      // Only a closed connection fails here, and it holds no lock to hear about.
    }
  }

  /**
   * Ends the lost-notice subscriptions no longer needed: those of owners
   * that are not the current connection and hold no lock (with
   * keepOnDisconnect, locks taken before a reconnect keep their old owner).
   */
  #dropLostSubs(): void {
    const needed = new Set<string | undefined>([this.#cur?.owner]);
    for (const l of this.#held) needed.add(l.epoch?.owner);
    for (const [owner, sub] of this.#lostSubs) {
      if (!needed.has(owner)) {
        safely(() => sub.unsubscribe());
        this.#lostSubs.delete(owner);
      }
    }
  }

  /**
   * Ends the held lock a lost notice names (by name and fencing token). The
   * notice can come before the grant's reply is handled: one that matches no
   * held lock is kept for #register.
   */
  #onLost(msg: Msg): void {
    const n = parseJSON(msg.data) as Partial<LostNotice> | undefined;
    if (!n || typeof n.name !== "string" || n.name === "" || typeof n.token !== "number" || n.token === 0) {
      return;
    }
    const notice: LostNotice = { name: n.name, token: n.token, reason: String(n.reason ?? "") };
    for (const l of this.#held) {
      if (l.name === notice.name && l.token === notice.token) {
        l.loseWith(lostFromNotice(l.name, notice.reason));
        return;
      }
    }
    pushBounded(this.#unmatched, notice);
  }

  #onInstance(msg: Msg): void {
    const n = parseJSON(msg.data) as { instance?: unknown; event?: unknown } | undefined;
    if (!n || typeof n.instance !== "string" || n.instance === "") return;
    let lost: Lock[] = [];
    let detail = "";
    if (n.event === "started") {
      lost = this.#instanceServes(n.instance, true);
      detail = `another instance (${n.instance}) started`;
    } else if (n.event === "stopped") {
      lost = this.#instanceStopped(n.instance);
      detail = `it (${n.instance}) stopped`;
    }
    for (const l of lost) l.lose("instance-gone", detail);
  }

  /**
   * Records that instance id serves now (it announced its start, or a reply
   * came from it). Only one instance serves a prefix at a time, so the
   * grants of any other are gone, and so are waits parked there: the
   * instance signal aborts so waiting lock() calls ask again. Returns the
   * held locks that are lost.
   */
  #instanceServes(id: string, announced: boolean): Lock[] {
    if (this.#goneInstances.includes(id)) return []; // late news of a gone instance
    if (id === this.#instance) {
      if (announced && this.#unsure) {
        // Learned from a reply when none was known, so waits were not woken
        // then; its start says it replaced another, where a wait may be parked.
        this.#unsure = false;
        this.#wakeWaits();
      }
      return [];
    }
    if (this.#instance !== "" || announced) this.#wakeWaits();
    if (this.#instance !== "") pushBounded(this.#goneInstances, this.#instance);
    this.#unsure = this.#instance === "" && !announced;
    this.#instance = id;
    return [...this.#held].filter((l) => l.instance !== "" && l.instance !== id);
  }

  #instanceStopped(id: string): Lock[] {
    if (!this.#goneInstances.includes(id)) pushBounded(this.#goneInstances, id);
    if (this.#instance === id) this.#instance = "";
    return [...this.#held].filter((l) => l.instance === id);
  }

  #wakeWaits(): void {
    for (const e of [...this.#interruptible]) {
      if (e.instance) e.interrupt?.();
    }
  }

  /**
   * Records a fresh grant as held, or returns why not: the client closed,
   * the connection it came over is gone, its instance is gone, or a lost
   * notice for it came first.
   */
  #register(lock: Lock): LockLostError | undefined {
    const { up, owner } = this.#connState();
    if (this.#closed) return new LockLostError(lock.name, "connection-lost", "the client was closed");
    if (!this.#keepOnDisconnect && (this.#cur !== lock.epoch || !up || owner !== lock.epoch?.owner) && !this.#unsettled(lock.epoch)) {
      return new LockLostError(lock.name, "connection-lost", "the connection changed while the reply came");
    }
    if (lock.instance !== "" && this.#goneInstances.includes(lock.instance)) {
      return new LockLostError(lock.name, "instance-gone", `the instance ${lock.instance} that granted it is gone`);
    }
    const early = this.#unmatched.find((n) => n.name === lock.name && n.token === lock.token);
    if (early !== undefined) return lostFromNotice(lock.name, early.reason);
    if (lock.instance !== "") {
      for (const l of this.#instanceServes(lock.instance, false)) {
        l.lose("instance-gone", `another instance (${lock.instance}) grants locks now`);
      }
    }
    this.#held.add(lock);
    return undefined;
  }
}

// --- helpers ---

/** The headers of an epoch's requests: built once per connection (and session). */
function epochHeaders(owner: string | undefined, session: string | undefined): MsgHdrs | undefined {
  if (owner === undefined) return undefined; // a session needs an owner: the service refuses it alone
  const h = newHeaders();
  h.set(HEADER_OWNER, owner);
  if (session !== undefined) h.set(HEADER_SESSION, session);
  return h;
}

async function run<T>(lock: Lock, fn: (lock: Lock) => Promise<T> | T): Promise<T> {
  let result: T;
  try {
    result = await fn(lock);
  } catch (e) {
    await lock.unlock().catch(() => undefined);
    throw e;
  }
  await lock.unlock();
  return result;
}

function notObtained(name: string, reason: Error): Lock {
  return new Lock(undefined, { name, reason });
}

function lostFromNotice(name: string, reason: string): LockLostError {
  switch (reason) {
    case "expired":
      return new LockLostError(name, "expired", "the service says its lock timeout passed");
    case "force-released":
      return new LockLostError(name, "force-released", "an operator released it");
    case "released-on-disconnect":
      return new LockLostError(name, "released-on-disconnect", "the service saw the connection close and released it");
  }
  return new LockLostError(name, reason || "unknown", "the service released it");
}

let keyPool = Buffer.alloc(0);
let keyPos = 0;

/**
 * A fresh random key of 128 bits, in hex: the client chooses every key, to
 * be able to withdraw. Drawn from a pool of CSPRNG bytes, refilled 4 KiB at
 * a time, since a syscall per key shows in the lock cycle's cost.
 */
function newKey(): string {
  if (keyPos + 16 > keyPool.length) {
    keyPool = randomBytes(4096);
    keyPos = 0;
  }
  keyPos += 16;
  return keyPool.toString("hex", keyPos - 16, keyPos);
}

/** Whether an unlock's error says that no answer came (the release is not confirmed). */
function unanswered(e: unknown): boolean {
  return e instanceof NoServiceError || e instanceof RequestTimeoutError || e instanceof UnavailableError;
}

/** The no-responders status message nats sends in place of a reply. */
function isNoResponders(msg: Msg): boolean {
  return msg.headers?.code === 503 && msg.data.length === 0;
}

function decodeReply(msg: Msg, name: string): LockReply {
  const v = parseJSON(msg.data);
  if (v === undefined || typeof v !== "object" || v === null || Array.isArray(v)) {
    const text = decoder.decode(msg.data).slice(0, 80);
    throw new UnexpectedReplyError(`ldlm: unreadable reply ${JSON.stringify(text)}`, { lockName: name });
  }
  return v as LockReply;
}

function parseJSON(data: Uint8Array): unknown {
  try {
    return JSON.parse(decoder.decode(data));
  } catch {
    return undefined;
  }
}

function seconds(v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!(v > 0) || !Number.isFinite(v)) throw new LdlmError(`ldlm: a timeout option must be a positive number of seconds, got ${v}`);
  return v;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (ms <= 0 || signal?.aborted) {
      resolve();
      return;
    }
    const onAbort = () => {
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.min(ms, 2 ** 31 - 1));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Resolves when p settles, ms pass, or signal aborts, whichever is first; leaves no timer behind. */
function until(p: Promise<void>, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    let t: ReturnType<typeof setTimeout> | undefined;
    const finish = () => {
      if (t !== undefined) clearTimeout(t);
      signal?.removeEventListener("abort", finish);
      resolve();
    };
    if (signal?.aborted) return finish();
    if (ms !== Infinity) t = setTimeout(finish, Math.min(ms, 2 ** 31 - 1));
    signal?.addEventListener("abort", finish, { once: true });
    void p.then(finish);
  });
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

function pushBounded<T>(list: T[], v: T): void {
  if (list.length >= REMEMBERED) list.shift();
  list.push(v);
}

function safely(f: () => void): void {
  try {
    f();
  } catch {
    // closed connection: nothing left to undo
  }
}
