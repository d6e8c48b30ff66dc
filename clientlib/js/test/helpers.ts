// Test setup: builds the real `ldlm` binary from the repository (or takes
// LDLM_BINARY) and runs it, embedded NATS server and lock service, on a free
// port. Every wait is bounded by a deadline; nothing asserts on timing.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, existsSync, writeFileSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";

import { connect } from "@nats-io/transport-node";
import { type NatsConnection } from "@nats-io/nats-core";
import { Client, type ClientOptions } from "@ldlm/client";

export const PKG_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const REPO_ROOT = resolve(PKG_DIR, "../..");
const START_DEADLINE_MS = 60_000;

let builtBinary: string | undefined;

/** The ldlm binary: LDLM_BINARY, or one built with go into a temp dir (once per process). */
export function ldlmBinary(): string {
  if (process.env.LDLM_BINARY) return process.env.LDLM_BINARY;
  if (builtBinary) return builtBinary;
  const out = join(mkdtempSync(join(tmpdir(), "ldlm-js-bin-")), "ldlm");
  const res = spawnSync("go", ["build", "-o", out, "./cmd/ldlm"], { cwd: REPO_ROOT, encoding: "utf8", timeout: 1_200_000 });
  if (res.status !== 0) {
    throw new Error(`go build ./cmd/ldlm failed:\n${res.stdout}\n${res.stderr}\n${res.error ?? ""}`);
  }
  builtBinary = out;
  return out;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls cond until it returns a truthy value; fails after timeoutMs. */
export async function poll<T>(cond: () => T | Promise<T>, timeoutMs: number, what = "condition", intervalMs = 50): Promise<T> {
  const end = performance.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** Rejects if p does not settle within ms: a bound for waits that must end. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: ReturnType<typeof setTimeout>;
  const limit = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000}s`)), ms);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(t));
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export function uniqueName(prefix = "test"): string {
  return `${prefix}-${randomUUID().slice(0, 12)}`;
}

export class Server {
  constructor(
    readonly url: string,
    readonly port: number,
    readonly proc: ChildProcess,
    readonly logPath: string,
  ) {}

  log(): string {
    try {
      return readFileSync(this.logPath, "utf8").slice(-5000);
    } catch {
      return "";
    }
  }

  /** Stops the server (SIGTERM unless told) and waits for it to exit. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => this.proc.once("exit", () => r()));
    this.proc.kill(signal);
    const t = setTimeout(() => this.proc.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
  }
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ port, host: "127.0.0.1" });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/**
 * Starts `ldlm` on port (a free one if not given) and waits until the lock
 * service answers a trylock.
 */
export async function startServer(port?: number, env: Record<string, string> = {}): Promise<Server> {
  const binary = ldlmBinary();
  const logDir = mkdtempSync(join(tmpdir(), "ldlm-js-log-"));
  for (let attempt = 0; ; attempt++) {
    const p = port ?? (await freePort());
    const logPath = join(logDir, `ldlm-${p}-${attempt}.log`);
    const fd = openSync(logPath, "w");
    const childEnv: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith("LDLM_") && v !== undefined) childEnv[k] = v;
    }
    Object.assign(childEnv, { LDLM_EMBEDDED_LISTEN: `127.0.0.1:${p}`, LDLM_LOG_LEVEL: "debug" }, env);
    const proc = spawn(binary, [], { env: childEnv, stdio: ["ignore", fd, fd] });
    const server = new Server(`nats://127.0.0.1:${p}`, p, proc, logPath);
    const end = performance.now() + START_DEADLINE_MS;
    let up = false;
    while (performance.now() < end && proc.exitCode === null) {
      if (await portOpen(p)) {
        up = true;
        break;
      }
      await sleep(50);
    }
    if (up) {
      await waitService(server, end);
      return server;
    }
    await server.stop("SIGKILL");
    if (attempt >= 2) throw new Error(`ldlm did not start:\n${server.log()}`);
    await sleep(500);
  }
}

/** The port accepts before the lock service has subscribed: probe it. */
async function waitService(server: Server, end: number): Promise<void> {
  const nc = await connect({ servers: server.url });
  try {
    for (;;) {
      try {
        const m = await nc.request(`ldlm.trylock.probe-${randomUUID()}`, "", { timeout: 2000 });
        const r = m.json<{ locked?: boolean; key?: string; name?: string }>();
        if (r.locked) {
          await nc.request(`ldlm.unlock.${r.name}`, JSON.stringify({ key: r.key }), { timeout: 2000 });
          return;
        }
      } catch (e) {
        if (performance.now() > end || server.proc.exitCode !== null) {
          throw new Error(`lock service not ready: ${e}\n${server.log()}`);
        }
      }
      await sleep(100);
    }
  } finally {
    await nc.close();
  }
}

/** A Client for the server. */
export async function newClient(url: string, options: ClientOptions = {}): Promise<Client> {
  return Client.connect({ servers: url }, options);
}

interface AdminLock {
  name: string;
  size: number;
  holders: { owner: string; token: number }[] | null;
  waiters: unknown[] | null;
}

export async function adminList(nc: NatsConnection): Promise<AdminLock[]> {
  const m = await nc.request("ldlm.admin.list", "", { timeout: 10_000 });
  return m.json<{ locks: AdminLock[] | null }>().locks ?? [];
}

/** Whether the service holds or queues anything for the lock name. */
export async function adminHolds(nc: NatsConnection, name: string): Promise<boolean> {
  return (await adminList(nc)).some((l) => l.name === name && ((l.holders?.length ?? 0) > 0 || (l.waiters?.length ?? 0) > 0));
}

/** Force-releases every holder of the lock name (PREFIX.admin.unlock.NAME). */
export async function adminUnlock(nc: NatsConnection, name: string): Promise<unknown> {
  const { encodeName } = await import("@ldlm/client");
  const m = await nc.request(`ldlm.admin.unlock.${encodeName(name)}`, "{}", { timeout: 10_000 });
  return m.json();
}

export function fileExists(p: string): boolean {
  return existsSync(p);
}

// --- a NATS cluster (tests of sessions) ---

/**
 * The lock service's reconnect grace in the cluster tests: the default.
 * A client whose connection is younger than its reconnect wait (2 s) waits
 * that long before it dials again, so a much shorter grace would make a
 * test's fresh client late.
 */
export const CLUSTER_GRACE_SECONDS = 5;

let builtNatsServer: string | undefined;

/** nats-server: NATS_SERVER_BINARY, or one built with go from the repository's Go module (the pinned version). */
export function natsServerBinary(): string {
  if (process.env.NATS_SERVER_BINARY) return process.env.NATS_SERVER_BINARY;
  if (builtNatsServer) return builtNatsServer;
  const out = join(mkdtempSync(join(tmpdir(), "ldlm-js-bin-")), "nats-server");
  const res = spawnSync("go", ["build", "-o", out, "github.com/nats-io/nats-server/v2"], { cwd: REPO_ROOT, encoding: "utf8", timeout: 1_200_000 });
  if (res.status !== 0) {
    throw new Error(`go build nats-server failed:\n${res.stdout}\n${res.stderr}\n${res.error ?? ""}`);
  }
  builtNatsServer = out;
  return out;
}

/**
 * A NATS cluster of nats-server processes (an application account, the
 * default for clients without credentials, and a system account), with
 * the lock service on member 0 in external mode unless told otherwise.
 */
export class Cluster {
  readonly members: Server[] = [];
  service: Server | undefined;

  private constructor(readonly dir: string) {}

  static async start(options: { service?: boolean; size?: number } = {}): Promise<Cluster> {
    const c = new Cluster(mkdtempSync(join(tmpdir(), "ldlm-js-cluster-")));
    try {
      await c.#start(options.size ?? 2, options.service ?? true);
    } catch (e) {
      await c.close();
      throw e;
    }
    return c;
  }

  async #start(size: number, service: boolean): Promise<void> {
    const ports: number[] = [];
    const clusterPorts: number[] = [];
    for (let i = 0; i < size; i++) {
      ports.push(await freePort());
      clusterPorts.push(await freePort());
    }
    const routes = clusterPorts.map((p) => `nats-route://127.0.0.1:${p}`).join(", ");
    const binary = natsServerBinary();
    for (let i = 0; i < size; i++) {
      const conf = join(this.dir, `m${i}.conf`);
      writeFileSync(
        conf,
        `server_name: m${i}
listen: 127.0.0.1:${ports[i]}
cluster { name: ldlmtest, listen: 127.0.0.1:${clusterPorts[i]}, routes: [${routes}] }
accounts {
  SYS { users [{user: sys, password: sys}] }
  APP { users [{user: app, password: app}] }
}
system_account: SYS
no_auth_user: app
`,
      );
      const logPath = join(this.dir, `m${i}.log`);
      const fd = openSync(logPath, "w");
      const proc = spawn(binary, ["-c", conf], { stdio: ["ignore", fd, fd] });
      this.members.push(new Server(`nats://127.0.0.1:${ports[i]}`, ports[i], proc, logPath));
    }
    const end = performance.now() + START_DEADLINE_MS;
    for (const m of this.members) {
      while (!(await portOpen(m.port))) {
        if (performance.now() > end || m.proc.exitCode !== null) throw new Error(`nats-server did not start:\n${m.log()}`);
        await sleep(50);
      }
    }
    if (!service) return;
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith("LDLM_") && v !== undefined) env[k] = v;
    }
    Object.assign(env, {
      LDLM_NATS_URL: this.members[0].url,
      LDLM_SYSTEM_USER: "sys",
      LDLM_SYSTEM_PASSWORD: "sys",
      LDLM_RECONNECT_GRACE: `${CLUSTER_GRACE_SECONDS}s`,
      LDLM_LOG_LEVEL: "debug",
    });
    const logPath = join(this.dir, "ldlm.log");
    const fd = openSync(logPath, "w");
    const proc = spawn(ldlmBinary(), [], { env, stdio: ["ignore", fd, fd] });
    this.service = new Server(this.members[0].url, this.members[0].port, proc, logPath);
    // The service answers a client of every member once its subscriptions
    // crossed the routes.
    for (const m of this.members) {
      await waitService(new Server(m.url, m.port, proc, logPath), end);
    }
    // It announces its start (PREFIX.instance.started) only after it
    // answers: a client that hears it then asks its waits again (the
    // instance may have replaced another). Wait for the announcement to be
    // out (it is logged after), so that the tests' clients, made later, do
    // not hear it.
    await poll(() => readFileSync(logPath, "utf8").includes("lock service ready"), Math.max(1, end - performance.now()), "the service's start");
  }

  /** Shuts member i down (SIGTERM: the server closes its clients' connections itself). */
  async stopMember(i: number): Promise<void> {
    await this.members[i].stop();
  }

  async close(): Promise<void> {
    await this.service?.stop();
    for (const m of this.members) await m.stop();
  }
}

/** The servers nc may reconnect to, as nats.js knows them (given and learnt from the cluster). */
export function knownServers(nc: NatsConnection): number {
  const servers = (nc as unknown as { protocol?: { servers?: { getServers?: () => unknown[] } } }).protocol?.servers?.getServers?.();
  return servers?.length ?? 0;
}

// --- one nats-server, and the lock service on it (durable-state tests) ---

/**
 * Starts one nats-server on port (a free one if not given), with the
 * cluster tests' accounts; with storeDir, JetStream keeps its file storage
 * there (for LDLM_STATE=jetstream). Without a lock service.
 */
export async function startNats(port?: number, storeDir?: string): Promise<Server> {
  const p = port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), "ldlm-js-nats-"));
  const conf = join(dir, "nats.conf");
  writeFileSync(
    conf,
    `listen: 127.0.0.1:${p}
${storeDir ? `jetstream { store_dir: ${JSON.stringify(storeDir)} }` : ""}
accounts {
  SYS { users [{user: sys, password: sys}] }
  APP { ${storeDir ? "jetstream: enabled, " : ""}users [{user: app, password: app}] }
}
system_account: SYS
no_auth_user: app
`,
  );
  const logPath = join(dir, "nats.log");
  const fd = openSync(logPath, "w");
  const proc = spawn(natsServerBinary(), ["-c", conf], { stdio: ["ignore", fd, fd] });
  const server = new Server(`nats://127.0.0.1:${p}`, p, proc, logPath);
  const end = performance.now() + START_DEADLINE_MS;
  while (!(await portOpen(p))) {
    if (performance.now() > end || proc.exitCode !== null) throw new Error(`nats-server did not start:\n${server.log()}`);
    await sleep(50);
  }
  return server;
}

/**
 * Starts the lock service in external mode on the NATS server at url
 * (with the system account of startNats) and waits until it answers and
 * has announced its start.
 */
export async function startService(url: string, env: Record<string, string> = {}): Promise<Server> {
  const childEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("LDLM_") && v !== undefined) childEnv[k] = v;
  }
  Object.assign(childEnv, { LDLM_NATS_URL: url, LDLM_SYSTEM_USER: "sys", LDLM_SYSTEM_PASSWORD: "sys", LDLM_LOG_LEVEL: "debug" }, env);
  const logPath = join(mkdtempSync(join(tmpdir(), "ldlm-js-log-")), "ldlm.log");
  const fd = openSync(logPath, "w");
  const proc = spawn(ldlmBinary(), [], { env: childEnv, stdio: ["ignore", fd, fd] });
  const server = new Server(url, Number(new URL(url).port), proc, logPath);
  const end = performance.now() + START_DEADLINE_MS;
  await waitService(server, end);
  await poll(() => readFileSync(logPath, "utf8").includes("lock service ready"), Math.max(1, end - performance.now()), "the service's start");
  return server;
}
