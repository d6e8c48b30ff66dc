// The TypeScript twin of every Python example of the concept guide
// (seed/concepts.rst; clientlib/python/tests/test_seed.py runs the Python
// ones). Each twin is written as a user would write it, with only the
// address "ldlm-server:4222" replaced by the test server's URL. README.md of
// this package shows the same code next to each Python block.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { Client, LockSizeMismatchError, type Lock } from "@ldlm/client";
import { PKG_DIR, newClient, poll, startServer, type Server } from "./helpers.js";

let server: Server;
let made: Client[] = [];
let printed: string[] = [];

// What the twins call: Client.connect with the seed's address swapped for
// the test server's, remembering every client to close it after the block.
const ldlm = {
  async connect(opts: { servers: string }): Promise<Client> {
    assert.equal(opts.servers, "ldlm-server:4222");
    const c = await Client.connect({ servers: server.url });
    made.push(c);
    return c;
  },
};
const print = (s: string) => printed.push(s);

// --- the twins (README.md shows each next to its Python block) ---

// Name
async function name() {
  const client = await ldlm.connect({ servers: "ldlm-server:4222" });

  const lock = await client.lock("my-task");
  return lock;
}

// Size
async function size() {
  // Number of expensive operation slots
  const ES_SLOTS = 20;

  const client = await ldlm.connect({ servers: "ldlm-server:4222" });

  const lock = await client.lock("expensive_operation", { size: ES_SLOTS });

  // Do operation
  return lock;
}

// Timeout
async function timeout() {
  const client = await ldlm.connect({ servers: "ldlm-server:4222" });

  const lock = await client.lock("my-task", { lockTimeoutSeconds: 300 });
  return lock;
}

// Simple lock
async function simpleLock(client: Client) {
  // Block until lock is obtained
  const lock = await client.lock("my-task");

  // Do work, then release lock
  await lock.unlock();
  return lock;
}

// Wait timeout
async function waitTimeout(client: Client) {
  // Wait at most 30 seconds to acquire lock
  const lock = await client.lock("my-task", { waitTimeoutSeconds: 30 });
  if (!lock.locked) {
    print("Could not obtain lock within 30 seconds.");
    return;
  }
  // Do work, then release lock
  await lock.unlock();
  return lock;
}

// Try lock
async function tryLock(client: Client) {
  // This is non-blocking
  const lock = await client.tryLock("my-task");
  if (!lock.locked) {
    print("Lock already acquired.");
    return;
  }
  // Do work, then release lock
  await lock.unlock();
  return lock;
}

// lock context
async function lockContext(client: Client) {
  await client.withLock("my-task", {}, async () => {
    // Do work. Lock will be released when the callback settles
  });
}

// lock context, as `await using`
async function lockUsing(client: Client) {
  let seen: Lock;
  {
    await using lock = await client.lock("my-task");
    // Do work. Lock will be released at the end of the block
    seen = lock;
    assert.ok(lock.locked);
  }
  return seen;
}

// lock context with wait timeout
async function lockContextWaitTimeout(client: Client) {
  return client.withLock("my-task", { waitTimeoutSeconds: 30 }, async (lock) => {
    if (lock.locked) {
      // Check if lock was obtained
      // Do work. Lock will be released when the callback settles
    }
    return lock;
  });
}

// try_lock context
async function tryLockContext(client: Client) {
  return client.withTryLock("my-task", {}, async (lock) => {
    if (lock.locked) {
      // Check if lock was obtained
      // Do work. Lock will be released when the callback settles
    }
    return lock;
  });
}

// Releasing a lock
async function releasing() {
  const client = await ldlm.connect({ servers: "ldlm-server:4222" });

  const lock = await client.lock("my-task");

  // Do task

  await lock.unlock();
  return lock;
}

// Renewing a lock
async function renewing() {
  const client = await ldlm.connect({ servers: "ldlm-server:4222" });

  const lock = await client.lock("my-task", { lockTimeoutSeconds: 300 });

  // Do some work

  await lock.renew(300);

  // Do more work

  await lock.unlock();
  return lock;
}

// --- running them ---

const SEED_LOCK_NAMES = ["my-task", "expensive_operation"];

/** Runs one twin; afterwards closes every client and checks the seed's locks free again. */
async function runBlock<T>(block: (client: Client) => Promise<T>): Promise<T> {
  made = [];
  printed = [];
  try {
    const client = await ldlm.connect({ servers: "ldlm-server:4222" }); // the guide's "client" made earlier
    return await block(client);
  } finally {
    await Promise.all(made.map((c) => c.close()));
    const checker = await newClient(server.url);
    try {
      for (const lockName of SEED_LOCK_NAMES) {
        await poll(
          async () => {
            try {
              const l = await checker.tryLock(lockName);
              const got = l.locked;
              await l.unlock();
              return got;
            } catch (e) {
              if (e instanceof LockSizeMismatchError) return false; // the size-20 lock still exists
              throw e;
            }
          },
          30_000,
          `${lockName} to be free after the block`,
        );
      }
    } finally {
      await checker.close();
    }
  }
}

describe("concept guide examples in TypeScript", () => {
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  test("name", async () => {
    // Checked before runBlock closes the client (which unlocks what it holds).
    await runBlock(async () => {
      const lock = await name();
      assert.ok(lock.locked);
      assert.equal(lock.name, "my-task");
      assert.ok(lock.token > 0);
    });
  });

  test("size", async () => {
    await runBlock(async () => {
      const lock = await size();
      assert.ok(lock.locked);
      assert.equal(lock.size, 20);
    });
  });

  test("timeout", async () => {
    await runBlock(async () => {
      const lock = await timeout();
      assert.ok(lock.locked);
      assert.ok(lock.expiresAt !== undefined);
      assert.equal(lock.lockTimeoutSeconds, 300);
    });
  });

  test("simple lock", async () => {
    const lock = await runBlock(simpleLock);
    assert.equal(lock.locked, false); // unlocked
  });

  test("wait timeout", async () => {
    const lock = await runBlock(waitTimeout);
    assert.ok(lock !== undefined, "the lock was not obtained");
    assert.equal(lock.locked, false);
    assert.deepEqual(printed, []);
  });

  test("try lock", async () => {
    const lock = await runBlock(tryLock);
    assert.ok(lock !== undefined, "the lock was not obtained");
    assert.equal(lock.locked, false);
    assert.deepEqual(printed, []);
  });

  test("lock context", async () => {
    await runBlock(lockContext);
  });

  test("lock context as await using", async () => {
    const lock = await runBlock(lockUsing);
    assert.equal(lock.locked, false); // released at the end of the block
  });

  test("lock context with wait timeout", async () => {
    const lock = await runBlock(lockContextWaitTimeout);
    assert.equal(lock.locked, false); // released on exit
    assert.ok(lock.token > 0); // and it had been obtained
  });

  test("try_lock context", async () => {
    const lock = await runBlock(tryLockContext);
    assert.equal(lock.locked, false);
    assert.ok(lock.token > 0);
  });

  test("releasing", async () => {
    const lock = await runBlock(() => releasing());
    assert.equal(lock.locked, false);
  });

  test("renewing", async () => {
    const lock = await runBlock(() => renewing());
    assert.equal(lock.locked, false);
  });

  // The blocks' other branch: the lock is held by someone else.

  test("try lock when held", async () => {
    const result = await runBlock(async (client) => {
      const holder = await ldlm.connect({ servers: "ldlm-server:4222" });
      assert.ok((await holder.lock("my-task")).locked);
      return tryLock(client);
    });
    assert.equal(result, undefined); // returned early
    assert.deepEqual(printed, ["Lock already acquired."]);
  });

  test("try_lock context when held", async () => {
    await runBlock(async (client) => {
      const holder = await ldlm.connect({ servers: "ldlm-server:4222" });
      assert.ok((await holder.lock("my-task")).locked);
      const lock = await tryLockContext(client);
      assert.equal(lock.locked, false);
      assert.equal(lock.token, 0); // never obtained
      assert.equal((await client.tryLock("my-task")).locked, false);
    });
  });

  test("wait timeout when held past it", async () => {
    await runBlock(async (client) => {
      const holder = await ldlm.connect({ servers: "ldlm-server:4222" });
      assert.ok((await holder.lock("my-task")).locked);
      const lock = await client.lock("my-task", { waitTimeoutSeconds: 0.2 });
      assert.equal(lock.locked, false);
      assert.ok(lock.signal.aborted);
    });
  });

  // As a script, in a process of its own: when the process ends, its
  // connection closes and the service frees the lock.
  test("the name block as a script", async () => {
    const dir = join(PKG_DIR, "build", "scripts");
    mkdirSync(dir, { recursive: true });
    const script = join(dir, "seed-name.mjs");
    writeFileSync(
      script,
      [
        `import { Client } from "@ldlm/client";`,
        `const client = await Client.connect({ servers: ${JSON.stringify(server.url)} });`,
        `const lock = await client.lock("my-task");`,
        `console.log("done", lock.locked);`,
        `process.exit(0); // without close(): the connection just goes away`,
      ].join("\n"),
    );
    const res = spawnSync(process.execPath, [script], { encoding: "utf8", timeout: 120_000 });
    assert.equal(res.status, 0, res.stderr);
    assert.equal(res.stdout.trim(), "done true");
    const checker = await newClient(server.url);
    try {
      const lock = await checker.lock("my-task", { waitTimeoutSeconds: 30 });
      assert.ok(lock.locked);
      await lock.unlock();
    } finally {
      await checker.close();
    }
  });

  test("the guide is the one these twins follow", () => {
    // The Python blocks the twins stand for: the guide's python code blocks.
    const candidates = [process.env.LDLM_SEED_CONCEPTS, join(PKG_DIR, "../../../shared/seed/concepts.rst"), "/work/shared/seed/concepts.rst"];
    const path = candidates.find((p) => p && tryRead(p) !== undefined);
    if (path === undefined) return; // guide not available here
    const blocks = tryRead(path)!.split(".. code-block:: python").length - 1;
    assert.equal(blocks, 11, "the guide has 11 Python examples; each has a twin above");
  });
});

function tryRead(p: string): string | undefined {
  try {
    return readFileSync(p, "utf8");
  } catch {
    return undefined;
  }
}
