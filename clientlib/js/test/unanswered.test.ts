// What the client does when the service does not answer for a while, or
// answers late (docs/protocol.md, "What a client does on a reconnect",
// "Unconfirmed releases", "Replies"): the attach after a reconnect is asked
// until answered, an unlock that got no answer is sent again in the
// background, and the lock timeout counts from the grant (waited_ms).
//
// Against the real service (durable where a lock must outlive its
// restart). Every wait is bounded and polls a condition; nothing asserts on
// timing.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/nats-core";
import { Client, LockLostError, NoServiceError } from "@ldlm/client";
import { Cluster, freePort, knownServers, poll, sleep, startNats, startServer, startService, uniqueName, within, type Server } from "./helpers.js";

const WAIT = 30_000; // bound of every wait: only turns a hang into a failure

async function isFree(client: Client, name: string): Promise<boolean> {
  const l = await client.tryLock(name);
  if (!l.locked) return false;
  await l.unlock();
  return true;
}

async function waiters(nc: NatsConnection, name: string): Promise<number> {
  const m = await nc.request("ldlm.admin.list", JSON.stringify({ prefix: name }), { timeout: 10_000 });
  const locks = m.json<{ locks: { name: string; waiters?: unknown[] | null }[] | null }>().locks ?? [];
  return locks.find((l) => l.name === name)?.waiters?.length ?? 0;
}

test("attach: a holder keeps its lock while the service is away longer than the request timeout", async () => {
  // The single binary with LDLM_DATA_DIR keeps its locks across a restart.
  // Between its stop and its restart, a bare nats-server on its port takes
  // the client's reconnect, and a subscriber there reads the client's
  // attach without answering: a second attach means the first one timed
  // out (the request timeout, 1 s, passed) and the client asked again
  // instead of counting its lock lost.
  const port = await freePort();
  const env = { LDLM_DATA_DIR: mkdtempSync(join(tmpdir(), "ldlm-js-data-")), LDLM_RECONNECT_GRACE: "60s" };
  let server: Server | undefined = await startServer(port, env);
  let standIn: Server | undefined;
  let silent: NatsConnection | undefined;
  const name = uniqueName();
  const nats = { servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 };
  const holder = await Client.connect(nats, { requestTimeoutSeconds: 1 });
  let other: Client | undefined;
  try {
    const lock = await holder.lock(name); // no lock timeout: only the attach keeps it
    assert.ok(lock.locked);
    const { key, token } = lock;

    await server.stop();
    server = undefined;
    await poll(() => !holder.attachSettled, WAIT, "the holder saw its connection drop");
    standIn = await startNats(port);
    silent = await connect({ servers: standIn.url });
    let attaches = 0;
    silent.subscribe("ldlm.attach", { callback: () => void attaches++ });
    await silent.flush();
    await poll(() => attaches >= 2, WAIT, "the attach asked again after a try timed out");
    assert.ok(lock.locked, `lost while the service was away: ${lock.lostError}`);

    await silent.close();
    silent = undefined;
    await standIn.stop();
    standIn = undefined;
    server = await startServer(port, env);
    await poll(() => holder.attachSettled && holder.nc.info?.server_id !== undefined, WAIT, "the holder reconnected and attached");
    other = await Client.connect({ servers: server.url });
    assert.ok(lock.locked, String(lock.lostError));
    assert.equal(lock.signal.aborted, false);
    assert.deepEqual([lock.key, lock.token], [key, token]);
    assert.equal(await isFree(other, name), false, "the lock was free after the restart");
    await lock.unlock();
    assert.ok(await isFree(other, name), "the lock is not free after unlock");
  } finally {
    await holder.close();
    await other?.close();
    await silent?.close();
    await standIn?.stop();
    await server?.stop();
  }
});

test("unlock: with no service answering it rejects, and the lock is released once one answers", async () => {
  // External NATS with JetStream, the service with LDLM_STATE=jetstream:
  // stopped, it keeps its locks in the stream while the holder stays
  // connected to NATS. Its reconnect grace (1 h) outlasts the test, so only
  // the client's background unlock can free the lock after the restart.
  const nats = await startNats(undefined, mkdtempSync(join(tmpdir(), "ldlm-js-js-")));
  const env = { LDLM_STATE: "jetstream", LDLM_RECONNECT_GRACE: "1h" };
  let service: Server | undefined = await startService(nats.url, env);
  const name = uniqueName();
  const holder = await Client.connect({ servers: nats.url }, { requestTimeoutSeconds: 1 });
  const other = await Client.connect({ servers: nats.url });
  try {
    const lock = await holder.lock(name);
    assert.ok(lock.locked);
    await service.stop();
    service = undefined;

    await assert.rejects(within(lock.unlock(), WAIT, "the unanswered unlock"), NoServiceError);
    assert.equal(lock.locked, false);
    assert.equal(holder.unconfirmedReleases, 1);

    service = await startService(nats.url, env);
    await poll(() => isFree(other, name), WAIT, "the lock released in the background");
    await poll(() => holder.unconfirmedReleases === 0, WAIT, "the release confirmed");
  } finally {
    await holder.close();
    await other.close();
    await service?.stop();
    await nats.stop();
  }
});

test("lock timeout: a lock that waited longer than its lock timeout is usable after the grant", async () => {
  const server = await startServer();
  const name = uniqueName();
  const holder = await Client.connect({ servers: server.url });
  const waiter = await Client.connect({ servers: server.url });
  const admin = await connect({ servers: server.url });
  try {
    const held = await holder.lock(name);
    assert.ok(held.locked);
    const wait = waiter.lock(name, { lockTimeoutSeconds: 1 });
    await poll(async () => (await waiters(admin, name)) === 1, WAIT, "the waiter waits");
    await sleep(1500); // the wait itself: longer than the lock timeout
    await held.unlock();
    const got = await within(wait, WAIT, "the grant");
    assert.ok(got.locked, String(got.lostError));
    assert.ok(got.expiresAt!.getTime() > Date.now(), "the lock timeout counted from the request, not the grant");
    assert.equal(await isFree(holder, name), false, "the service does not hold it");
    await got.renew(1); // auto-renew runs too; an explicit renewal shows it is held
    await got.unlock();
    assert.ok(await isFree(holder, name));
  } finally {
    await holder.close();
    await waiter.close();
    await admin.close();
    await server.stop();
  }
});

test("lock timeout: a grant expired on arrival is given back and reported expired", async () => {
  // A stand-in service on prefix "late" answers the lock only after its
  // lock timeout (0.2 s) passed, without waited_ms: expired by the
  // client's count when it arrives.
  const server = await startServer();
  const svc = await connect({ servers: server.url });
  const unlocked: string[] = [];
  svc.subscribe("late.>", {
    callback: (_e, m) => {
      const op = m.subject.split(".")[1];
      const body = m.json<{ key: string }>();
      if (op === "lock") {
        setTimeout(() => m.respond(JSON.stringify({ locked: true, name: "job", key: body.key, token: 5, size: 1 })), 500);
      } else if (op === "unlock") {
        unlocked.push(body.key);
        m.respond('{"unlocked":true,"name":"job"}');
      }
    },
  });
  await svc.flush();
  const client = await Client.connect({ servers: server.url }, { prefix: "late" });
  try {
    const l = await within(client.lock("job", { lockTimeoutSeconds: 0.2 }), WAIT, "the late grant");
    assert.equal(l.locked, false);
    assert.ok(l.lostError instanceof LockLostError);
    assert.equal(l.lostError.reason, "expired");
    await assert.rejects(l.unlock(), LockLostError);
    await poll(() => unlocked.includes(l.key), WAIT, "the grant given back");
  } finally {
    await client.close();
    await svc.close();
    await server.stop();
  }
});

test("attach: what the reply lists and the client does not know is released in the background", async () => {
  // A stand-in service on prefix "att" (on member 0 of a cluster) answers
  // the attach after the client's reconnect with its own lock, a grant and
  // a wait the client never had; the first unlock of each unknown key is
  // answered Unavailable, so the background task asks again.
  const cluster = await Cluster.start({ service: false });
  let svc: NatsConnection | undefined;
  let client: Client | undefined;
  try {
    const ghost = "a".repeat(32);
    const gone = "b".repeat(32);
    const unlocks: string[] = [];
    let mine = "";
    svc = await connect({ servers: cluster.members[0].url });
    svc.subscribe("att.>", {
      callback: (_e, m) => {
        const [, op, name] = m.subject.split(".");
        const body = m.data.length ? m.json<{ key: string }>() : { key: "" };
        if (op === "trylock") {
          m.respond(JSON.stringify({ locked: true, name, key: body.key, token: 1 }));
        } else if (op === "attach") {
          m.respond(
            JSON.stringify({
              attached: true,
              resumed: true,
              held: [
                { name: "job", key: mine, token: 1 },
                { name: "ghost", key: ghost, token: 2 },
              ],
              waiting: [{ name: "gone", key: gone }],
            }),
          );
        } else if (op === "unlock") {
          const first = !unlocks.includes(body.key);
          unlocks.push(body.key);
          m.respond(first ? '{"unlocked":false,"error":{"code":"Unavailable","message":"stopping"}}' : JSON.stringify({ unlocked: true, name }));
        }
      },
    });
    await svc.flush();
    client = await Client.connect({ servers: cluster.members[1].url, maxReconnectAttempts: -1 }, { prefix: "att" });
    const c = client;
    await poll(() => knownServers(c.nc) > 1, WAIT, "the client learnt member 0");
    const held = await client.tryLock("job");
    assert.ok(held.locked);
    mine = held.key;
    const before = client.nc.info?.server_id;
    await cluster.stopMember(1);
    await poll(() => c.attachSettled && c.nc.info?.server_id !== before, WAIT, "the client reconnected and attached");
    const count = (k: string) => unlocks.filter((u) => u === k).length;
    await poll(() => count(ghost) >= 2 && count(gone) >= 2, WAIT, "the unknown grant and wait released, asked again after Unavailable");
    await poll(() => c.unconfirmedReleases === 0, WAIT, "the releases confirmed");
    assert.ok(held.locked, String(held.lostError));
    assert.equal(count(mine), 0, "the client's own lock was released");
  } finally {
    await client?.close();
    await svc?.close();
    await cluster.close();
  }
});
