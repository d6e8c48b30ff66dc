// Processes and restarts: a killed holder frees its lock; a service restart
// loses the held locks and a waiting lock() is granted by the new instance.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { LockLostError } from "@ldlm/client";
import { PKG_DIR, newClient, startServer, uniqueName, within, type Server } from "./helpers.js";

describe("processes", () => {
  let server: Server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  test("kill -9 of a holder process frees its lock", async () => {
    const name = uniqueName("kill");
    const dir = join(PKG_DIR, "build", "scripts");
    mkdirSync(dir, { recursive: true });
    const script = join(dir, "holder.mjs");
    writeFileSync(
      script,
      [
        `import { Client } from "@ldlm/client";`,
        `const [url, name] = process.argv.slice(2);`,
        `const client = await Client.connect({ servers: url });`,
        `const lock = await client.lock(name);`,
        `console.log(lock.locked ? "locked" : "not locked");`,
        `setInterval(() => {}, 1000); // hold until killed`,
      ].join("\n"),
    );
    const child = spawn(process.execPath, [script, server.url, name], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const exited = new Promise((r) => child.once("exit", r));
    try {
      const lines = createInterface({ input: child.stdout! });
      const first = await within(
        new Promise<string>((r) => lines.once("line", r)),
        60_000,
        "the holder to lock",
      );
      assert.equal(first, "locked");
      const client = await newClient(server.url);
      try {
        assert.equal((await client.tryLock(name)).locked, false, "held by the child");
        child.kill("SIGKILL");
        await within(exited, 30_000, "the child to die");
        const lock = await client.lock(name, { waitTimeoutSeconds: 30 });
        assert.ok(lock.locked, "freed when its holder was killed");
        await lock.unlock();
      } finally {
        await client.close();
      }
    } finally {
      child.kill("SIGKILL");
    }
  });
});

describe("service restart", () => {
  test("held locks are lost; a waiting lock() is granted by the new instance", async () => {
    let server = await startServer();
    const name = uniqueName("restart");
    const a = await newClient(server.url);
    const b = await newClient(server.url);
    try {
      const held = await a.lock(name);
      assert.ok(held.locked);
      const waiting = b.lock(name, { waitTimeoutSeconds: 120 });
      await server.stop();
      const reason = await within(
        new Promise((r) => (held.signal.aborted ? r(held.signal.reason) : held.signal.addEventListener("abort", () => r(held.signal.reason)))),
        60_000,
        "the held lock to be lost",
      );
      assert.ok(reason instanceof LockLostError);
      assert.ok(["instance-gone", "connection-lost"].includes(reason.reason), reason.reason);
      server = await startServer(server.port);
      const got = await within(waiting, 120_000, "the waiting lock");
      assert.ok(got.locked);
      assert.notEqual(got.instance, held.instance);
      // b reconnected as another client: its lost notices come on a new
      // subject, which it must listen to now.
      const admin = await newClient(server.url);
      try {
        await admin.nc.request(`ldlm.admin.unlock.${name}`, "{}", { timeout: 10_000 });
      } finally {
        await admin.close();
      }
      const lost = await within(
        new Promise((r) => (got.signal.aborted ? r(got.signal.reason) : got.signal.addEventListener("abort", () => r(got.signal.reason)))),
        60_000,
        "the lost notice after the reconnect",
      );
      assert.ok(lost instanceof LockLostError);
      assert.equal(lost.reason, "force-released");
    } finally {
      await a.close();
      await b.close();
      await server.stop();
    }
  });
});
