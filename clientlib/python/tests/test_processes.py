"""Other Python processes: a holder killed with SIGKILL, a waiter hit by Ctrl-C."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

import ldlm

from conftest import deadline_poll, python_env

HOLDER = """
import sys, time, ldlm
client = ldlm.Client(sys.argv[1])
lock = client.lock(sys.argv[2])
print("locked", lock.token, flush=True)
time.sleep(600)
"""

WAITER = """
import signal, sys, ldlm
client = ldlm.Client(sys.argv[1])
# Ctrl-C may interrupt lock() only: the one SIGINT the test sends must not
# land anywhere else in this script.
waiting = [True]
def on_sigint(signum, frame):
    if waiting[0]:
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, on_sigint)
print("ready", flush=True)
lock = None
try:
    lock = client.lock(sys.argv[2])
    waiting[0] = False
except KeyboardInterrupt:
    waiting[0] = False
print("granted" if lock else "interrupted", flush=True)
sys.stdin.read()  # stay connected until the test closes stdin
client.close()
print("closed", flush=True)
"""

# The same with Python's own SIGINT handler: the main thread then runs the
# client's event loop itself while it waits in lock(), and Ctrl-C must stop
# that loop, withdraw the request and be raised from lock().
WAITER_DEFAULT_SIGINT = """
import sys, ldlm, ldlm.sync
client = ldlm.Client(sys.argv[1])
lock = None
try:
    print("ready", ldlm.sync._default_signals(), flush=True)
    lock = client.lock(sys.argv[2])
except KeyboardInterrupt:
    pass
print("granted" if lock else "interrupted", flush=True)
sys.stdin.read()  # stay connected until the test closes stdin
client.close()
print("closed", flush=True)
"""


class Child:
    """A Python child process whose stdout lines are read with deadlines."""

    def __init__(self, code: str, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env=python_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float = 60) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {prefix!r} from the child within {timeout}s") from None
        if line is None or not line.startswith(prefix):
            self.proc.kill()
            raise AssertionError(f"expected {prefix!r}, got {line!r}; stderr:\n{self.proc.stderr.read()}")
        return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def test_killed_holder_releases_its_lock(make_client, url, name):
    child = Child(HOLDER, url, name)
    try:
        token = int(child.expect("locked").split()[1])
        other = make_client()
        assert not other.try_lock(name), "the child holds the lock"
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait(30)
        lock = other.lock(name, wait_timeout_seconds=30)
        assert lock, "the dead holder's lock was not released"
        assert lock.token > token
        lock.unlock()
    finally:
        child.kill()


@pytest.mark.parametrize("script", [WAITER, WAITER_DEFAULT_SIGINT], ids=["own-handler", "default-handler"])
def test_ctrl_c_while_waiting_gives_up_the_wait(make_client, url, name, script):
    holder = make_client()
    held = holder.lock(name)
    child = Child(script, url, name)
    try:
        ready = child.expect("ready")
        if script is WAITER_DEFAULT_SIGINT:
            assert ready == "ready True", "the child's main thread would not run the loop itself"
        time.sleep(0.5)  # likely parked in lock() by now (either way must work)
        child.proc.send_signal(signal.SIGINT)
        child.expect("interrupted")
        held.unlock()
        # The child is alive and connected: had its wait survived, it would
        # now hold the lock.
        deadline_poll(lambda: _free(holder, name), 20, what="the lock to be free")
        child.proc.stdin.close()
        child.expect("closed")
        assert child.proc.wait(30) == 0
    finally:
        child.kill()


def test_ctrl_c_right_at_the_grant(make_client, url, name):
    """SIGINT sent as the lock is released to the waiter: whichever wins,
    once the child reports, the lock is either reported granted or free."""
    holder = make_client()
    for _ in range(3):
        held = holder.lock(name)
        child = Child(WAITER, url, name)
        try:
            child.expect("ready")
            time.sleep(0.3)
            held.unlock()
            child.proc.send_signal(signal.SIGINT)
            line = child.lines.get(timeout=60)
            if line == "granted":
                # it won the race: the grant is its own to keep
                assert not holder.try_lock(name)
                child.proc.stdin.close()
                child.expect("closed")
            else:
                assert line == "interrupted", line
                deadline_poll(lambda: _free(holder, name), 20, what="the lock to be free")
                child.proc.stdin.close()
                child.expect("closed")
            child.proc.wait(30)
            # after the child closed, the lock is free in any case
            deadline_poll(lambda: _free(holder, name), 30, what="the lock to be free")
        finally:
            child.kill()


def _free(client: ldlm.Client, name: str) -> bool:
    lock = client.try_lock(name)
    got = bool(lock)
    lock.unlock()
    return got
