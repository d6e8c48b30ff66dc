#!/usr/bin/env bash
# Runs the Python client's tests against the real lock server: the tests'
# conftest builds ./cmd/ldlm with go and starts it on a free port.
#
# Needs only python3 (with pip and venv) and go. The package and pytest are
# installed into a throw-away virtualenv (LDLM_PY_VENV=DIR keeps and reuses
# one). Extra arguments go to pytest, e.g. `run-tests.sh -k seed -v`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ldlm-python-tests.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
venv="${LDLM_PY_VENV:-$tmp/venv}"

if [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >/dev/null 2>&1; then
    py="$venv/bin/python"
    "$py" -m pip install -q --disable-pip-version-check "$here" "pytest>=7"
else
    # No venv module (Debian without python3-venv): install for this user.
    echo "run-tests.sh: python3 -m venv is not available; installing with pip --user" >&2
    py="$python"
    "$py" -m pip install -q --disable-pip-version-check --user "$here" "pytest>=7" ||
        "$py" -m pip install -q --disable-pip-version-check --user --break-system-packages "$here" "pytest>=7"
fi

# The package builds as sdist and wheel with complete metadata (skip with
# LDLM_PY_SKIP_BUILD=1, e.g. offline: the build fetches setuptools).
if [ -z "${LDLM_PY_SKIP_BUILD:-}" ]; then
    "$py" -m pip install -q --disable-pip-version-check build
    "$py" -m build -q --outdir "$tmp/dist" "$here" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; exit 1; }
    "$py" "$here/tests/check_dist.py" "$tmp/dist"
fi

# Keep the work tree clean: no bytecode or pytest cache in it, and no
# in-tree build leftovers from pip.
rm -rf "$here/build" "$here/src/"*.egg-info
export PYTHONDONTWRITEBYTECODE=1
cd "$root"
set +e
"$py" -m pytest -q -p no:cacheprovider "$here/tests" "$@"
status=$?
set -e
exit "$status"
