#!/usr/bin/env bash
# What a user does: `npm pack` the package, install the tarball in a fresh
# folder, and import it from ESM (with its type declarations present).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/ldlm-js-pack.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

cd "$here"
tarball="$(npm pack --silent --pack-destination "$tmp" | tail -1)"
echo "packed $tarball"
tar -tzf "$tmp/$tarball" | sort

mkdir "$tmp/app"
cd "$tmp/app"
npm init -y >/dev/null
npm install --no-audit --no-fund "$tmp/$tarball" >/dev/null
test -f node_modules/@ldlm/client/dist/index.d.ts
cat > check.mjs <<'JS'
import { Client, Lock, LdlmError, LockWaitTimeoutError, LockLostError, encodeName } from "@ldlm/client";
const ok = typeof Client.connect === "function" && typeof Lock === "function" &&
  new LockWaitTimeoutError("x") instanceof LdlmError && new LockWaitTimeoutError("x").code === "LockWaitTimeout" &&
  typeof LockLostError === "function" && encodeName("My lock") === "~TXkgbG9jaw";
if (!ok) { console.error("the installed package does not export what it should"); process.exit(1); }
console.log("pack-check: the tarball installs and imports");
JS
node check.mjs

# The type declarations work for a TypeScript user (the package's own tsc).
cat > check.ts <<'TS'
import { Client, LockLostError, type Lock, type LockOptions } from "@ldlm/client";
const opts: LockOptions = { size: 1, waitTimeoutSeconds: 1, lockTimeoutSeconds: 2, autoRenew: true };
export async function f(c: Client): Promise<number> {
  const l: Lock = await c.lock("x", opts);
  const r: unknown = l.signal.reason;
  return r instanceof LockLostError ? 0 : l.token;
}
TS
"$here/node_modules/.bin/tsc" --noEmit --strict --module nodenext --moduleResolution nodenext --target es2022 \
    --lib es2022,esnext.disposable --types node --typeRoots "$here/node_modules/@types" check.ts
echo "pack-check: the type declarations compile"
