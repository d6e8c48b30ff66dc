"""Test setup: builds the real `ldlm` binary from the repository and runs it
(embedded NATS server + lock service) on a free port for the whole session.

Environment knobs:
  LDLM_BINARY      use this ldlm binary instead of building one
  NATS_SERVER_BINARY  use this nats-server (for the cluster tests) instead of
                   building one from the repository's Go module
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


async def synced(nc) -> None:
    """Return once the NATS server has processed every command that nc sent
    before (a SUB or UNSUB, say): a message to itself, queued behind them.

    Not nc.flush(): nats-py (2.16) writes flush()'s PING on the socket at
    once, ahead of the commands still queued for its flusher, so the PONG
    can come before the server saw them. A responder that unsubscribed and
    flushed could still be sent the next request, which nats-py then drops
    (no reply, and no "no responders" either: the client waits its whole
    request timeout)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    await nc.publish(inbox, b"")
    await sub.next_msg(timeout=30)


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


def _server_env(port: Optional[int], extra: Optional[dict] = None) -> dict:
    # Only our settings: an LDLM_* variable of the caller's environment (say
    # LDLM_NATS_URL) must not point the test server elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDLM_")}
    if port is not None:
        env["LDLM_EMBEDDED_LISTEN"] = f"127.0.0.1:{port}"
    env["LDLM_LOG_LEVEL"] = "debug"
    env.update(extra or {})
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


def start_server(binary: Path, logdir: Path, port: Optional[int] = None, env: Optional[dict] = None) -> Server:
    """Start `ldlm` (embedded NATS + lock service) and wait until the lock
    service answers. With port None, a free port is picked (retrying if it
    is taken meanwhile). env: more LDLM_* settings."""
    server = None
    for attempt in range(3):
        p = port or free_port()
        log_path = logdir / f"ldlm-{p}-{time.monotonic_ns()}.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(
                [str(binary)],
                env=_server_env(p, env),
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

    def start(port: Optional[int] = None, env: Optional[dict] = None) -> Server:
        server = start_server(ldlm_binary, tmp_path, port, env)
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


# -- a NATS cluster (tests of sessions) ----------------------------------------

#: the lock service's reconnect grace in the cluster tests: the default.
#: nats-py reconnects to another member at once when its connection is more
#: than reconnect_time_wait (2 s) old, but a test's connection is younger:
#: nats-py then sleeps those 2 s before it tries again (it retries the lost
#: server first), so a grace much shorter than 5 s would make it late.
CLUSTER_GRACE_SECONDS = 5.0


@pytest.fixture(scope="session")
def nats_server_binary(tmp_path_factory) -> Path:
    given = os.environ.get("NATS_SERVER_BINARY")
    if given:
        return Path(given)
    go = shutil.which("go")
    if go is None:
        pytest.fail("go is needed to build nats-server (or set NATS_SERVER_BINARY)")
    out = tmp_path_factory.mktemp("bin") / "nats-server"
    # The version the repository's go.mod pins (the one embedded in ldlm).
    res = subprocess.run(
        [go, "build", "-o", str(out), "github.com/nats-io/nats-server/v2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if res.returncode != 0:
        pytest.fail(f"go build nats-server failed:\n{res.stdout}\n{res.stderr}")
    return out


class Cluster:
    """A NATS cluster of nats-server processes (an application account, the
    default for clients without credentials, and a system account), and
    optionally the lock service on member 0 in external mode."""

    def __init__(self, nats_server: Path, ldlm_binary: Optional[Path], logdir: Path, size: int = 2):
        self.logdir = logdir
        self.ports = [free_port() for _ in range(size)]
        cluster_ports = [free_port() for _ in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in cluster_ports)
        self.members: list[Server] = []
        self.service: Optional[Server] = None
        for i, (port, cport) in enumerate(zip(self.ports, cluster_ports)):
            conf = logdir / f"m{i}.conf"
            conf.write_text(
                f"""server_name: m{i}
listen: 127.0.0.1:{port}
cluster {{ name: ldlmtest, listen: 127.0.0.1:{cport}, routes: [{routes}] }}
accounts {{
  SYS {{ users [{{user: sys, password: sys}}] }}
  APP {{ users [{{user: app, password: app}}] }}
}}
system_account: SYS
no_auth_user: app
"""
            )
            log_path = logdir / f"m{i}.log"
            with open(log_path, "wb") as logf:
                proc = subprocess.Popen(
                    [str(nats_server), "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            member = Server(f"nats://127.0.0.1:{port}", port, proc, log_path)
            self.members.append(member)
        deadline = time.monotonic() + START_DEADLINE
        for member in self.members:
            if not _wait_port(member, deadline):
                self.close()
                raise AssertionError(f"nats-server did not start:\n{member.log()}")
        if ldlm_binary is not None:
            self._start_service(ldlm_binary, deadline)

    def _start_service(self, binary: Path, deadline: float) -> None:
        url = self.members[0].url
        env = _server_env(
            None,
            {
                "LDLM_NATS_URL": url,
                "LDLM_SYSTEM_USER": "sys",
                "LDLM_SYSTEM_PASSWORD": "sys",
                "LDLM_RECONNECT_GRACE": f"{CLUSTER_GRACE_SECONDS}s",
            },
        )
        log_path = self.logdir / "ldlm.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen([str(binary)], env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.service = Server(url, self.ports[0], proc, log_path)
        # The service answers a client of every member once its
        # subscriptions crossed the routes.
        # It announces its start (PREFIX.instance.started) only after it
        # answers: a client that hears it then asks its waits again (the
        # instance may have replaced another). Wait for the announcement to
        # be out (it is logged after), so that the tests' clients, made
        # later, do not hear it.
        for member in self.members:
            try:
                _wait_service(Server(member.url, member.port, proc, log_path), deadline)
                deadline_poll(lambda: b"lock service ready" in log_path.read_bytes(), deadline - time.monotonic(), what="the service's start")
            except BaseException:
                self.close()
                raise

    def stop_member(self, i: int) -> None:
        """Shut member i down (SIGTERM: the server closes its clients'
        connections itself, "Server Shutdown")."""
        stop_server(self.members[i])

    def close(self) -> None:
        if self.service is not None:
            stop_server(self.service)
        for member in self.members:
            stop_server(member)


@pytest.fixture
def cluster(nats_server_binary, ldlm_binary, tmp_path):
    """A two-member NATS cluster with the lock service on member 0."""
    c = Cluster(nats_server_binary, ldlm_binary, tmp_path)
    yield c
    c.close()


@pytest.fixture
def bare_cluster(nats_server_binary, tmp_path):
    """A two-member NATS cluster without a lock service."""
    c = Cluster(nats_server_binary, None, tmp_path)
    yield c
    c.close()
