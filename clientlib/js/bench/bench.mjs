// Lock+unlock cycles/s of @ldlm/client at 1 and 64 concurrent callers on one
// connection, side by side with raw nc.request to an echo responder (both
// in Node; the responder in a worker thread of this process), and with the Go client (`ldlm bench`) when asked, against one
// lock server. Workloads alternate round by round; the table gives the
// median of the rounds.
//
//   npm run build && node bench/bench.mjs [--server URL] [--duration 3] [--rounds 3] [--go]
//
// Without --server it starts `ldlm` (LDLM_BINARY, or built with go) on a
// free port. --go also runs `ldlm bench --server URL` (the Go client,
// uncontended, shared connection) between the Node rounds.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Worker } from "node:worker_threads";

import { connect } from "@nats-io/transport-node";
import { Client } from "@ldlm/client";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const { values: args } = parseArgs({
  options: {
    server: { type: "string" },
    duration: { type: "string", default: "3" },
    rounds: { type: "string", default: "3" },
    workers: { type: "string", default: "1,64" },
    go: { type: "boolean", default: false },
    "legacy-owner": { type: "boolean", default: false },
  },
});
const durationMs = Number(args.duration) * 1000;
const rounds = Number(args.rounds);
const workers = args.workers.split(",").map(Number);

function binary() {
  if (process.env.LDLM_BINARY) return process.env.LDLM_BINARY;
  const out = join(mkdtempSync(join(tmpdir(), "ldlm-js-bench-")), "ldlm");
  const res = spawnSync("go", ["build", "-o", out, "./cmd/ldlm"], { cwd: root, stdio: "inherit" });
  if (res.status !== 0) throw new Error("go build ./cmd/ldlm failed");
  return out;
}

function freePort() {
  return new Promise((res) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => res(p));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function startLdlm(bin) {
  const port = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("LDLM_")));
  env.LDLM_EMBEDDED_LISTEN = `127.0.0.1:${port}`;
  const proc = spawn(bin, [], { env, stdio: "ignore" });
  const url = `nats://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    try {
      const nc = await connect({ servers: url, reconnect: false });
      try {
        const m = await nc.request(`ldlm.trylock.bench-probe-${i}`, "", { timeout: 2000 });
        const r = m.json();
        if (r.locked) {
          await nc.request(`ldlm.unlock.bench-probe-${i}`, JSON.stringify({ key: r.key }), { timeout: 2000 });
          return { url, proc };
        }
      } finally {
        await nc.close();
      }
    } catch {
      // not up yet
    }
    await sleep(100);
  }
  proc.kill("SIGKILL");
  throw new Error("ldlm did not start");
}

/** Runs c loops of op for durationMs; returns operations per second. */
async function measure(c, op) {
  let count = 0;
  let stop = false;
  const t0 = performance.now();
  const timer = setTimeout(() => (stop = true), durationMs);
  await Promise.all(
    Array.from({ length: c }, async (_, i) => {
      while (!stop) {
        await op(i);
        count++;
      }
    }),
  );
  clearTimeout(timer);
  return count / ((performance.now() - t0) / 1000);
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  let server;
  let url = args.server;
  let bin;
  if (!url) {
    bin = binary();
    server = await startLdlm(bin);
    url = server.url;
  }
  // The echo responder: a plain Node subscriber on its own connection, in a
  // worker thread, so that the requester's thread does only what the lock
  // client's does (the lock service is another process too).
  const responder = new Worker(
    `const { parentPort, workerData } = require("node:worker_threads");
     import(workerData.nats).then(async ({ connect }) => {
       const nc = await connect({ servers: workerData.url });
       nc.subscribe("bench.echo", { callback: (_e, m) => m.respond(m.data) });
       await nc.flush();
       parentPort.postMessage("ready");
       parentPort.once("message", async () => { await nc.close(); parentPort.postMessage("closed"); });
     });`,
    { eval: true, workerData: { url, nats: import.meta.resolve("@nats-io/transport-node") } },
  );
  await new Promise((r) => responder.once("message", r));
  const nc = await connect({ servers: url });
  const client = await Client.connect({ servers: url }, { legacyOwner: args["legacy-owner"] });
  const payload = new TextEncoder().encode(JSON.stringify({ key: "0123456789abcdef0123456789abcdef" }));
  const results = {}; // "workload c" -> [per round]
  const add = (k, v) => (results[k] ??= []).push(v);
  const goLines = [];

  for (let round = 0; round < rounds; round++) {
    for (const c of workers) {
      add(`echo ${c}`, await measure(c, () => nc.request("bench.echo", payload, { timeout: 10_000 })));
      add(`ldlm ${c}`, await measure(c, async (i) => {
        const l = await client.lock(`bench-${i}`);
        await l.unlock();
      }));
    }
    if (args.go) {
      const res = spawnSync(bin ?? binary(), ["bench", "--server", url, "--workers", workers.join(","), "--conns", "shared",
        "--workloads", "uncontended", "--duration", `${durationMs / 1000}s`, "--rounds", "1"], { encoding: "utf8" });
      goLines.push(res.stdout + res.stderr);
    }
  }

  console.log(`node ${process.version}, ${rounds} rounds of ${durationMs / 1000}s, median per row; server ${args.server ? url : "ldlm (embedded NATS) started by the bench"}`);
  console.log("| callers | Node nc.request echo (req/s) | echo/2 | @ldlm/client lock+unlock (cycles/s) | ratio to echo/2 |");
  console.log("|---:|---:|---:|---:|---:|");
  for (const c of workers) {
    const echo = median(results[`echo ${c}`]);
    const lock = median(results[`ldlm ${c}`]);
    console.log(`| ${c} | ${echo.toFixed(0)} | ${(echo / 2).toFixed(0)} | ${lock.toFixed(0)} | ${(lock / (echo / 2)).toFixed(2)} |`);
  }
  for (const [k, v] of Object.entries(results)) console.log(`# ${k}: ${v.map((x) => x.toFixed(0)).join(" ")}`);
  for (const g of goLines) console.log("\n# Go client (ldlm bench --server, one round):\n" + g);

  await client.close();
  await nc.close();
  responder.postMessage("close");
  await new Promise((r) => responder.once("message", r));
  await responder.terminate();
  if (server) {
    server.proc.kill("SIGTERM");
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
