// Lock names on the wire (docs/protocol.md, "Names that cannot be a subject").

/** The subject prefix of a service started without LDLM_SUBJECT_PREFIX. */
export const DEFAULT_PREFIX = "ldlm";

/**
 * A name is sent as it is when every byte is printable ASCII other than
 * space, `*` and `>`, no token is empty and it does not start with `~`.
 */
export function isPlainName(name: string): boolean {
  if (name === "" || name[0] === "~" || name[0] === "." || name[name.length - 1] === ".") {
    return false;
  }
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c <= 0x20 || c > 0x7e || c === 0x2a /* * */ || c === 0x3e /* > */) {
      return false;
    }
    if (c === 0x2e /* . */ && name.charCodeAt(i + 1) === 0x2e) {
      return false;
    }
  }
  return true;
}

/**
 * The subject token(s) for a lock name: the name itself when it is plain,
 * else `~` and the unpadded base64url of its UTF-8 bytes. Both forms name
 * the same lock.
 */
export function encodeName(name: string): string {
  if (isPlainName(name)) {
    return name;
  }
  return "~" + Buffer.from(name, "utf8").toString("base64url");
}

/** PREFIX.OP.NAME, the subject of one operation on one lock. */
export function lockSubject(prefix: string, op: string, name: string): string {
  return `${prefix}.${op}.${encodeName(name)}`;
}

/**
 * The Ldlm-Owner header value of a connection: SERVER_ID:CLIENT_ID, the
 * id (not the name: a restarted server keeps its name and hands out client
 * ids from 1 again) of the NATS server and the client id it gave.
 */
export function formatOwner(serverId: string, clientId: number | string): string {
  return `${serverId}:${clientId}`;
}

/** PREFIX.lost.OWNER, where the service sends the lost notices of an owner. */
export function lostSubject(prefix: string, owner: string): string {
  // A SERVER_ID:CLIENT_ID owner is plain, so this is the owner itself.
  return `${prefix}.lost.${encodeName(owner)}`;
}
