"""The embedded NATS server of `ldlm` secured: the Python client gets in with
the right credentials (user and password, token, TLS, mutual TLS) and is
refused with wrong or none. Certificates are made by the test (openssl),
never committed. (Nkeys are tested with the Go client, the ldlm commands
and the nats CLI: nats-py needs its optional nkeys package for them.)"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import nats.errors
import pytest

import ldlm

from conftest import START_DEADLINE, Server, _server_env, free_port, stop_server

# What a refused client gets from nats-py: its errors (an authorization
# violation, no servers), or a TLS handshake failure.
REFUSED = (nats.errors.Error, ssl.SSLError, ConnectionError)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client
    certificate, valid for a day."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "1", "-subj", "/CN=ldlm test CA", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                 "-out", f"{name}-cert.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return {k: str(d / f) for k, f in (("ca", "ca.pem"), ("cert", "server-cert.pem"), ("key", "server-key.pem"),
                                       ("client_cert", "client-cert.pem"), ("client_key", "client-key.pem"))}


def _tls(pki: dict, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if client_cert:
        ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
    return ctx


def _start(binary: Path, logdir: Path, settings: dict) -> Server:
    """Start `ldlm` with settings; wait until its port accepts TLS or not
    (the lock service is probed by the test with credentials)."""
    port = free_port()
    env = _server_env(port)
    env.update(settings)
    log_path = logdir / f"ldlm-{port}.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([str(binary)], env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    return Server(f"nats://127.0.0.1:{port}", port, proc, log_path)


def _lock_once(server: Server, **creds) -> None:
    """Take and release a lock with creds, retrying while the service
    starts (no responders), within START_DEADLINE."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        client = ldlm.Client(server.url, **creds)
        try:
            lock = client.try_lock(f"auth-{uuid.uuid4().hex}")
            assert lock, "a fresh lock name must be free"
            lock.unlock()
            return
        except Exception as e:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no lock with the right credentials: {e!r}\n{server.log()}") from e
            time.sleep(0.2)
        finally:
            client.close()


def _refused(server: Server, **creds) -> None:
    """A client with creds cannot take a lock (the sync client connects as
    it is made, or at its first request)."""
    with pytest.raises(REFUSED):
        client = ldlm.Client(server.url, allow_reconnect=False, connect_timeout=5, **creds)
        try:
            client.try_lock(f"refused-{uuid.uuid4().hex}")
        finally:
            client.close()


CASES = {
    "user and password": (
        lambda p: {"LDLM_EMBEDDED_USER": "app", "LDLM_EMBEDDED_PASSWORD": "app-secret"},
        lambda p: {"user": "app", "password": "app-secret"},
        lambda p: [{}, {"user": "app", "password": "nope"}],
    ),
    "token": (
        lambda p: {"LDLM_EMBEDDED_TOKEN": "tok-secret"},
        lambda p: {"token": "tok-secret"},
        lambda p: [{}, {"token": "nope"}],
    ),
    "TLS": (
        lambda p: {"LDLM_EMBEDDED_TLS_CERT": p["cert"], "LDLM_EMBEDDED_TLS_KEY": p["key"]},
        lambda p: {"tls": _tls(p)},
        lambda p: [{}],
    ),
    "mutual TLS": (
        lambda p: {"LDLM_EMBEDDED_TLS_CERT": p["cert"], "LDLM_EMBEDDED_TLS_KEY": p["key"], "LDLM_EMBEDDED_TLS_CA": p["ca"]},
        lambda p: {"tls": _tls(p, client_cert=True)},
        lambda p: [{}, {"tls": _tls(p)}],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_embedded_auth(case, ldlm_binary, pki, tmp_path):
    settings, good, wrong = CASES[case]
    server = _start(ldlm_binary, tmp_path, settings(pki))
    try:
        _lock_once(server, **good(pki))
        for creds in wrong(pki):
            _refused(server, **creds)
    finally:
        stop_server(server)
