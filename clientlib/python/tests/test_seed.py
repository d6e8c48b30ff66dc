"""Every Python code block of the concept document (seed/concepts.rst), run
as written with only the address "ldlm-server:3144" changed to the test
server's NATS URL.

The blocks are copied here verbatim (SEED_BLOCKS) so that the tests run
without the document; test_copies_match_the_document checks the copies
against the document when it can be found.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ldlm

from conftest import REPO_ROOT, deadline_poll, python_env

SEED_ADDRESS = '"ldlm-server:3144"'

SEED_BLOCKS: list[tuple[str, str]] = [
    (
        "name",
        '''\
import ldlm

client = ldlm.Client("ldlm-server:3144")

lock = client.lock("my-task")
''',
    ),
    (
        "size",
        '''\
import ldlm

# Number of expensive operation slots
ES_SLOTS = 20

client = ldlm.Client("ldlm-server:3144")

lock = client.lock("expensive_operation", size=ES_SLOTS)

# Do operation
''',
    ),
    (
        "timeout",
        '''\
import ldlm

client = ldlm.Client("ldlm-server:3144")

lock = client.lock("my-task", lock_timeout_seconds=300)
''',
    ),
    (
        "simple_lock",
        '''\
# Block until lock is obtained
lock = client.lock("my-task")

# Do work, then release lock
lock.unlock()
''',
    ),
    (
        "wait_timeout",
        '''\
# Wait at most 30 seconds to acquire lock
lock = client.lock("my-task", wait_timeout_seconds=30)
if not lock:
    print("Could not obtain lock within 30 seconds.")
    return
# Do work, then release lock
lock.unlock()
''',
    ),
    (
        "try_lock",
        '''\
# This is non-blocking
lock = client.try_lock("my-task")
if not lock:
    print("Lock already acquired.")
    return
# Do work, then release lock
lock.unlock()
''',
    ),
    (
        "lock_context",
        '''\
with client.lock_context("my-task"):
    # Do work. Lock will be released when context is exited
    pass
''',
    ),
    (
        "lock_context_wait_timeout",
        '''\
with client.lock_context("my-task", wait_timeout_seconds=30) as lock:
    if lock: # Check if lock was obtained
        pass # Do work. Lock will be released when context is exited
''',
    ),
    (
        "try_lock_context",
        '''\
with client.try_lock_context("my-task") as lock:
    if lock: # Check if lock was obtained
        pass # Do work. Lock will be released when context is exited
''',
    ),
    (
        "releasing",
        '''\
import ldlm

client = ldlm.Client("ldlm-server:3144")

lock = client.lock("my-task")

# Do task

lock.unlock()
''',
    ),
    (
        "renewing",
        '''\
import ldlm

client = ldlm.Client("ldlm-server:3144")

lock = client.lock("my-task", lock_timeout_seconds=300)

# Do some work

lock.renew(300)

# Do more work

lock.unlock()
''',
    ),
]

BLOCKS = dict(SEED_BLOCKS)

SEED_LOCK_NAMES = ("my-task", "expensive_operation")


# -- the document -----------------------------------------------------------


def rst_python_blocks(text: str) -> list[str]:
    """The bodies of the `.. code-block:: python` directives of an RST text."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == ".. code-block:: python":
            i += 1
            # directive options (":caption: ...") and the blank line after them
            while i < len(lines) and (lines[i].strip().startswith(":") or not lines[i].strip()):
                i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n") + "\n")
        else:
            i += 1
    return blocks


def find_concepts() -> Path | None:
    candidates = [
        os.environ.get("LDLM_SEED_CONCEPTS", ""),
        str(REPO_ROOT.parent / "shared" / "seed" / "concepts.rst"),
        "/work/shared/seed/concepts.rst",
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def test_copies_match_the_document():
    path = find_concepts()
    if path is None:
        pytest.skip("seed/concepts.rst not found (set LDLM_SEED_CONCEPTS)")
    blocks = rst_python_blocks(path.read_text())
    assert blocks == [code for _, code in SEED_BLOCKS]


def test_every_block_changes_only_the_address():
    for block_id, code in SEED_BLOCKS:
        if "ldlm.Client(" in code:
            assert code.count(SEED_ADDRESS) == 1, block_id


# -- running the blocks -----------------------------------------------------


@pytest.fixture
def run_block(url, monkeypatch, capsys):
    """run_block(block_id) executes a seed block and returns its namespace
    (for a block with a top-level `return`, the locals of the function that
    wraps it, or None when it returned early). Every ldlm.Client made, by the
    block or for it, is closed afterwards and the seed's lock names are
    checked free again, so the blocks do not disturb one another."""
    made: list[ldlm.Client] = []
    real_client = ldlm.Client

    class TrackedClient(real_client):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(ldlm, "Client", TrackedClient)

    def run(block_id: str):
        code = BLOCKS[block_id].replace(SEED_ADDRESS, repr(url))
        ns: dict = {"__name__": f"seed_{block_id}"}
        if "client = ldlm.Client(" not in code:
            # the "Examples" blocks use a client made earlier in the document
            ns["client"] = ldlm.Client(url)
        if any(line.strip() == "return" for line in code.splitlines()):
            wrapped = "def __seed_block__():\n" + textwrap.indent(code, "    ") + "    return locals()\n"
            exec(compile(wrapped, f"<seed {block_id}>", "exec"), ns)
            return ns["__seed_block__"]()
        exec(compile(code, f"<seed {block_id}>", "exec"), ns)
        return ns

    yield run

    for c in made:
        c.close()
    monkeypatch.setattr(ldlm, "Client", real_client)
    checker = real_client(url)
    try:
        for lock_name in SEED_LOCK_NAMES:
            def free():
                try:
                    lock = checker.try_lock(lock_name)
                except ldlm.LockSizeMismatchError:
                    return False  # the size-20 lock still exists
                got = bool(lock)
                lock.unlock()
                return got

            deadline_poll(free, 30, what=f"{lock_name!r} to be free after the block")
    finally:
        checker.close()


def test_name(run_block):
    ns = run_block("name")
    assert ns["lock"]
    assert ns["lock"].name == "my-task"
    assert ns["lock"].token


def test_size(run_block):
    ns = run_block("size")
    assert ns["lock"]
    assert ns["lock"].size == 20


def test_timeout(run_block):
    ns = run_block("timeout")
    assert ns["lock"]
    assert ns["lock"].expires_at is not None
    assert ns["lock"].lock_timeout_seconds == 300


def test_simple_lock(run_block):
    ns = run_block("simple_lock")
    assert not ns["lock"]  # unlocked


def test_wait_timeout(run_block, capsys):
    result = run_block("wait_timeout")
    assert result is not None, "the lock was not obtained"
    assert not result["lock"]  # unlocked
    assert "Could not obtain" not in capsys.readouterr().out


def test_try_lock(run_block, capsys):
    result = run_block("try_lock")
    assert result is not None, "the lock was not obtained"
    assert not result["lock"]
    assert "already acquired" not in capsys.readouterr().out


def test_lock_context(run_block):
    run_block("lock_context")


def test_lock_context_wait_timeout(run_block):
    ns = run_block("lock_context_wait_timeout")
    assert not ns["lock"]  # released on exit


def test_try_lock_context(run_block):
    ns = run_block("try_lock_context")
    assert not ns["lock"]


def test_releasing(run_block):
    ns = run_block("releasing")
    assert not ns["lock"]


def test_renewing(run_block):
    ns = run_block("renewing")
    assert not ns["lock"]


# -- the blocks' other branch: the lock is held by someone else --------------


def test_try_lock_when_held(run_block, url, capsys):
    holder = ldlm.Client(url)  # the tracked Client: closed by run_block
    held = holder.lock("my-task")
    assert held
    result = run_block("try_lock")
    assert result is None  # returned early
    assert "Lock already acquired." in capsys.readouterr().out


def test_try_lock_context_when_held(run_block, url):
    holder = ldlm.Client(url)
    assert holder.lock("my-task")
    ns = run_block("try_lock_context")
    assert not ns["lock"]
    assert not holder.try_lock("my-task")


# -- as scripts ----------------------------------------------------------------


@pytest.mark.parametrize("block_id", ["name", "renewing"])
def test_block_as_a_script(url, block_id, tmp_path):
    script = tmp_path / f"{block_id}.py"
    script.write_text(BLOCKS[block_id].replace(SEED_ADDRESS, repr(url)) + "print('done', bool(lock))\n")
    res = subprocess.run(
        [sys.executable, str(script)], env=python_env(), capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ("done True" if block_id == "name" else "done False")
    # the script's process ended: its lock (if any) must be released
    checker = ldlm.Client(url)
    try:
        lock = checker.lock("my-task", wait_timeout_seconds=30)
        assert lock
        lock.unlock()
    finally:
        checker.close()
