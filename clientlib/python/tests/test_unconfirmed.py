"""What the client does while no lock service answers, and the lock timeout
counted from the grant (docs/protocol.md, "What a client does on a
reconnect", "Unconfirmed releases" and "Replies"), against the real
service:

- after a reconnect the client asks ``attach`` until it is answered (for at
  least 60 s), so a held lock survives a service that is away longer than
  the request timeout;
- an ``unlock`` that no service answered raises, and the client re-sends it
  in the background until a service answers;
- a lock that waited in the queue longer than its lock timeout is usable
  once granted (the service says how long it waited: ``waited_ms``); a
  grant expired on arrival is given back.

The durable tests run the service with LDLM_STATE=jetstream on a
nats-server of their own, so that its locks outlive the service process
(killed, then started again on the same stream). Every wait is bounded and
polls a condition.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import pytest

import ldlm
from conftest import START_DEADLINE, Server, _server_env, _wait_port, _wait_service, free_port, stop_server
from test_sessions import WAIT, admin_waiters, attached_anew, is_free, run, until
from test_vectors import scripted

import nats

#: the request timeout of the clients that meet a missing service: short,
#: so that the service is away for several of them
REQUEST_TIMEOUT = 0.5


class Durable:
    """A nats-server with JetStream (an application account, the default
    for clients without credentials, with JetStream; a system account for
    the service) and the lock service on it with LDLM_STATE=jetstream."""

    def __init__(self, nats_server: Path, ldlm_binary: Path, logdir: Path, grace_seconds: float):
        self.nats_server = nats_server
        self.ldlm_binary = ldlm_binary
        self.logdir = logdir
        self.grace_seconds = grace_seconds
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.conf = logdir / "js.conf"
        self.conf.write_text(
            f"""listen: 127.0.0.1:{self.port}
jetstream {{ store_dir: "{logdir / 'js'}" }}
accounts {{
  SYS {{ users [{{user: sys, password: sys}}] }}
  APP {{ users [{{user: app, password: app}}], jetstream: enabled }}
}}
system_account: SYS
no_auth_user: app
"""
        )
        self.nats: Optional[Server] = None
        self.service: Optional[Server] = None
        self.starts = 0
        self.start_nats()
        self.start_service()

    def start_nats(self) -> None:
        self.starts += 1
        log_path = self.logdir / f"nats-{self.starts}.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(
                [str(self.nats_server), "-c", str(self.conf)], stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.nats = Server(self.url, self.port, proc, log_path)
        if not _wait_port(self.nats, time.monotonic() + START_DEADLINE):
            raise AssertionError(f"nats-server did not start:\n{self.nats.log()}")

    def restart_nats(self) -> None:
        """Shut the nats-server down (its clients reconnect) and start it
        again on the same port and store."""
        assert self.nats is not None
        stop_server(self.nats)
        self.start_nats()

    def start_service(self) -> None:
        """Start the lock service and wait until it answers."""
        self.starts += 1
        env = _server_env(
            None,
            {
                "LDLM_NATS_URL": self.url,
                "LDLM_SYSTEM_USER": "sys",
                "LDLM_SYSTEM_PASSWORD": "sys",
                "LDLM_STATE": "jetstream",
                "LDLM_STATE_REPLICAS": "1",
                "LDLM_RECONNECT_GRACE": f"{self.grace_seconds}s",
            },
        )
        log_path = self.logdir / f"ldlm-{self.starts}.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(
                [str(self.ldlm_binary)], env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.service = Server(self.url, self.port, proc, log_path)
        _wait_service(self.service, time.monotonic() + START_DEADLINE)

    def kill_service(self) -> None:
        """SIGKILL: the service ends without a word (as a crash); its state
        stays in the stream."""
        assert self.service is not None
        stop_server(self.service, signal.SIGKILL)

    def close(self) -> None:
        for server in (self.service, self.nats):
            if server is not None:
                stop_server(server)


@pytest.fixture
def durable(nats_server_binary, ldlm_binary, tmp_path):
    """durable(grace_seconds) -> a Durable of this test alone."""
    made: list[Durable] = []

    def make(grace_seconds: float) -> Durable:
        d = Durable(nats_server_binary, ldlm_binary, tmp_path, grace_seconds)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def test_attach_outlasts_the_request_timeout(durable, name):
    """A holder whose NATS server restarts while the lock service is away
    for several request timeouts keeps asking attach, and keeps its lock
    once a service answers: past the reconnect grace, same key and token,
    nobody else gets it, and unlock frees it."""
    d = durable(5)

    async def main():
        holder = ldlm.AsyncClient(d.url, request_timeout_seconds=REQUEST_TIMEOUT)
        other = ldlm.AsyncClient(d.url)
        # a client that never reconnects: the service frees its lock at the
        # end of the grace after the restart
        bird = ldlm.AsyncClient(d.url, allow_reconnect=False)
        try:
            lock = await holder.lock(name)  # no lock timeout: only the attach keeps it
            assert lock
            assert await bird.lock(name + "-canary")
            key, token, before = lock.key, lock.token, holder.owner()

            await asyncio.to_thread(d.kill_service)
            await asyncio.to_thread(d.restart_nats)
            await until(lambda: holder.owner() not in (None, before), "the holder reconnected")
            # nobody answers the attach for several request timeouts
            await asyncio.sleep(4 * REQUEST_TIMEOUT)
            assert holder._attached is not holder._epoch, "the attach was settled without a service"
            assert lock, lock.lost_error

            await asyncio.to_thread(d.start_service)
            await until(lambda: attached_anew(holder, before), "the attach answered")
            await until(lambda: is_free(other, name + "-canary"), "the end of the grace (the canary's lock freed)")
            assert lock, lock.lost_error
            assert (lock.key, lock.token) == (key, token)
            assert not await is_free(other, name), "another client got the lock"
            assert await lock.unlock() is True
            assert await is_free(other, name), "the lock is not free after unlock"
        finally:
            await holder.close()
            await other.close()
            await bird.close()

    run(main())


@pytest.mark.parametrize("api", ["async", "sync"])
def test_unanswered_unlock_is_released_in_background(durable, name, api):
    """An unlock that no service answers raises NoServiceError and ends the
    lock in the client; once a service answers again, the client's
    background retry releases it (the grace is an hour and the holder stays
    connected: nothing else would)."""
    d = durable(3600)

    async def main():
        sync_holder: Optional[ldlm.Client] = None
        if api == "sync":
            sync_holder = await asyncio.to_thread(ldlm.Client, d.url, request_timeout_seconds=REQUEST_TIMEOUT)
            holder = sync_holder.async_client
            lock: Any = await asyncio.to_thread(sync_holder.lock, name)
        else:
            holder = ldlm.AsyncClient(d.url, request_timeout_seconds=REQUEST_TIMEOUT)
            lock = await holder.lock(name)
        other = ldlm.AsyncClient(d.url)
        try:
            assert lock
            owner = holder.owner()
            await asyncio.to_thread(d.kill_service)
            with pytest.raises(ldlm.NoServiceError):
                if sync_holder is not None:
                    await asyncio.to_thread(lock.unlock)
                else:
                    await lock.unlock()
            assert not lock
            assert [entry[0] for entry in holder._pending.values()] == [name]

            await asyncio.to_thread(d.start_service)
            await until(lambda: is_free(other, name), "the lock released in the background")
            await until(lambda: not holder._pending, "the release confirmed")
            assert holder.owner() == owner, "the holder reconnected: its session may have ended otherwise"
        finally:
            if sync_holder is not None:
                await asyncio.to_thread(sync_holder.close)
            else:
                await holder.close()
            await other.close()

    run(main())


@pytest.mark.parametrize("api", ["async", "sync"])
def test_lock_that_waited_longer_than_its_timeout_is_usable(url, name, api):
    """A lock() that waited in the queue longer than its lock timeout gets
    a lock it can use: the client counts the timeout from the grant."""

    async def main():
        first = ldlm.AsyncClient(url)
        sync_waiter: Optional[ldlm.Client] = None
        if api == "sync":
            sync_waiter = await asyncio.to_thread(ldlm.Client, url)
            waiter = sync_waiter.async_client
        else:
            waiter = ldlm.AsyncClient(url)
        admin = await nats.connect(url)
        try:
            held = await first.lock(name)
            assert held
            if sync_waiter is not None:
                task = asyncio.ensure_future(
                    asyncio.to_thread(sync_waiter.lock, name, lock_timeout_seconds=1, auto_renew=False)
                )
            else:
                task = asyncio.ensure_future(waiter.lock(name, lock_timeout_seconds=1, auto_renew=False))
            await until(lambda: admin_waiters(admin, name), "the waiter waits")
            await asyncio.sleep(1.5)  # longer than its lock timeout
            assert await held.unlock() is True
            got = await asyncio.wait_for(task, WAIT)
            assert got.waited_ms > 1000, got.waited_ms
            assert got, got.lost_error
            if sync_waiter is not None:
                assert await asyncio.to_thread(got.unlock) is True
            else:
                assert await got.unlock() is True
        finally:
            await first.close()
            if sync_waiter is not None:
                await asyncio.to_thread(sync_waiter.close)
            else:
                await waiter.close()
            await admin.close()

    run(main())


def test_grant_expired_on_arrival_is_given_back(url):
    """A grant whose lock timeout passed before it arrived (a responder
    slower than the timeout) raises LockLostError(reason "expired") and is
    given back with its key."""

    async def main():
        granted = '{"locked":true,"name":"job","key":"k","token":7,"size":1,"instance":"I1"}'
        responder, client = await scripted(url, {"lock": [granted], "unlock": ['{"unlocked":true,"name":"job"}']})

        async def slow() -> None:
            await asyncio.sleep(0.05)  # longer than the lock timeout below

        responder.before_reply["lock"] = slow
        try:
            with pytest.raises(ldlm.LockLostError) as info:
                await client.lock("job", lock_timeout_seconds=0.001)
            assert info.value.reason == "expired"
            lock_key = next(body["key"] for op, body in responder.requests if op == "lock")
            await until(
                lambda: any(op == "unlock" and body.get("key") == lock_key for op, body in responder.requests),
                "the grant given back",
            )
            assert not client._held
        finally:
            await client.close()
            await responder.nc.close()

    run(main())


def test_attach_asked_again_and_unknown_entries_released(bare_cluster):
    """After its server shut down, a client (reconnected to the other
    member) whose attach goes unanswered for several request timeouts asks
    again until a (scripted) service answers; its held lock stays held
    meanwhile and after. The attach reply also lists a held lock and a wait
    of the session that the client knows nothing of: it unlocks both keys
    in the background, and not its own."""
    import json
    import uuid

    from test_sessions import Service

    async def main():
        cluster = bare_cluster
        prefix = f"unc{uuid.uuid4().hex[:12]}"
        svc = Service(await nats.connect(cluster.members[0].url), prefix)
        await svc.start()
        client = ldlm.AsyncClient(cluster.members[1].url, subject_prefix=prefix, request_timeout_seconds=REQUEST_TIMEOUT)
        try:
            await client.connect()
            await until(lambda: client.nc.discovered_servers, "the client learnt member 0")
            held = await client.try_lock("job")
            assert held
            before = client.owner()
            cluster.stop_member(1)
            await until(lambda: len(svc.ops("attach")) >= 3, "the attach asked again after unanswered tries")
            assert held, held.lost_error
            assert client._attached is not client._epoch

            svc.attach_body = lambda svc: json.dumps(
                {
                    "attached": True,
                    "resumed": True,
                    "held": [{"name": "job", "key": held.key, "token": 1}, {"name": "ghost", "key": "g1", "token": 2}],
                    "waiting": [{"name": "ghost-queue", "key": "g2"}],
                }
            )
            await until(lambda: attached_anew(client, before), "the attach answered")
            assert held, held.lost_error

            def unlocked_keys() -> set:
                return {b.get("key") for b, _ in svc.ops("unlock")}

            await until(lambda: {"g1", "g2"} <= unlocked_keys(), "the unknown entries released")
            await until(lambda: not client._pending, "the releases confirmed")
            assert held.key not in unlocked_keys()
            assert held
        finally:
            await client.close()
            await svc.nc.close()

    run(main())
