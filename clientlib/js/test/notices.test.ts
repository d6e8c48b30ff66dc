// Lost notices and instance announcements, through the client, from a
// stand-in service on its own prefix (so that the cases do not depend on
// timing): the same rules as the wire vectors' "notices" group, kept here
// so that they run when the vectors file is absent.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { connect } from "@nats-io/transport-node";
import type { Msg, NatsConnection } from "@nats-io/nats-core";
import { Client, LockLostError, lostSubject } from "@ldlm/client";
import { startServer, within, type Server } from "./helpers.js";

describe("notices through the client", () => {
  let server: Server;
  let svc: NatsConnection;
  // The stand-in's answer: a body, undefined for the default, null for none.
  let answer: (m: Msg) => string | undefined | null = () => undefined;
  let lastOwner = "";
  const granted = (name: string, token: number, instance: string) => JSON.stringify({ locked: true, name, key: "k", token, size: 1, instance });

  before(async () => {
    server = await startServer();
    svc = await connect({ servers: server.url });
    svc.subscribe("nt.>", {
      callback: (_e, m) => {
        if (m.subject === "nt.sync") {
          m.respond("{}");
          return;
        }
        lastOwner = m.headers?.get("Ldlm-Owner") ?? "";
        const body = answer(m);
        if (body === null) return;
        m.respond(body ?? (m.subject.startsWith("nt.unlock.") ? '{"unlocked":true,"name":"x"}' : granted("job", 17, "I1")));
      },
    });
    await svc.flush();
  });
  after(async () => {
    await svc.close();
    await server.stop();
  });

  // The stand-in publishes on the connection it answers on: what it sent
  // before the sync reply has reached the client when the reply does.
  const sync = (c: Client) => within(c.nc.request("nt.sync", "", { timeout: 10_000 }), 10_000, "sync");
  const newStandIn = () => Client.connect({ servers: server.url }, { prefix: "nt" });

  const cases: {
    name: string;
    before?: (owner: string) => [string, string];
    after?: (owner: string) => [string, string];
    lose?: string;
  }[] = [
    { name: "lost notice of the held grant", after: (o) => [lostSubject("nt", o), '{"name":"job","token":17,"reason":"force-released"}'], lose: "force-released" },
    { name: "lost notice of another token", after: (o) => [lostSubject("nt", o), '{"name":"job","token":16,"reason":"expired"}'] },
    { name: "lost notice before the grant's reply", before: (o) => [lostSubject("nt", o), '{"name":"job","token":17,"reason":"expired"}'], lose: "expired" },
    { name: "another instance started", after: () => ["nt.instance.started", '{"instance":"I2","event":"started"}'], lose: "instance-gone" },
    { name: "the granting instance started again", after: () => ["nt.instance.started", '{"instance":"I1","event":"started"}'] },
    { name: "the granting instance stopped", after: () => ["nt.instance.stopped", '{"instance":"I1","event":"stopped"}'], lose: "instance-gone" },
    { name: "another instance stopped", after: () => ["nt.instance.stopped", '{"instance":"I2","event":"stopped"}'] },
    { name: "an announcement that is not JSON", after: () => ["nt.instance.started", "started"] },
  ];

  for (const c of cases) {
    test(c.name, async () => {
      const client = await newStandIn();
      try {
        answer = (m) => {
          if (c.before && m.subject === "nt.trylock.job") svc.publish(...c.before(m.headers?.get("Ldlm-Owner") ?? ""));
          return undefined;
        };
        const lock = await client.tryLock("job");
        if (c.after) svc.publish(...c.after(lastOwner));
        await sync(client);
        if (c.lose) {
          assert.equal(lock.locked, false);
          assert.ok(lock.signal.aborted);
          assert.ok(lock.signal.reason instanceof LockLostError);
          assert.equal(lock.signal.reason.reason, c.lose);
        } else {
          assert.ok(lock.locked);
          assert.equal(lock.signal.aborted, false);
        }
      } finally {
        answer = () => undefined;
        await client.close();
      }
    });
  }

  test("a grant from another instance ends the locks of the old one", async () => {
    const client = await newStandIn();
    try {
      const first = await client.tryLock("job");
      answer = (m) => (m.subject === "nt.trylock.other" ? granted("other", 30, "I2") : undefined);
      const second = await client.tryLock("other");
      assert.ok(second.locked);
      assert.equal(first.locked, false);
      assert.equal(first.lostError?.reason, "instance-gone");
    } finally {
      answer = () => undefined;
      await client.close();
    }
  });

  test("a waiting lock() asks again when another instance starts", async () => {
    const client = await newStandIn();
    try {
      let asked = 0;
      let firstKey = "";
      let unlockedFirst = false;
      answer = (m) => {
        if (m.subject === "nt.lock.job") {
          asked++;
          const key = JSON.parse(new TextDecoder().decode(m.data)).key as string;
          if (asked === 1) {
            firstKey = key;
            // Park it: no answer, then another instance announces itself.
            svc.publish("nt.instance.started", '{"instance":"I2","event":"started"}');
            return null;
          }
          return granted("job", 40, "I2");
        }
        if (m.subject === "nt.unlock.job" && JSON.parse(new TextDecoder().decode(m.data)).key === firstKey) unlockedFirst = true;
        return undefined;
      };
      const got = await within(client.lock("job"), 30_000, "the lock");
      assert.ok(got.locked);
      assert.equal(got.instance, "I2");
      assert.equal(asked, 2);
      await sync(client);
      assert.ok(unlockedFirst, "the parked request was withdrawn with its key");
      await got.unlock();
    } finally {
      answer = () => undefined;
      await client.close();
    }
  });
});
