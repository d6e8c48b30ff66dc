// Sessions (docs/protocol.md, "Sessions: locks that survive a reconnect"):
// the id a client sends in Ldlm-Session, and the reply to PREFIX.attach.

import { randomBytes } from "node:crypto";

/** The header that names the client's session. */
export const HEADER_SESSION = "Ldlm-Session";
/** The header that names the connection a request comes over. */
export const HEADER_OWNER = "Ldlm-Owner";

const SESSION_ID = /^[A-Za-z0-9_-]{16,64}$/;

/**
 * A session id as the clients make them: 32 lowercase hex digits, 128 bits
 * from the cryptographic random source.
 */
export function newSessionId(): string {
  return randomBytes(16).toString("hex");
}

/** Whether the service accepts `value` as an Ldlm-Session header: 16 to 64 characters of A-Z a-z 0-9 _ -. */
export function isSessionId(value: string): boolean {
  return SESSION_ID.test(value);
}

/** A lock the session holds, as the attach reply lists it. */
export interface AttachedHeld {
  name: string;
  key: string;
  token: number;
}

/** A lock request of the session parked at the service. */
export interface AttachedWait {
  name: string;
  key: string;
}

/** The reply to PREFIX.attach. */
export interface AttachReply {
  /** The session is now bound to the requesting connection. */
  attached: boolean;
  /** The service still knew the session; false: whatever the client held is lost. */
  resumed: boolean;
  held: AttachedHeld[];
  waiting: AttachedWait[];
  error?: { code: string; message: string };
}

/**
 * Decodes a reply to PREFIX.attach; throws an Error for a body that is not
 * such an object.
 */
export function parseAttachReply(data: Uint8Array | string): AttachReply {
  const text = typeof data === "string" ? data : new TextDecoder().decode(data);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    v = undefined;
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new Error(`ldlm: the attach reply is not a JSON object: ${JSON.stringify(text.slice(0, 80))}`);
  }
  const r = v as Record<string, unknown>;
  const out: AttachReply = { attached: r.attached === true, resumed: r.resumed === true, held: [], waiting: [] };
  if (r.error !== undefined && r.error !== null) {
    const e = r.error as Record<string, unknown>;
    if (typeof e !== "object" || typeof e.code !== "string") {
      throw new Error(`ldlm: the attach reply has a malformed error: ${JSON.stringify(text.slice(0, 80))}`);
    }
    out.error = { code: e.code, message: typeof e.message === "string" ? e.message : "" };
  }
  for (const field of ["held", "waiting"] as const) {
    const items = r[field] ?? [];
    if (!Array.isArray(items)) {
      throw new Error(`ldlm: the attach reply's ${field} is not a list: ${JSON.stringify(text.slice(0, 80))}`);
    }
    for (const item of items as Record<string, unknown>[]) {
      if (typeof item !== "object" || item === null || typeof item.name !== "string" || typeof item.key !== "string") {
        throw new Error(`ldlm: a malformed ${field} entry in the attach reply: ${JSON.stringify(text.slice(0, 80))}`);
      }
      if (field === "held") {
        out.held.push({ name: item.name, key: item.key, token: Number(item.token ?? 0) });
      } else {
        out.waiting.push({ name: item.name, key: item.key });
      }
    }
  }
  return out;
}
