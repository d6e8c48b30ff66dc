// Lock: one grant (or the result of not getting one), with its renewals.

import type { MsgHdrs } from "@nats-io/nats-core";

import { LdlmError, LockLostError, type LostReason } from "./errors.js";

/** What a Lock needs from its Client (kept narrow so the two stay apart). */
export interface LockHost {
  /** Sends unlock with key; throws LockLostError when the service says the key holds nothing. */
  unlockHeld(lock: Lock): Promise<void>;
  /**
   * Sends renew; resolves with the time the request was sent (ms,
   * performance.now) or throws (LockLostError when the grant is gone).
   */
  renewHeld(lock: Lock, seconds: number): Promise<number>;
  /** Forgets a lock that ended. */
  forget(lock: Lock): void;
}

/** The connection a lock was granted over (its owner identity at the service). */
export interface Epoch {
  readonly owner: string | undefined;
  /** The session its requests carry (undefined: none); replaced when the service forgot it. */
  session: string | undefined;
  /**
   * Ldlm-Owner and, with a session, Ldlm-Session: built once and sent as
   * they are by every request of the epoch; replaced, never modified.
   */
  headers: MsgHdrs | undefined;
  /** Aborted when the connection drops or reconnects as another client. */
  readonly ac: AbortController;
}

/** What the client knows of a grant when it makes its Lock. */
export interface Grant {
  name: string;
  key: string;
  token: number;
  size: number;
  instance: string;
  epoch: Epoch;
  lockTimeoutSeconds: number;
  autoRenew: boolean;
  sentAt: number;
  /** How long the request waited in the service's queue (the reply's waited_ms; 0 when absent). */
  waitedMs: number;
}

type State = "held" | "unlocked" | "lost" | "not-obtained";

/**
 * The result of `lock()` or `tryLock()`. `locked` is true while the lock is
 * held: false when it was not obtained, after `unlock()`, and once lost.
 *
 * `signal` aborts when a held lock is lost (its reason is a LockLostError)
 * and is already aborted when the lock was not obtained; pass it to the work
 * the lock protects (`fetch(url, { signal: lock.signal })`).
 *
 * `await using lock = await client.lock(name)` unlocks at the end of the
 * block.
 */
export class Lock implements AsyncDisposable {
  /** The lock's name. */
  readonly name: string;
  /** The secret that unlocks and renews this grant; "" when not obtained. */
  readonly key: string;
  /**
   * The fencing token: every later grant of any lock gets a larger one.
   * Hand it to the resource you protect; 0 when not obtained.
   */
  readonly token: number;
  /** The number of slots of the lock, as the service reported it; 0 when not obtained. */
  readonly size: number;
  /** The id of the service instance that made the grant. */
  readonly instance: string;

  /**
   * @internal the connection it was granted over, or the later one whose
   * attach said the session still holds it
   */
  epoch: Epoch | undefined;

  readonly #host: LockHost | undefined;
  #ac: AbortController | undefined; // made when signal is first read, or at the loss
  readonly #autoRenew: boolean;
  #state: State;
  #lost: LockLostError | undefined;
  #timeoutSeconds: number;
  #expiresAt = 0; // performance.now() ms; 0: no lock timeout
  #timer: ReturnType<typeof setTimeout> | undefined;
  #retryAt = 0;
  #renewing: Promise<unknown> = Promise.resolve(); // renewals run one at a time

  /** @internal use Client.lock / Client.tryLock */
  constructor(host: LockHost | undefined, grant: Grant | { name: string; reason: Error }) {
    if ("reason" in grant) {
      this.name = grant.name;
      this.key = "";
      this.token = 0;
      this.size = 0;
      this.instance = "";
      this.epoch = undefined;
      this.#host = undefined;
      this.#autoRenew = false;
      this.#timeoutSeconds = 0;
      this.#state = "not-obtained";
      this.#ac = new AbortController();
      this.#ac.abort(grant.reason);
      return;
    }
    this.#host = host;
    this.name = grant.name;
    this.key = grant.key;
    this.token = grant.token;
    this.size = grant.size;
    this.instance = grant.instance;
    this.epoch = grant.epoch;
    this.#autoRenew = grant.autoRenew;
    this.#timeoutSeconds = grant.lockTimeoutSeconds;
    this.#state = "held";
    if (grant.lockTimeoutSeconds > 0) {
      // Counted from the grant as seen from here: the time the request was
      // sent plus how long the service says it waited in the queue. The
      // service counts from its grant, no earlier, so this errs early
      // whatever the clocks say, yet a grant after a long wait keeps
      // (about) its whole timeout.
      this.#expiresAt = grant.sentAt + grant.waitedMs + grant.lockTimeoutSeconds * 1000;
    }
  }

  /** True while the lock is held. */
  get locked(): boolean {
    return this.#state === "held";
  }

  /** Aborted when the held lock is lost (reason: LockLostError); aborted from the start when not obtained. */
  get signal(): AbortSignal {
    this.#ac ??= new AbortController();
    if (this.#state === "lost" && !this.#ac.signal.aborted) {
      this.#ac.abort(this.#lost);
    }
    return this.#ac.signal;
  }

  /** Why the lock was lost, once it was; else undefined. */
  get lostError(): LockLostError | undefined {
    return this.#lost;
  }

  /**
   * When the service will release the lock unless renewed, as estimated
   * here (a little early, never late); undefined without a lock timeout.
   */
  get expiresAt(): Date | undefined {
    if (this.#expiresAt === 0) {
      return undefined;
    }
    return new Date(Date.now() + (this.#expiresAt - performance.now()));
  }

  /** The lock timeout in seconds (0: none), as last set by lock() or renew(). */
  get lockTimeoutSeconds(): number {
    return this.#timeoutSeconds;
  }

  /**
   * Releases the lock. It does nothing when the lock was not obtained or is
   * already unlocked. It throws LockLostError when the lock was lost (the
   * work done under it may not have been protected), and a transport error
   * (NoServiceError, RequestTimeoutError, UnavailableError) when the unlock
   * got no answer: the release is not confirmed. The lock is unlocked here
   * all the same, and the client keeps sending the unlock in the
   * background until the service answers it, or the client closes.
   */
  async unlock(): Promise<void> {
    if (this.#state === "lost") {
      throw this.#lost;
    }
    if (this.#state !== "held") {
      return;
    }
    this.#state = "unlocked";
    this.#stopWatch();
    this.#host!.forget(this);
    await this.#host!.unlockHeld(this);
  }

  /**
   * Sets the lock timeout to `seconds` from now; later automatic renewals
   * use it too. When the service says the grant is gone, the lock is lost
   * and renew throws LockLostError; other failures leave the lock as it was.
   */
  async renew(seconds: number): Promise<void> {
    if (this.#state === "lost") {
      throw this.#lost;
    }
    if (this.#state !== "held") {
      throw new LdlmError(`ldlm: renew ${JSON.stringify(this.name)}: the lock is not held`, { lockName: this.name });
    }
    await this.#renew(seconds);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.unlock();
  }

  /** @internal ends a held lock as lost; true if this call did it. */
  lose(reason: LostReason | string, detail?: string, cause?: unknown): boolean {
    return this.loseWith(new LockLostError(this.name, reason, detail, cause));
  }

  /** @internal */
  loseWith(err: LockLostError): boolean {
    if (this.#state !== "held") {
      return false;
    }
    this.#state = "lost";
    this.#lost = err;
    this.#stopWatch();
    this.#host!.forget(this);
    this.#ac?.abort(err);
    return true;
  }

  /** @internal starts the expiry watch and renewals (called once registered). */
  startWatch(): void {
    this.#schedule();
  }

  #renew(seconds: number): Promise<void> {
    const run = this.#renewing.then(async () => {
      if (this.#state !== "held") {
        if (this.#state === "lost") {
          throw this.#lost;
        }
        return;
      }
      const sentAt = await this.#host!.renewHeld(this, seconds);
      if (this.#state === "held") {
        this.#timeoutSeconds = seconds;
        this.#expiresAt = sentAt + seconds * 1000;
        this.#retryAt = 0;
        this.#schedule();
      }
    });
    this.#renewing = run.catch(() => undefined);
    return run;
  }

  #stopWatch(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  // One timer per held lock with a timeout: it renews a third of the way
  // into the timeout (auto-renew), and ends the lock as expired when the
  // timeout passes without a renewal. A renewal that fails without the
  // service refusing it is retried every tenth of the timeout.
  #schedule(): void {
    this.#stopWatch();
    if (this.#state !== "held" || this.#expiresAt === 0) {
      return;
    }
    let wake = this.#expiresAt;
    if (this.#autoRenew) {
      const renewAt = Math.max(this.#expiresAt - (this.#timeoutSeconds * 1000 * 2) / 3, this.#retryAt);
      wake = Math.min(wake, renewAt);
    }
    this.#timer = setTimeout(() => this.#onTimer(), Math.max(0, wake - performance.now()));
  }

  #onTimer(): void {
    this.#timer = undefined;
    if (this.#state !== "held") {
      return;
    }
    if (performance.now() >= this.#expiresAt) {
      this.lose("expired", "the lock timeout passed without a renewal");
      return;
    }
    if (!this.#autoRenew) {
      this.#schedule();
      return;
    }
    // While the renewal is out, the lock still expires on time.
    this.#timer = setTimeout(() => this.#onTimer(), Math.max(0, this.#expiresAt - performance.now()));
    this.#renew(this.#timeoutSeconds).catch(() => {
      // Lost already handled; otherwise try again soon, until expiry.
      if (this.#state === "held") {
        this.#retryAt = performance.now() + (this.#timeoutSeconds * 1000) / 10;
        this.#schedule();
      }
    });
  }
}
