// The shared wire test vectors (subjects/testdata/wire-vectors.json; WIRE-V2
// item 6), run by this client:
//
//   - names and owners: the client's encoding functions;
//   - requests and the names' service errors: against the real service;
//   - replies and notices: against a stand-in service on another prefix
//     (a responder on the real NATS server that answers with the case's
//     body and publishes its notices), through the client's own code.
//
// LDLM_WIRE_VECTORS points at another copy of the file.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

import { connect } from "@nats-io/transport-node";
import type { Msg, NatsConnection, Subscription } from "@nats-io/nats-core";
import { headers } from "@nats-io/nats-core";
import {
  Client,
  ERRORS_BY_CODE,
  HEADER_OWNER,
  HEADER_SESSION,
  LdlmError,
  LockLostError,
  encodeName,
  formatOwner,
  isSessionId,
  lockSubject,
  lostSubject,
  newSessionId,
  parseAttachReply,
  type Lock,
} from "@ldlm/client";
import * as ldlm from "@ldlm/client";
import { Cluster, REPO_ROOT, knownServers, newClient, poll, startServer, uniqueName, within, type Server } from "./helpers.js";

const PATH = process.env.LDLM_WIRE_VECTORS || join(REPO_ROOT, "subjects", "testdata", "wire-vectors.json");

// Client ids above 2^53 do not survive JSON.parse as numbers: keep them as text.
const vectors = existsSync(PATH) ? JSON.parse(readFileSync(PATH, "utf8").replace(/("client_id":\s*)(\d{16,})/g, '$1"$2"')) : undefined;

interface Case {
  name: string;
  pending?: string;
  checked_by?: string;
  [k: string]: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** The TS class named by a case: "LDLMError" (the file's name for the base class) is LdlmError here. */
function tsClass(name: string): new (...args: never[]) => Error {
  const n = name === "LDLMError" ? "LdlmError" : name;
  const cls = (ldlm as unknown as Record<string, unknown>)[n];
  assert.equal(typeof cls, "function", `@ldlm/client exports ${n}`);
  return cls as new (...args: never[]) => Error;
}

function bodyOf(c: Case): string {
  return (c.body ?? "") + (c.pad ? c.pad.char.repeat(c.pad.count) : "");
}

if (vectors === undefined) {
  test("wire vectors", { skip: `${PATH} is not in this tree` }, () => {});
} else {
  describe(`wire vectors (version ${vectors.version})`, () => {
    let server: Server;
    let client: Client;
    let raw: NatsConnection;
    before(async () => {
      server = await startServer();
      client = await newClient(server.url);
      raw = await connect({ servers: server.url });
    });
    after(async () => {
      await client.close();
      await raw.close();
      await server.stop();
    });

    test("error codes: one class per code, named as the file says", () => {
      for (const [code, names] of Object.entries(vectors.error_codes as Record<string, { ts: string }>)) {
        const cls = tsClass(names.ts);
        assert.equal(ERRORS_BY_CODE[code as keyof typeof ERRORS_BY_CODE], cls, code);
      }
    });

    test("names: encoding", () => {
      for (const c of vectors.names as Case[]) {
        assert.equal(encodeName(c.lock_name), c.expect.token, c.name);
        assert.equal(lockSubject("ldlm", "lock", c.lock_name), c.expect.subject, c.name);
      }
    });

    test("names: what the service answers", async () => {
      for (const c of (vectors.names as Case[]).filter((c) => !c.pending)) {
        if (c.expect.service_error) {
          await assert.rejects(client.tryLock(c.lock_name), tsClass(vectors.error_codes[c.expect.service_error].ts), c.name);
        } else {
          const l = await client.tryLock(c.lock_name);
          assert.ok(l.locked, c.name);
          await l.unlock();
        }
      }
    });

    test("subject tails: what the service decodes", async () => {
      for (const c of (vectors.subject_tails as Case[]).filter((c) => !c.pending)) {
        const m = await raw.request(`ldlm.trylock.${c.tail}`, "", { timeout: 10_000 });
        const r = m.json<{ locked?: boolean; name?: string; key?: string; error?: { code: string } }>();
        if (c.expect.error) {
          assert.equal(r.error?.code, c.expect.error, c.name);
        } else {
          assert.equal(r.name, c.expect.lock_name, c.name);
          if (r.locked) await raw.request(`ldlm.unlock.${c.tail}`, JSON.stringify({ key: r.key }), { timeout: 10_000 });
        }
      }
    });

    test("owners: header and lost subject", () => {
      for (const c of vectors.owners as Case[]) {
        const header = formatOwner(c.server_id, c.client_id);
        assert.equal(header, c.expect.header, c.name);
        assert.equal(lostSubject(c.prefix, header), c.expect.lost_subject, c.name);
      }
    });

    test("requests: what the service answers", async (t) => {
      for (const c of vectors.requests as Case[]) {
        if (c.pending) {
          t.diagnostic(`pending, skipped: ${c.name} (${c.pending})`);
          continue;
        }
        const name = uniqueName("vec");
        const m = await raw.request(`ldlm.${c.op}.${name}`, bodyOf(c), { timeout: 10_000 });
        const r = m.json<{ locked?: boolean; key?: string; error?: { code: string } }>();
        const want = c.expect.error ?? c.expect.on_free_lock;
        assert.equal(r.error?.code, want, `${c.name}: ${JSON.stringify(r)}`);
        if (r.locked) await raw.request(`ldlm.unlock.${name}`, JSON.stringify({ key: r.key }), { timeout: 10_000 });
      }
    });

    test("session headers: the client's rule and the service's answers", async () => {
      const cases = vectors.session_headers as Case[];
      assert.ok(cases.length > 0);
      const owner = formatOwner(raw.info!.server_id, raw.info!.client_id);
      for (const c of cases) {
        const valid = c.expect.error === undefined;
        assert.equal(isSessionId(c.header), valid, c.name);
        if (valid) assert.equal(c.expect.session, c.header, c.name);
        // Sent as the clients send it: with the owner of the sending connection.
        const h = headers();
        h.set(HEADER_OWNER, owner);
        h.set(HEADER_SESSION, c.header);
        const name = uniqueName("vec");
        const m = await raw.request(`ldlm.trylock.${name}`, "", { timeout: 10_000, headers: h });
        const r = m.json<{ locked?: boolean; key?: string; error?: { code: string } }>();
        assert.equal(r.error?.code, c.expect.error, `${c.name}: ${JSON.stringify(r)}`);
        if (valid) {
          assert.ok(r.locked, c.name);
          const u = await raw.request(`ldlm.unlock.${name}`, JSON.stringify({ key: r.key }), { timeout: 10_000, headers: h });
          assert.ok(u.json<{ unlocked?: boolean }>().unlocked, c.name);
        }
      }
      const made = new Set(Array.from({ length: 100 }, () => newSessionId()));
      assert.equal(made.size, 100);
      for (const s of made) assert.ok(isSessionId(s) && /^[0-9a-f]{32}$/.test(s), s);
    });

    test("attach replies: decoded", () => {
      const cases = vectors.attach_replies as Case[];
      assert.ok(cases.length > 0);
      for (const c of cases) {
        const r = parseAttachReply(c.body);
        assert.equal(r.error?.code, c.expect.error, c.name);
        for (const [field, value] of Object.entries((c.expect.fields ?? {}) as Record<string, unknown>)) {
          assert.deepEqual((r as unknown as Record<string, unknown>)[field], value, `${c.name}: ${field}`);
        }
      }
    });

    // After its server shut down, the client (reconnected to the other
    // member of a cluster) gets the case's attach reply from a stand-in
    // service, with the case's keys standing for the client's own: a held
    // lock it lists stays held, a wait it lists keeps waiting for the reply
    // to the request already sent; the others are lost, or withdrawn and
    // asked again; resumed=false makes a new session id; an error reply is
    // as no reply (as before sessions).
    for (const ac of (vectors.attach_replies ?? []) as Case[]) {
      test(`attach reply played: ${ac.name}`, async () => {
        const fields = ac.expect.fields ?? {};
        const ok = ac.expect.error === undefined && fields.attached === true;
        const keptNames = new Set<string>(ok ? (fields.held ?? []).map((h: { name: string }) => h.name) : []);
        const waitingNames = new Set<string>(ok ? (fields.waiting ?? []).map((w: { name: string }) => w.name) : []);
        const cluster = await Cluster.start({ service: false });
        let svc: NatsConnection | undefined;
        let c: Client | undefined;
        try {
          const seen: { op: string; body: Record<string, string>; h: Record<string, string | undefined> }[] = [];
          const parked: Msg[] = [];
          const keys: Record<string, string> = {};
          svc = await connect({ servers: cluster.members[0].url });
          svc.subscribe("att.>", {
            callback: (_e, m) => {
              const [, op, name] = m.subject.split(".");
              const body = m.data.length ? m.json<Record<string, string>>() : {};
              seen.push({ op, body, h: { owner: m.headers?.get(HEADER_OWNER), session: m.headers?.get(HEADER_SESSION) || undefined } });
              if (op === "attach") {
                const reply = JSON.parse(ac.body);
                for (const e of [...(reply.held ?? []), ...(reply.waiting ?? [])]) e.key = keys[e.name];
                m.respond(JSON.stringify(reply));
              } else if (op === "trylock") {
                m.respond(JSON.stringify({ locked: true, name, key: body.key, token: 1 }));
              } else if (op === "lock") {
                parked.push(m);
              } else if (op === "unlock") {
                m.respond(JSON.stringify({ unlocked: true, name }));
              }
            },
          });
          await svc.flush();
          c = await Client.connect({ servers: cluster.members[1].url, maxReconnectAttempts: -1 }, { prefix: "att" });
          const client = c;
          await poll(() => knownServers(client.nc) > 1, 30_000, "the client learnt member 0");
          const held = await client.tryLock("job");
          assert.ok(held.locked);
          const ac2 = new AbortController();
          const queue = client.lock("queue", { signal: ac2.signal });
          queue.catch(() => undefined);
          await poll(() => parked.length > 0, 30_000, "the lock request parked");
          keys.job = held.key;
          keys.queue = parked[0].json<{ key: string }>().key;
          const session = client.sessionId;
          const before = client.nc.info?.server_id;
          const owner = `${client.nc.info!.server_id}:${client.nc.info!.client_id}`;
          await cluster.stopMember(1);
          await poll(() => client.attachSettled && client.nc.info?.server_id !== before, 30_000, "the client reconnected and attached");

          const attach = seen.filter((s) => s.op === "attach");
          assert.equal(attach.length, 1);
          assert.deepEqual(attach[0].body, {});
          assert.equal(attach[0].h.session, session);
          const newOwner = `${client.nc.info!.server_id}:${client.nc.info!.client_id}`;
          assert.ok(attach[0].h.owner === newOwner && newOwner !== owner, `${attach[0].h.owner} ${owner}`);

          if (keptNames.has("job")) {
            assert.ok(held.locked && held.token === 1, String(held.lostError));
          } else {
            assert.equal(held.locked, false);
            assert.equal(held.lostError?.reason, "connection-lost");
            if (ok) assert.match(held.lostError!.message, /released while disconnected/);
          }
          const locks = () => seen.filter((s) => s.op === "lock");
          if (waitingNames.has("queue")) {
            assert.equal(locks().length, 1, "a listed wait was asked again");
            parked[0].respond(JSON.stringify({ locked: true, name: "queue", key: keys.queue, token: 7 }));
            const got = await within(queue, 30_000, "the kept wait's grant");
            assert.ok(got.locked && got.token === 7 && got.key === keys.queue);
          } else {
            await poll(() => locks().length === 2, 30_000, "the wait withdrawn and asked again");
            assert.ok(seen.some((s) => s.op === "unlock" && s.body.key === keys.queue), "not withdrawn");
            ac2.abort();
          }
          if (ok && JSON.parse(ac.body).resumed !== true) {
            assert.ok(client.sessionId !== session && /^[0-9a-f]{32}$/.test(client.sessionId!));
          } else {
            assert.equal(client.sessionId, session);
          }
          assert.equal(locks()[locks().length - 1].h.session, client.sessionId);
        } finally {
          await c?.close();
          await svc?.close();
          await cluster.close();
        }
      });
    }

    describe("replies and notices, through the client", () => {
      // A stand-in service on prefix "vec": answers the case's op with the
      // case's body, everything else with a plain success.
      let svc: NatsConnection;
      let answer: (op: string, msg: Msg) => string | undefined = () => undefined;
      let lastOwner = "";
      const granted = (name: string, token: number, instance: string) =>
        JSON.stringify({ locked: true, name, key: "k1", token, size: 1, instance });

      before(async () => {
        svc = await connect({ servers: server.url });
        svc.subscribe("vec.>", {
          callback: (_e, m) => {
            const op = m.subject.split(".")[1];
            if (op === "sync") {
              m.respond("{}");
              return;
            }
            lastOwner = m.headers?.get("Ldlm-Owner") ?? "";
            const body = answer(op, m) ?? (op === "unlock" ? '{"unlocked":true,"name":"job"}' : granted("job", 17, "I1"));
            m.respond(body);
          },
        });
        await svc.flush();
      });
      after(async () => {
        await svc.close();
      });

      const vecClient = () => Client.connect({ servers: server.url }, { prefix: "vec", requestTimeoutSeconds: 0.5 });
      // Everything the stand-in published before answering this has reached the client.
      const sync = async (c: Client) => void (await c.nc.request("vec.sync", "", { timeout: 10_000 }));

      test("the owner header is SERVER_ID:CLIENT_ID", async () => {
        const c = await vecClient();
        try {
          answer = () => undefined;
          const l = await c.tryLock("job");
          assert.equal(lastOwner, `${c.nc.info!.server_id}:${c.nc.info!.client_id}`);
          await l.unlock();
        } finally {
          await c.close();
        }
      });

      for (const rc of vectors.replies as Case[]) {
        test(`reply: ${rc.name}`, { skip: rc.pending ? `pending: ${rc.pending}` : false }, async () => {
          const c = await vecClient();
          let asked = 0;
          answer = (op) => {
            if (op !== rc.op) return undefined;
            asked++;
            return bodyOf(rc);
          };
          try {
            const want = rc.expect.client;
            // A lock timeout, to see waited_ms counted in the lock's expiry.
            const timed = { lockTimeoutSeconds: 60, autoRenew: false };
            const act = async (): Promise<Lock | void> => {
              if (rc.op === "lock") return c.lock("job", { waitTimeoutSeconds: 0.5, ...timed });
              if (rc.op === "trylock") return c.tryLock("job", timed);
              const held = await c.tryLock("job");
              assert.ok(held.locked);
              if (rc.op === "renew") {
                await held.renew(10);
                return held;
              }
              await held.unlock();
              return held;
            };
            switch (want.outcome) {
              case "granted": {
                const l = (await act()) as Lock;
                assert.ok(l.locked);
                assert.equal(l.token, rc.expect.fields.token);
                assert.equal(l.size, rc.expect.fields.size);
                assert.equal(l.instance, rc.expect.fields.instance ?? "");
                // The lock timeout counts from sent + waited_ms (absent: 0):
                // never later than that; after a long wait, well past the
                // 60 s counted from the request alone.
                const waited = Number(rc.expect.fields.waited_ms ?? 0);
                const left = l.expiresAt!.getTime() - Date.now();
                assert.ok(left <= waited + 60_000 + 1000, `expires in ${left} ms, waited_ms ${waited}`);
                if (waited > 0) assert.ok(left > 60_000 + waited / 2, `expires in ${left} ms: waited_ms ${waited} not counted`);
                break;
              }
              case "not_obtained": {
                const l = (await act()) as Lock;
                assert.equal(l.locked, false);
                break;
              }
              case "renewed":
              case "unlocked":
                await act();
                break;
              case "error":
                await assert.rejects(act(), tsClass(want.error_names.ts));
                break;
              case "retry": {
                const e = await act().catch((err: unknown) => err);
                assert.ok(e instanceof tsClass(want.error_names.ts), String(e));
                assert.ok(asked >= 2, `asked again (${asked} times)`);
                break;
              }
              case "lost": {
                const e = await act().catch((err: unknown) => err);
                assert.ok(e instanceof LockLostError, String(e));
                assert.equal(e.reason, want.cause.reason);
                assert.ok(e.cause instanceof tsClass(want.cause.ts));
                break;
              }
              default:
                assert.fail(`unknown outcome ${want.outcome}`);
            }
          } finally {
            answer = () => undefined;
            await c.close();
          }
        });
      }

      for (const nc of vectors.notices as Case[]) {
        test(`notice: ${nc.name}`, { skip: nc.pending ? `pending: ${nc.pending}` : false }, async () => {
          const c = await vecClient();
          const ev = nc.event;
          const subject = () => (ev.kind === "lost" ? lostSubject("vec", lastOwner) : String(ev.subject).replace(/^ldlm\./, "vec."));
          answer = (op, m) => {
            if (op !== "trylock") return undefined;
            if (m.subject === "vec.trylock.other") return ev.body;
            if (nc.timing === "before_reply") svc.publish(subject(), ev.body);
            return granted(nc.held.name, nc.held.token, nc.held.instance);
          };
          try {
            const lock = await c.tryLock(nc.held.name);
            if (nc.timing === "after_reply") {
              if (ev.kind === "reply") {
                await c.tryLock("other");
              } else {
                svc.publish(subject(), ev.body);
              }
            }
            await within(sync(c), 10_000, "sync");
            if (nc.expect.action === "keep") {
              assert.ok(lock.locked, "kept");
            } else {
              assert.equal(lock.locked, false, "lost");
              assert.ok(lock.lostError instanceof LockLostError);
              assert.equal(lock.lostError.reason, nc.expect.ts);
              assert.equal(lock.signal.reason, lock.lostError);
            }
          } finally {
            answer = () => undefined;
            await c.close();
          }
        });
      }
    });

    describe("no service, through the client", () => {
      // Each case on a prefix of its own, where a stand-in service
      // subscribes only when the case says: before that, every request
      // finds no responders.
      let n = 0;
      for (const nc of vectors.no_service as Case[]) {
        test(`no service: ${nc.name}`, async () => {
          const prefix = `nosvc${n++}`;
          const svc = await connect({ servers: server.url });
          let asked = 0;
          const subs: Subscription[] = [];
          const listen = async () => {
            subs.push(
              svc.subscribe(`${prefix}.>`, {
                callback: (_e, m) => {
                  const op = m.subject.split(".")[1];
                  if (op === nc.op && nc.every_reply !== null) {
                    asked++;
                    m.respond(nc.every_reply);
                  } else {
                    m.respond(op === "unlock" ? '{"unlocked":true,"name":"job"}' : '{"locked":true,"name":"job","key":"k1","token":17,"size":1,"instance":"I1"}');
                  }
                },
              }),
            );
            await svc.flush();
          };
          const c = await Client.connect({ servers: server.url }, { prefix, requestTimeoutSeconds: nc.request_timeout_seconds ?? 0.5 });
          let later: ReturnType<typeof setTimeout> | undefined;
          try {
            let held: Lock | undefined;
            if (nc.op === "unlock" || nc.op === "renew") {
              await listen();
              held = await c.tryLock("job", { lockTimeoutSeconds: 60, autoRenew: false });
              assert.ok(held.locked, "the lock held first");
              subs.pop()!.unsubscribe();
              await svc.flush();
            }
            if (nc.every_reply !== null) await listen();
            if (nc.answers_after_seconds !== undefined) {
              later = setTimeout(() => void listen(), nc.answers_after_seconds * 1000);
            }
            const act = async (): Promise<Lock | void> => {
              if (nc.op === "lock") return c.lock("job", nc.wait_timeout_seconds === undefined ? {} : { waitTimeoutSeconds: nc.wait_timeout_seconds });
              if (nc.op === "trylock") return c.tryLock("job");
              if (nc.op === "unlock") return held!.unlock();
              return held!.renew(60);
            };
            const want = nc.expect.client;
            switch (want.outcome) {
              case "error": {
                const e = await within(act().catch((err: unknown) => err), 60_000, nc.op);
                assert.ok(e instanceof tsClass(want.error_names.ts), String(e));
                if (nc.every_reply !== null) assert.ok(asked >= 2, `asked again (${asked} times)`);
                break;
              }
              case "granted": {
                const l = (await within(act(), 60_000, nc.op)) as Lock;
                assert.ok(l.locked, "granted once the service answers");
                break;
              }
              case "unlocked":
              case "renewed":
                await within(act(), 60_000, nc.op);
                break;
              default:
                assert.fail(`unknown outcome ${want.outcome}`);
            }
          } finally {
            clearTimeout(later);
            await c.close();
            await svc.close();
          }
        });
      }
    });
  });
}

// Used when the vectors file is absent too: the protocol document's table.
test("names: the protocol document's examples", () => {
  assert.equal(encodeName("job"), "job");
  assert.equal(lockSubject("ldlm", "lock", "orders.123"), "ldlm.lock.orders.123");
  assert.equal(lockSubject("ldlm", "lock", "My lock"), "ldlm.lock.~TXkgbG9jaw");
  assert.ok(new ldlm.LockWaitTimeoutError() instanceof LdlmError);
});
