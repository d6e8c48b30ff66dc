#!/usr/bin/env bash
# Runs the TypeScript client's tests against the real lock server: builds
# ./cmd/ldlm (and nats-server, for the cluster tests) with go once, then
# `node --test`, whose suites each start the binary on a free port; then
# checks that the `npm pack` tarball installs and imports in a fresh folder.
#
# Needs node 20+ with npm, and go. Extra arguments go to `node --test`,
# e.g. `run-tests.sh --test-name-pattern=seed`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ldlm-js-tests.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

node --version
npm ci --no-audit --no-fund
npm run build
npm run build:test

if [ -z "${LDLM_BINARY:-}" ]; then
    (cd "$root" && go build -o "$tmp/ldlm" ./cmd/ldlm)
    export LDLM_BINARY="$tmp/ldlm"
fi
# nats-server for the cluster tests of sessions: the version go.mod pins.
if [ -z "${NATS_SERVER_BINARY:-}" ]; then
    (cd "$root" && go build -o "$tmp/nats-server" github.com/nats-io/nats-server/v2)
    export NATS_SERVER_BINARY="$tmp/nats-server"
fi

# Every test is bounded (its own waits have deadlines too): a hang fails.
node --test --test-concurrency=1 --test-timeout=600000 "$@" build/test/*.test.js

bash "$here/scripts/pack-check.sh"
