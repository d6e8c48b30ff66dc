"""Test setup: builds the real `ldlm` binary from the repository and runs it
(embedded NATS server + lock service) on a free port for the whole session.

Environment knobs:
  LDLM_BINARY      use this ldlm binary instead of building one
  LDLM_TEST_KEEP   keep the server log directory (its path is printed)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

import ldlm

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]

BUILD_TIMEOUT = 1200  # a cold Go module cache on a small machine is slow
START_DEADLINE = 60.0


def deadline_poll(cond, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll cond() until it returns a truthy value; fail after timeout."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def ldlm_binary(tmp_path_factory) -> Path:
    given = os.environ.get("LDLM_BINARY")
    if given:
        return Path(given)
    go = shutil.which("go")
    if go is None:
        pytest.fail("go is needed to build the ldlm binary (or set LDLM_BINARY)")
    out = tmp_path_factory.mktemp("bin") / "ldlm"
    res = subprocess.run(
        [go, "build", "-o", str(out), "./cmd/ldlm"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if res.returncode != 0:
        pytest.fail(f"go build ./cmd/ldlm failed:\n{res.stdout}\n{res.stderr}")
    return out


def _server_env(port: int) -> dict:
    # Only our settings: an LDLM_* variable of the caller's environment (say
    # LDLM_NATS_URL) must not point the test server elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDLM_")}
    env["LDLM_EMBEDDED_LISTEN"] = f"127.0.0.1:{port}"
    env["LDLM_LOG_LEVEL"] = "debug"
    return env


def _wait_port(server: Server, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _wait_service(server: Server, deadline: float) -> None:
    """The port accepts before the lock service has subscribed: probe it."""
    client = ldlm.Client(server.url)
    try:
        while True:
            try:
                lock = client.try_lock(f"probe-{uuid.uuid4().hex}")
                assert lock, "a fresh lock name must be free"
                lock.unlock()
                return
            except Exception as e:  # NoResponders until the service is up
                if server.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"lock service not ready: {e!r}\n{server.log()}") from e
                time.sleep(0.1)
    finally:
        client.close()


def start_server(binary: Path, logdir: Path, port: Optional[int] = None) -> Server:
    """Start `ldlm` (embedded NATS + lock service) and wait until the lock
    service answers. With port None, a free port is picked (retrying if it
    is taken meanwhile)."""
    server = None
    for attempt in range(3):
        p = port or free_port()
        log_path = logdir / f"ldlm-{p}-{time.monotonic_ns()}.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(
                [str(binary)],
                env=_server_env(p),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = Server(f"nats://127.0.0.1:{p}", p, proc, log_path)
        if _wait_port(server, time.monotonic() + START_DEADLINE):
            break
        proc.kill()
        proc.wait(10)
        if port is not None and attempt < 2:
            time.sleep(0.5)  # the port of a server just stopped may linger
    else:
        raise AssertionError(f"ldlm did not start:\n{server.log() if server else ''}")
    try:
        _wait_service(server, time.monotonic() + START_DEADLINE)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server, sig: Optional[int] = None) -> None:
    if server.proc.poll() is None:
        if sig is None:
            server.proc.terminate()
        else:
            server.proc.send_signal(sig)
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)


@pytest.fixture(scope="session")
def ldlm_server(ldlm_binary, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("server")
    server = start_server(ldlm_binary, logdir)
    try:
        yield server
    finally:
        stop_server(server)
        if os.environ.get("LDLM_TEST_KEEP"):
            print(f"ldlm server log: {server.log_path}", file=sys.stderr)


@pytest.fixture
def own_server(ldlm_binary, tmp_path):
    """start() -> a Server of this test alone (stopped at the end)."""
    servers: list[Server] = []

    def start(port: Optional[int] = None) -> Server:
        server = start_server(ldlm_binary, tmp_path, port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        stop_server(server)


@pytest.fixture
def url(ldlm_server) -> str:
    return ldlm_server.url


@pytest.fixture
def client(url):
    c = ldlm.Client(url)
    yield c
    c.close()


@pytest.fixture
def make_client(url):
    """make_client(**options) -> a new ldlm.Client, closed after the test."""
    made = []

    def make(**options):
        c = ldlm.Client(url, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def name() -> str:
    """A lock name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def python_env() -> dict:
    """Environment for a child Python that must import this ldlm package."""
    env = dict(os.environ)
    # the very ldlm package these tests import, installed or not
    pkg_parent = str(Path(ldlm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env
