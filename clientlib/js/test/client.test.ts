// The client against the real service: the API, errors per code, renewals
// and lost locks.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/nats-core";
import {
  BadRequestError,
  Client,
  ClientClosedError,
  ERRORS_BY_CODE,
  InvalidLockNameError,
  InvalidLockSizeError,
  InvalidTimeoutError,
  LdlmError,
  LockLostError,
  LockSizeMismatchError,
  LockWaitTimeoutError,
  NoServiceError,
  NotObtainedError,
  errorFromReply,
  type ErrorCode,
} from "@ldlm/client";
import { adminHolds, adminList, adminUnlock, newClient, poll, sleep, startServer, uniqueName, within, type Server } from "./helpers.js";

let server: Server;
let client: Client;
let admin: NatsConnection;

describe("client", () => {
  before(async () => {
    server = await startServer();
    client = await newClient(server.url);
    admin = await connect({ servers: server.url });
  });
  after(async () => {
    await client.close();
    await admin.close();
    await server.stop();
  });

  test("lock, tryLock, unlock", async () => {
    const name = uniqueName();
    const lock = await client.lock(name);
    assert.ok(lock.locked);
    assert.equal(lock.name, name);
    assert.match(lock.key, /^[0-9a-f]{32}$/);
    assert.ok(lock.token > 0);
    assert.equal(lock.size, 1);
    assert.ok(lock.instance !== "");
    assert.equal(lock.signal.aborted, false);

    const other = await client.tryLock(name);
    assert.equal(other.locked, false);
    assert.equal(other.key, "");
    assert.ok(other.signal.reason instanceof NotObtainedError);
    await other.unlock(); // nothing to do

    await lock.unlock();
    assert.equal(lock.locked, false);
    assert.equal(lock.signal.aborted, false); // unlocked, not lost
    await lock.unlock(); // a second unlock does nothing

    const again = await client.tryLock(name);
    assert.ok(again.locked);
    assert.ok(again.token > lock.token, "fencing tokens grow");
    await again.unlock();
  });

  test("every lock request has its own fresh key", async () => {
    const name = uniqueName();
    const keys = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const l = await client.tryLock(name);
      keys.add(l.key);
      await l.unlock();
    }
    assert.equal(keys.size, 20);
  });

  test("the owner header names this connection; with sessions the lock is the session's", async () => {
    const name = uniqueName();
    const lock = await client.lock(name);
    let listed = (await adminList(admin)).find((l) => l.name === name);
    assert.equal(listed?.holders?.[0]?.owner, `session:${client.sessionId!.slice(0, 8)}`);
    await lock.unlock();
    const off = await newClient(server.url, { sessions: false });
    try {
      const l = await off.lock(name);
      const info = off.nc.info!;
      listed = (await adminList(admin)).find((l) => l.name === name);
      assert.equal(listed?.holders?.[0]?.owner, `${info.server_id}:${info.client_id}`);
      await l.unlock();
    } finally {
      await off.close();
    }
  });

  test("names that cannot be a subject travel encoded", async () => {
    for (const name of ["My lock", "é", "~x", "a..b", "a*b", "orders.123", `${uniqueName()} ${"ü".repeat(3)}`]) {
      const lock = await client.tryLock(name);
      assert.ok(lock.locked, name);
      assert.ok((await adminList(admin)).some((l) => l.name === name), `the service names it ${JSON.stringify(name)}`);
      await lock.unlock();
    }
  });

  test("size: a semaphore of n slots", async () => {
    const name = uniqueName();
    const held = [];
    for (let i = 0; i < 3; i++) {
      const l = await client.tryLock(name, { size: 3 });
      assert.ok(l.locked);
      assert.equal(l.size, 3);
      held.push(l);
    }
    assert.equal((await client.tryLock(name, { size: 3 })).locked, false);
    await assert.rejects(client.tryLock(name, { size: 2 }), LockSizeMismatchError);
    await Promise.all(held.map((l) => l.unlock()));
  });

  test("a waiting lock is granted when the holder unlocks", async () => {
    const name = uniqueName();
    const first = await client.lock(name);
    const second = client.lock(name);
    await poll(async () => (await adminList(admin)).some((l) => l.name === name && (l.waiters?.length ?? 0) > 0), 30_000, "the waiter to queue");
    await first.unlock();
    const got = await within(second, 30_000, "the waiting lock");
    assert.ok(got.locked);
    await got.unlock();
  });

  test("wait timeout: a Lock that is not locked, not an exception", async () => {
    const name = uniqueName();
    const holder = await client.lock(name);
    const lock = await client.lock(name, { waitTimeoutSeconds: 0.1 });
    assert.equal(lock.locked, false);
    assert.ok(lock.signal.aborted);
    assert.ok(lock.signal.reason instanceof LockWaitTimeoutError);
    assert.equal(lock.signal.reason.code, "LockWaitTimeout");
    await holder.unlock();
  });

  test("withLock and withTryLock unlock when the callback settles", async () => {
    const name = uniqueName();
    const result = await client.withLock(name, {}, async (lock) => {
      assert.ok(lock.locked);
      assert.equal((await client.tryLock(name)).locked, false);
      return 42;
    });
    assert.equal(result, 42);
    await assert.rejects(
      client.withTryLock(name, {}, async () => {
        throw new Error("boom");
      }),
      /boom/,
    );
    const free = await client.tryLock(name);
    assert.ok(free.locked, "released after the callback threw");
    const inner = await client.withTryLock(name, {}, async (lock) => lock.locked);
    assert.equal(inner, false);
    await free.unlock();
  });

  test("await using unlocks at the end of the block", async () => {
    const name = uniqueName();
    {
      await using lock = await client.lock(name);
      assert.ok(lock.locked);
    }
    assert.ok(!(await adminHolds(admin, name)));
  });

  test("auto-renew keeps a 2 s lock alive for 6 s", async () => {
    const name = uniqueName();
    const lock = await client.lock(name, { lockTimeoutSeconds: 2 });
    const end = performance.now() + 6000;
    while (performance.now() < end) {
      assert.ok(lock.locked, "still held");
      await sleep(250);
    }
    assert.ok(lock.locked);
    assert.ok(await adminHolds(admin, name));
    assert.equal((await client.tryLock(name)).locked, false);
    await lock.unlock();
  });

  test("without auto-renew the lock expires and its signal aborts", async () => {
    const name = uniqueName();
    const lock = await client.lock(name, { lockTimeoutSeconds: 0.5, autoRenew: false });
    const reason = await within(aborted(lock.signal), 30_000, "the expiry");
    assert.ok(reason instanceof LockLostError);
    assert.equal(reason.reason, "expired");
    assert.equal(lock.locked, false);
    await assert.rejects(lock.unlock(), LockLostError);
    // the service's own release follows (a notice or its sweep of expiries)
    await poll(async () => !(await adminHolds(admin, name)), 30_000, "the service to release it");
  });

  test("renew by hand moves the expiry", async () => {
    const name = uniqueName();
    const lock = await client.lock(name, { lockTimeoutSeconds: 30, autoRenew: false });
    await lock.renew(60);
    assert.equal(lock.lockTimeoutSeconds, 60);
    assert.ok(lock.expiresAt!.getTime() > Date.now() + 40_000);
    await assert.rejects(lock.renew(0), InvalidTimeoutError);
    await lock.unlock();
    await assert.rejects(lock.renew(5), LdlmError);
  });

  test("a lost notice aborts lock.signal (force unlock)", async () => {
    const name = uniqueName();
    const lock = await client.lock(name);
    await adminUnlock(admin, name);
    const reason = await within(aborted(lock.signal), 30_000, "the lost notice");
    assert.ok(reason instanceof LockLostError);
    assert.equal(reason.reason, "force-released");
    assert.equal(lock.locked, false);
    assert.equal(lock.lostError, reason);
    await assert.rejects(lock.unlock(), LockLostError);
  });

  test("withLock rejects with the loss when the lock was lost during the callback", async () => {
    const name = uniqueName();
    await assert.rejects(
      client.withLock(name, {}, async (lock) => {
        await adminUnlock(admin, name);
        await within(aborted(lock.signal), 30_000, "the lost notice");
        return "done";
      }),
      LockLostError,
    );
  });

  test("the service's errors become their classes", async () => {
    await assert.rejects(client.tryLock("x".repeat(2000)), InvalidLockNameError);
    await assert.rejects(client.tryLock(uniqueName(), { size: 0 }), InvalidLockSizeError);
    await assert.rejects(client.tryLock(uniqueName(), { lockTimeoutSeconds: 0.00001 }), InvalidTimeoutError);
    await assert.rejects(client.lock(uniqueName(), { lockTimeoutSeconds: -1 }), InvalidTimeoutError);
    await assert.rejects(client.tryLock(uniqueName(), { waitTimeoutSeconds: 1 } as never), BadRequestError);
    const e = await client.tryLock("x".repeat(2000)).catch((err: unknown) => err);
    assert.ok(e instanceof LdlmError);
    assert.equal(e.code, "InvalidLockName");
  });

  test("one error class per protocol code", () => {
    const codes: ErrorCode[] = [
      "BadRequest",
      "InvalidLockName",
      "InvalidLockSize",
      "LockSizeMismatch",
      "InvalidTimeout",
      "InvalidLockKey",
      "LockKeyInUse",
      "LockDoesNotExist",
      "NotLocked",
      "LockWaitTimeout",
      "LockWaitCancelled",
      "OwnerGone",
      "LimitExceeded",
      "Unavailable",
      "Internal",
    ];
    assert.deepEqual(Object.keys(ERRORS_BY_CODE).sort(), [...codes].sort());
    for (const code of codes) {
      const err = errorFromReply({ code, message: "m" }, "job");
      assert.ok(err instanceof ERRORS_BY_CODE[code]);
      assert.ok(err instanceof LdlmError);
      assert.equal(err.code, code);
      assert.equal(err.name, `${code}Error`);
      assert.equal(err.message, "m");
      assert.equal(err.lockName, "job");
    }
    const unknown = errorFromReply({ code: "SomethingNew", message: "m" });
    assert.equal(unknown.constructor, LdlmError);
    assert.equal(unknown.code, "SomethingNew");
  });

  test("no service: tryLock fails within its budget, saying so", async () => {
    const c = await Client.connect({ servers: server.url }, { prefix: "nobody", requestTimeoutSeconds: 0.3 });
    try {
      const e = await within(c.tryLock("job").catch((err: unknown) => err), 30_000, "the tryLock");
      assert.ok(e instanceof NoServiceError, String(e));
      assert.match(e.message, /no lock service answered on nobody\.trylock\.job/);
      const w = await within(c.lock("job", { waitTimeoutSeconds: 0.3 }).catch((err: unknown) => err), 30_000, "the lock");
      assert.ok(w instanceof NoServiceError, String(w));
    } finally {
      await c.close();
    }
  });

  test("no responders yet: tryLock asks again until a service answers, within its budget", async () => {
    const c = await Client.connect({ servers: server.url }, { prefix: "late", requestTimeoutSeconds: 30 });
    const svc = await connect({ servers: server.url });
    try {
      const pending = c.tryLock("job");
      await sleep(200); // a few no-responders first (not asserted: it only makes the case likelier)
      svc.subscribe("late.>", {
        callback: (_e, m) => {
          m.respond(m.subject.startsWith("late.unlock.") ? '{"unlocked":true,"name":"job"}' : '{"locked":true,"name":"job","token":5,"size":1,"instance":"L1"}');
        },
      });
      await svc.flush();
      const lock = await within(pending, 60_000, "the tryLock");
      assert.ok(lock.locked);
      assert.equal(lock.token, 5);
      await lock.unlock();
    } finally {
      await c.close();
      await svc.close();
    }
  });

  test("withLock and withTryLock without options", async () => {
    const name = uniqueName();
    assert.equal(await client.withLock(name, async (lock) => lock.locked), true);
    assert.equal(await client.withTryLock(name, (lock) => lock.locked), true);
  });

  test("close while a lock() waits: it rejects with ClientClosedError and leaves nothing", async () => {
    const name = uniqueName();
    const holder = await client.lock(name);
    const c = await newClient(server.url);
    const waiting = c.lock(name).catch((e: unknown) => e);
    await poll(async () => (await adminList(admin)).some((l) => l.name === name && (l.waiters?.length ?? 0) > 0), 30_000, "the waiter to queue");
    await c.close();
    assert.ok((await within(waiting, 30_000, "the waiting lock")) instanceof ClientClosedError);
    await holder.unlock();
    await poll(async () => !(await adminHolds(admin, name)), 30_000, `${name} to hold and queue nothing`);
  });

  test("tryLock with an aborted signal sends nothing", async () => {
    const ac = new AbortController();
    ac.abort(new Error("no"));
    await assert.rejects(client.tryLock(uniqueName(), { signal: ac.signal }), /no/);
  });

  test("close unlocks what the client holds", async () => {
    const name = uniqueName();
    const c = await newClient(server.url);
    const lock = await c.lock(name);
    assert.ok(lock.locked);
    await c.close();
    assert.equal(lock.locked, false);
    assert.ok(!(await adminHolds(admin, name)));
  });
});

function aborted(signal: AbortSignal): Promise<unknown> {
  if (signal.aborted) return Promise.resolve(signal.reason);
  return new Promise((r) => signal.addEventListener("abort", () => r(signal.reason), { once: true }));
}
