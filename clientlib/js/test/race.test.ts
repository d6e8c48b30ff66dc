// Cancellation races: hundreds of lock() calls aborted at random moments
// while others hold and wait for the same lock leave nothing behind.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/nats-core";
import type { Client } from "@ldlm/client";
import { adminHolds, adminList, newClient, poll, sleep, startServer, uniqueName, type Server } from "./helpers.js";

const ROUNDS = 50;
const WORKERS = 8; // per round, over two connections: 400 lock() calls

describe("cancellation races", () => {
  let server: Server;
  let admin: NatsConnection;
  before(async () => {
    server = await startServer();
    admin = await connect({ servers: server.url });
  });
  after(async () => {
    await admin.close();
    await server.stop();
  });

  test("random-moment aborts under contention leak no lock", async (t) => {
    const names = [uniqueName("race"), uniqueName("race")];
    const clients: Client[] = [await newClient(server.url), await newClient(server.url)];
    let granted = 0;
    let aborted = 0;
    let abandoned = 0; // granted after the abort fired: unlocked by us
    try {
      for (let round = 0; round < ROUNDS; round++) {
        await Promise.all(
          Array.from({ length: WORKERS }, async (_, i) => {
            const client = clients[i % 2];
            const name = names[(round + i) % names.length];
            const ac = new AbortController();
            const timer = setTimeout(() => ac.abort(new Error("gave up")), Math.random() * 15);
            try {
              const lock = await client.lock(name, { signal: ac.signal });
              if (ac.signal.aborted) abandoned++;
              granted++;
              await sleep(Math.random() * 3);
              await lock.unlock();
            } catch (e) {
              assert.equal((e as Error).message, "gave up");
              aborted++;
            } finally {
              clearTimeout(timer);
            }
          }),
        );
      }
    } finally {
      await Promise.all(clients.map((c) => c.close())); // waits for the withdrawals in flight
    }
    t.diagnostic(`${granted} granted, ${aborted} aborted, ${abandoned} granted after their abort fired`);
    assert.equal(granted + aborted, ROUNDS * WORKERS);
    assert.ok(aborted > 0, "some waits were aborted");
    for (const name of names) {
      await poll(async () => !(await adminHolds(admin, name)), 30_000, `${name} to hold and queue nothing`);
    }
    const leaked = (await adminList(admin)).filter((l) => names.includes(l.name));
    assert.deepEqual(leaked, []);
    const checker = await newClient(server.url);
    try {
      for (const name of names) {
        const l = await checker.tryLock(name);
        assert.ok(l.locked, `${name} is free`);
        await l.unlock();
      }
    } finally {
      await checker.close();
    }
  });

  test("aborts with clients left open: withdrawals alone leave nothing", async () => {
    const name = uniqueName("race-open");
    const client = await newClient(server.url);
    try {
      const holder = await client.lock(name);
      const calls = Array.from({ length: 100 }, () => {
        const ac = new AbortController();
        setTimeout(() => ac.abort(new Error("gave up")), Math.random() * 20);
        return client.lock(name, { signal: ac.signal }).then(
          (l) => l.unlock(),
          () => undefined,
        );
      });
      await Promise.all(calls);
      await holder.unlock();
      await poll(async () => !(await adminHolds(admin, name)), 30_000, `${name} to hold and queue nothing`);
    } finally {
      await client.close();
    }
  });
});
