// Sessions (docs/protocol.md, "Sessions: locks that survive a reconnect"):
// a client's locks and queue places survive a reconnect that its NATS
// server caused, on a real NATS cluster whose member the client is
// connected to shuts down; a closed connection still frees them at once.
//
// Every wait is bounded and polls a condition. Where a test must show that
// the service did *not* release a lock at the end of its reconnect grace, a
// canary client (connected to the same member, never reconnecting) holds a
// lock of its own: its release at the end of the same grace says that the
// grace is over.

import { test } from "node:test";
import assert from "node:assert/strict";

import { connect } from "@nats-io/transport-node";
import type { Msg, NatsConnection } from "@nats-io/nats-core";
import { Client, HEADER_OWNER, HEADER_SESSION, type ClientOptions } from "@ldlm/client";
import { Cluster, knownServers, poll, startServer, uniqueName, within } from "./helpers.js";

const WAIT = 30_000; // bound of every wait: only turns a hang into a failure

async function memberClient(c: Cluster, i: number, options: ClientOptions = {}, nats: object = {}): Promise<Client> {
  const client = await Client.connect({ servers: c.members[i].url, maxReconnectAttempts: -1, ...nats }, options);
  await poll(() => knownServers(client.nc) > 1, WAIT, "the client learnt the other member");
  return client;
}

/** Whether client reconnected to a server other than before and its attach was settled. */
function attachedAnew(client: Client, before: string | undefined): boolean {
  return client.attachSettled && client.nc.info?.server_id !== before;
}

async function isFree(client: Client, name: string): Promise<boolean> {
  const l = await client.tryLock(name);
  if (!l.locked) return false;
  await l.unlock();
  return true;
}

interface Waiter {
  owner: string;
  since: string;
}

async function adminWaiters(nc: NatsConnection, name: string): Promise<Waiter[]> {
  const m = await nc.request("ldlm.admin.list", JSON.stringify({ prefix: name }), { timeout: 10_000 });
  const locks = m.json<{ locks: { name: string; waiters?: Waiter[] }[] | null }>().locks ?? [];
  return locks.find((l) => l.name === name)?.waiters ?? [];
}

/** A client of member i that never reconnects, holding name: once its member shuts down, the service frees name at the end of the grace. */
async function canary(c: Cluster, i: number, name: string): Promise<Client> {
  const bird = await Client.connect({ servers: c.members[i].url, reconnect: false });
  assert.ok((await bird.lock(name)).locked);
  return bird;
}

test("sessions: a held lock survives its server's shutdown", async () => {
  const c = await Cluster.start();
  const name = uniqueName();
  const clients: Client[] = [];
  try {
    const other = await memberClient(c, 0);
    const bird = await canary(c, 1, `${name}-canary`);
    const holder = await memberClient(c, 1);
    clients.push(other, bird, holder);
    // no lock timeout: nothing but the attach keeps it past the grace
    const lock = await holder.lock(name);
    assert.ok(lock.locked);
    const { key, token } = lock;
    const before = holder.nc.info?.server_id;
    const session = holder.sessionId;
    assert.equal(await isFree(other, name), false);

    await c.stopMember(1);
    await poll(() => attachedAnew(holder, before), WAIT, "the holder reconnected to member 0 and attached");
    await poll(() => isFree(other, `${name}-canary`), WAIT, "the end of the grace (the canary's lock freed)");

    assert.ok(lock.locked, String(lock.lostError));
    assert.equal(lock.signal.aborted, false);
    assert.deepEqual([lock.key, lock.token], [key, token]);
    assert.equal(holder.sessionId, session, "the session was kept: no new id");
    assert.equal(await isFree(other, name), false, "another client got the lock");
    await lock.renew(30);
    await lock.unlock();
    assert.ok(await isFree(other, name), "the lock is not free after unlock");
  } finally {
    for (const cl of clients) await cl.close();
    await c.close();
  }
});

test("sessions: a closed connection frees the session's locks at once", async () => {
  const server = await startServer(undefined, { LDLM_RECONNECT_GRACE: "1h" });
  const name = uniqueName();
  const holder = await Client.connect({ servers: server.url });
  const waiter = await Client.connect({ servers: server.url });
  const admin = await connect({ servers: server.url });
  try {
    const held = await holder.lock(name);
    assert.ok(held.locked);
    const wait = waiter.lock(name);
    await poll(async () => (await adminWaiters(admin, name)).length === 1, WAIT, "the waiter waits");
    await holder.nc.close();
    const got = await within(wait, WAIT, "the waiter's lock");
    assert.ok(got.locked, "the waiter did not get the closed connection's lock");
    await poll(() => !held.locked, WAIT, "the holder counts its lock lost");
    assert.equal(held.lostError?.reason, "connection-lost");
    await got.unlock();
  } finally {
    await holder.close();
    await waiter.close();
    await admin.close();
    await server.stop();
  }
});

test("sessions: a waiter keeps its place in the queue across its reconnect", async () => {
  const c = await Cluster.start();
  const name = uniqueName();
  const clients: Client[] = [];
  let admin: NatsConnection | undefined;
  try {
    const first = await memberClient(c, 1);
    const second = await memberClient(c, 0);
    const holder = await memberClient(c, 0);
    const bird = await canary(c, 1, `${name}-canary`);
    clients.push(first, second, holder, bird);
    admin = await connect({ servers: c.members[0].url });
    const adm = admin;
    const held = await holder.lock(name);
    assert.ok(held.locked);
    const order: string[] = [];
    const firstWait = first.lock(name).then((l) => (order.push("first"), l));
    await poll(async () => (await adminWaiters(adm, name)).length === 1, WAIT, "the first waits");
    // A waiter is shown by its owner (the session) and since when it
    // waits: a request asked again would wait since later.
    const w = (await adminWaiters(adm, name))[0];
    assert.equal(w.owner, `session:${first.sessionId!.slice(0, 8)}`);
    const secondWait = second.lock(name).then((l) => (order.push("second"), l));
    await poll(async () => (await adminWaiters(adm, name)).length === 2, WAIT, "the second waits");

    const before = first.nc.info?.server_id;
    await c.stopMember(1);
    await poll(() => attachedAnew(first, before), WAIT, "the first waiter reconnected and attached");
    await poll(() => isFree(holder, `${name}-canary`), WAIT, "the end of the grace (the canary's lock freed)");
    const waiters = await adminWaiters(adm, name);
    assert.equal(waiters.length, 2, JSON.stringify(waiters));
    assert.deepEqual([waiters[0].owner, waiters[0].since], [w.owner, w.since], JSON.stringify(waiters));
    assert.deepEqual(order, []);

    await held.unlock();
    const got = await within(firstWait, WAIT, "the first waiter's grant");
    assert.ok(got.locked, "the first waiter was not granted");
    assert.deepEqual(order, ["first"], "the second waiter was granted before the first unlocked");
    await got.unlock();
    assert.ok((await within(secondWait, WAIT, "the second waiter's grant")).locked);
  } finally {
    for (const cl of clients) await cl.close();
    await admin?.close();
    await c.close();
  }
});

test("sessions: off, a reconnect loses the lock as before", async () => {
  const c = await Cluster.start();
  try {
    const holder = await memberClient(c, 1, { sessions: false });
    try {
      const lock = await holder.lock(uniqueName());
      assert.ok(lock.locked);
      await c.stopMember(1);
      await poll(() => !lock.locked, WAIT, "the lock is lost");
      assert.equal(lock.lostError?.reason, "connection-lost");
    } finally {
      await holder.close();
    }
  } finally {
    await c.close();
  }
});

test("sessions: every request carries the client's session with its owner", async () => {
  const server = await startServer();
  const svc = await connect({ servers: server.url });
  const seen: { op: string; owner?: string; session?: string }[] = [];
  const parked: Msg[] = [];
  svc.subscribe("sess.>", {
    callback: (_e, m) => {
      const op = m.subject.split(".")[1];
      seen.push({ op, owner: m.headers?.get(HEADER_OWNER), session: m.headers?.get(HEADER_SESSION) || undefined });
      const body = m.data.length ? m.json<{ key: string }>() : { key: "" };
      if (op === "lock") parked.push(m);
      else if (op === "unlock") m.respond('{"unlocked":true,"name":"job"}');
      else m.respond(JSON.stringify({ locked: true, name: "job", key: body.key, token: 1 }));
    },
  });
  await svc.flush();
  const client = await Client.connect({ servers: server.url }, { prefix: "sess" });
  const another = await Client.connect({ servers: server.url }, { prefix: "sess" });
  const off = await Client.connect({ servers: server.url }, { prefix: "sess", sessions: false });
  try {
    const held = await client.tryLock("job");
    await held.renew(10);
    await held.unlock();
    const ac = new AbortController();
    const waiting = client.lock("queue", { signal: ac.signal }).catch(() => undefined);
    await poll(() => parked.length > 0, WAIT, "the lock request");
    ac.abort();
    await waiting;
    const mine = [...seen];
    assert.deepEqual(new Set(mine.map((s) => s.op)), new Set(["trylock", "renew", "unlock", "lock"]));
    const owner = `${client.nc.info!.server_id}:${client.nc.info!.client_id}`;
    const session = client.sessionId!;
    assert.match(session, /^[0-9a-f]{32}$/);
    for (const s of mine) assert.deepEqual([s.owner, s.session], [owner, session], s.op);

    // (The withdrawal of the aborted wait may still come: look at others' requests only.)
    const from = (c: Client) => seen.filter((s) => s.owner === `${c.nc.info!.server_id}:${c.nc.info!.client_id}`);
    await another.tryLock("other");
    const theirs = from(another);
    assert.ok(theirs.length === 1 && theirs[0].session !== undefined && theirs[0].session !== session, "another client, another session");
    await (await off.tryLock("x")).unlock();
    assert.deepEqual(
      from(off).map((s) => s.session),
      [undefined, undefined],
      "sessions: false sends none",
    );
  } finally {
    await client.close();
    await another.close();
    await off.close();
    await svc.close();
    await server.stop();
  }
});

test("sessions: a kept wait ends at its wait timeout when no server comes back", async () => {
  // kill -9: no reply of any kind; the wait, kept for an attach that never
  // comes, still ends as a wait timeout, as without sessions.
  const server = await startServer();
  const name = uniqueName();
  const holder = await Client.connect({ servers: server.url });
  const waiter = await Client.connect({ servers: server.url });
  const admin = await connect({ servers: server.url });
  try {
    assert.ok((await holder.lock(name)).locked);
    const wait = waiter.lock(name, { waitTimeoutSeconds: 2 });
    await poll(async () => (await adminWaiters(admin, name)).length === 1, WAIT, "the waiter waits");
    await server.stop("SIGKILL");
    const got = await within(wait, WAIT, "the wait's end");
    assert.equal(got.locked, false, "granted by a dead server");
  } finally {
    await admin.close().catch(() => undefined);
    await holder.close();
    await waiter.close();
  }
});
