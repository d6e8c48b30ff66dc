"""Sessions (docs/protocol.md, "Sessions: locks that survive a reconnect"):
a client's locks and queue places survive a reconnect that its NATS server
caused, on a real NATS cluster whose member the client is connected to
shuts down; a closed connection still frees them at once.

Every wait is bounded and polls a condition. Where a test must show that
the service did *not* release a lock at the end of its reconnect grace, a
canary client (connected to the same member, never reconnecting) holds a
lock of its own: its release at the end of the same grace says that the
grace is over.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import uuid
from typing import Any, Optional

import nats
import pytest

import ldlm
from ldlm.aio import HEADER_OWNER, HEADER_SESSION

from conftest import Cluster, stop_server, synced

WAIT = 30.0  # bound of every wait: only turns a hang into a failure


def run(coro, timeout: float = 120):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(cond, what: str, timeout: float = WAIT) -> Any:
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def attached_anew(client: ldlm.AsyncClient, before: Optional[str]) -> bool:
    """Whether client reconnected (another owner than before) and its
    attach was settled."""
    ep = client._epoch
    return ep is not None and ep.owner != before and client._attached is ep


async def admin_waiters(nc: Any, name: str) -> list[dict]:
    msg = await nc.request("ldlm.admin.list", json.dumps({"prefix": name}).encode(), timeout=10)
    for lock in json.loads(msg.data).get("locks") or []:
        if lock["name"] == name:
            return lock.get("waiters") or []
    return []


async def is_free(client: ldlm.AsyncClient, name: str) -> bool:
    lock = await client.try_lock(name)
    if lock:
        await lock.unlock()
        return True
    return False


async def canary(cluster: Cluster, member: int, name: str) -> tuple[ldlm.AsyncClient, ldlm.AsyncLock]:
    """A client of member that never reconnects, holding name: once its
    member shuts down, the service frees name at the end of the grace."""
    c = ldlm.AsyncClient(cluster.members[member].url, allow_reconnect=False)
    lock = await c.lock(name)
    assert lock
    return c, lock


async def learnt_members(client: ldlm.AsyncClient) -> None:
    await client.connect()
    await until(lambda: client.nc.discovered_servers, "the client learnt the other member")


@pytest.mark.parametrize("api", ["async", "sync"])
def test_lock_survives_server_shutdown(cluster, name, api):
    """A holder whose server shuts down reconnects to the other member and
    keeps its lock past the grace: same key and token, not lost, a renew
    works, nobody else gets it, and unlock frees it."""

    async def main():
        other = ldlm.AsyncClient(cluster.members[0].url)
        bird, bird_lock = await canary(cluster, 1, name + "-canary")
        holder_sync: Optional[ldlm.Client] = None
        if api == "sync":
            holder_sync = await asyncio.to_thread(ldlm.Client, cluster.members[1].url)
            holder = holder_sync.async_client
            await until(lambda: holder.nc.discovered_servers, "the holder learnt member 0")
            # no lock timeout: nothing but the attach keeps it past the grace
            lock: Any = await asyncio.to_thread(holder_sync.lock, name)
        else:
            holder = ldlm.AsyncClient(cluster.members[1].url)
            await learnt_members(holder)
            lock = await holder.lock(name)
        try:
            assert lock
            key, token, before = lock.key, lock.token, holder.owner()
            session = holder._session
            assert not await is_free(other, name)

            cluster.stop_member(1)
            await until(lambda: attached_anew(holder, before), "the holder reconnected to member 0 and attached")
            await until(lambda: is_free(other, name + "-canary"), "the end of the grace (the canary's lock freed)")
            assert not bird_lock

            assert lock, getattr(lock, "lost_error", None)
            assert (lock.key, lock.token) == (key, token)
            assert holder._session == session, "the session was kept: no new id"
            assert not await is_free(other, name), "another client got the lock"
            if holder_sync is not None:
                await asyncio.to_thread(lock.renew, 30)
                assert await asyncio.to_thread(lock.unlock) is True
            else:
                await lock.renew(30)
                assert await lock.unlock() is True
            assert await is_free(other, name), "the lock is not free after unlock"
        finally:
            if holder_sync is not None:
                await asyncio.to_thread(holder_sync.close)
            else:
                await holder.close()
            await other.close()
            await bird.close()

    run(main())


def test_closed_connection_frees_session_locks_at_once(own_server, name):
    """A holder that closes its NATS connection (as when its process dies)
    frees its locks at once, though the service's grace is an hour: a
    waiter gets the lock."""
    server = own_server(env={"LDLM_RECONNECT_GRACE": "1h"})

    async def main():
        holder, waiter = ldlm.AsyncClient(server.url), ldlm.AsyncClient(server.url)
        admin = await nats.connect(server.url)
        try:
            held = await holder.lock(name)
            assert held
            task = asyncio.ensure_future(waiter.lock(name))
            await until(lambda: admin_waiters(admin, name), "the waiter waits")
            await holder.nc.close()
            got = await asyncio.wait_for(task, WAIT)
            assert got, "the waiter did not get the closed connection's lock"
            await until(lambda: not held, "the holder counts its lock lost")
            assert held.lost_error is not None and held.lost_error.reason == "connection-lost"
            await got.unlock()
        finally:
            await holder.close()
            await waiter.close()
            await admin.close()

    run(main())


def test_waiter_keeps_its_place_across_reconnect(cluster, name):
    """A lock() waiting while its server shuts down keeps its place in the
    queue (it is not asked again): granted before a waiter that came after
    it."""

    async def main():
        first = ldlm.AsyncClient(cluster.members[1].url)
        second = ldlm.AsyncClient(cluster.members[0].url)
        holder = ldlm.AsyncClient(cluster.members[0].url)
        admin = await nats.connect(cluster.members[0].url)
        bird, _ = await canary(cluster, 1, name + "-canary")
        try:
            await learnt_members(first)
            held = await holder.lock(name)
            assert held
            first_wait = asyncio.ensure_future(first.lock(name))
            await until(lambda: admin_waiters(admin, name), "the first waits")
            # A waiter is shown by its owner (the session) and since when
            # it waits: a request asked again would wait since later.
            w = (await admin_waiters(admin, name))[0]
            first_wait_id = (w["owner"], w["since"])
            assert w["owner"] == "session:" + first._session[:8], w
            second_wait = asyncio.ensure_future(second.lock(name))

            async def two_waiters() -> bool:
                return len(await admin_waiters(admin, name)) == 2

            await until(two_waiters, "the second waits")

            before = first.owner()
            cluster.stop_member(1)
            await until(lambda: attached_anew(first, before), "the first waiter reconnected and attached")
            await until(lambda: is_free(holder, name + "-canary"), "the end of the grace (the canary's lock freed)")
            waiters = await admin_waiters(admin, name)
            assert len(waiters) == 2 and (waiters[0]["owner"], waiters[0]["since"]) == first_wait_id, waiters
            assert not first_wait.done() and not second_wait.done()

            await held.unlock()
            got = await asyncio.wait_for(first_wait, WAIT)
            assert got, "the first waiter was not granted"
            assert not second_wait.done(), "the second waiter was granted before the first unlocked"
            await got.unlock()
            assert await asyncio.wait_for(second_wait, WAIT)
        finally:
            for c in (first, second, holder, bird):
                await c.close()
            await admin.close()

    run(main())


def test_without_sessions_reconnect_loses_locks(cluster, name):
    """sessions=False: the lock belongs to the connection, as before: the
    server's shutdown loses it."""

    async def main():
        holder = ldlm.AsyncClient(cluster.members[1].url, sessions=False)
        try:
            await learnt_members(holder)
            lock = await holder.lock(name)
            assert lock
            cluster.stop_member(1)
            await until(lambda: not lock, "the lock is lost")
            assert lock.lost_error is not None and lock.lost_error.reason == "connection-lost"
        finally:
            await holder.close()

    run(main())


# -- what goes on the wire, played against a scripted service ----------------


class Service:
    """A scripted lock service on a prefix of its own: grants trylock, parks
    lock requests (kept to answer later), unlocks anything, and answers
    attach with a body made by ``attach_body`` (None: no answer at all, as
    an older service). It records every request's op and headers."""

    def __init__(self, nc: Any, prefix: str):
        self.nc = nc
        self.prefix = prefix
        self.requests: list[tuple[str, dict, dict]] = []  # op, body, headers
        self.parked: list[Any] = []
        self.attach_body: Any = None
        self.token = 0

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.>", cb=self.on_request)
        await synced(self.nc)

    def ops(self, op: str) -> list[tuple[dict, dict]]:
        return [(b, h) for o, b, h in self.requests if o == op]

    async def on_request(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        op = parts[1]
        body = json.loads(msg.data) if msg.data else {}
        self.requests.append((op, body, dict(msg.headers or {})))
        if op == "attach":
            if self.attach_body is not None:
                await msg.respond(self.attach_body(self).encode())
        elif op == "trylock":
            self.token += 1
            await msg.respond(
                json.dumps({"locked": True, "name": parts[2], "key": body["key"], "token": self.token}).encode()
            )
        elif op == "lock":
            self.parked.append((msg, body))
        elif op == "unlock":
            await msg.respond(json.dumps({"unlocked": True, "name": parts[2]}).encode())
        elif op == "renew":
            await msg.respond(json.dumps({"locked": True, "name": parts[2], "key": body["key"], "token": 1}).encode())


def test_every_request_carries_the_session(url):
    """lock, trylock, unlock and renew carry Ldlm-Session (the client's id,
    32 lowercase hex digits, the same on every request, another for another
    client) together with Ldlm-Owner of the connection."""

    async def main():
        prefix = f"sess{uuid.uuid4().hex[:12]}"
        svc = Service(await nats.connect(url), prefix)
        await svc.start()
        client = ldlm.AsyncClient(url, subject_prefix=prefix)
        another = ldlm.AsyncClient(url, subject_prefix=prefix)
        try:
            held = await client.try_lock("job")
            await held.renew(10)
            await held.unlock()
            task = asyncio.ensure_future(client.lock("queue"))
            await until(lambda: svc.parked, "the lock request")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await another.try_lock("other")
            ops = {op for op, _, _ in svc.requests}
            assert {"lock", "trylock", "unlock", "renew"} <= ops
            mine = [h for _, _, h in svc.requests[:-1]]
            sessions = {h.get(HEADER_SESSION) for h in mine}
            assert len(sessions) == 1, sessions
            session = sessions.pop()
            assert re.fullmatch(r"[0-9a-f]{32}", session), session
            assert all(h.get(HEADER_OWNER) == client.owner() for h in mine)
            assert svc.requests[-1][2].get(HEADER_SESSION) not in (None, session)
            assert not svc.ops("attach"), "no attach without a reconnect"
        finally:
            await client.close()
            await another.close()
            await svc.nc.close()

    run(main())


def test_sync_callers_write_the_session(url):
    """The synchronous client's callers write trylock, lock and unlock on
    the socket themselves (ldlm/sync.py): those requests carry the same
    Ldlm-Owner and Ldlm-Session as the event loop's, and after an OwnerGone
    reply to one of them the next carries a new session id."""

    class Gone(Service):
        async def on_request(self, msg: Any) -> None:
            if msg.subject.split(".")[1:] == ["trylock", "gone"]:
                self.requests.append(("trylock", json.loads(msg.data), dict(msg.headers or {})))
                await msg.respond(b'{"locked":false,"error":{"code":"OwnerGone","message":"session released"}}')
                return
            await super().on_request(msg)

    async def main():
        prefix = f"sess{uuid.uuid4().hex[:12]}"
        svc = Gone(await nats.connect(url), prefix)
        await svc.start()
        client = await asyncio.to_thread(ldlm.Client, url, subject_prefix=prefix)
        aclient = client.async_client
        try:
            assert aclient._epoch.writer is not None, "a plain TCP connection: callers write their requests"
            held = await asyncio.to_thread(client.try_lock, "job")
            assert held
            assert await asyncio.to_thread(held.unlock) is True
            queue = asyncio.ensure_future(asyncio.to_thread(client.lock, "queue", wait_timeout_seconds=20))
            await until(lambda: svc.parked, "the lock request")
            msg, body = svc.parked[0]
            await msg.respond(json.dumps({"locked": True, "name": "queue", "key": body["key"], "token": 5}).encode())
            got = await asyncio.wait_for(queue, WAIT)
            assert got and got.token == 5
            assert await asyncio.to_thread(got.unlock) is True
            assert [op for op, _, _ in svc.requests] == ["trylock", "unlock", "lock", "unlock"]
            session = aclient._session
            assert re.fullmatch(r"[0-9a-f]{32}", session), session
            for op, _, h in svc.requests:
                assert h.get(HEADER_SESSION) == session and h.get(HEADER_OWNER) == aclient.owner(), (op, h)

            with pytest.raises(ldlm.LDLMError) as info:
                await asyncio.to_thread(client.try_lock, "gone")
            assert info.value.code == "OwnerGone", info.value
            assert svc.requests[-1][2].get(HEADER_SESSION) == session
            assert aclient._session != session, "no new session after OwnerGone"
            assert await asyncio.to_thread(client.try_lock, "next")
            assert svc.requests[-1][2].get(HEADER_SESSION) == aclient._session
        finally:
            await asyncio.to_thread(client.close)
            await svc.nc.close()

    run(main())


def test_without_sessions_no_session_header(url):
    async def main():
        prefix = f"sess{uuid.uuid4().hex[:12]}"
        svc = Service(await nats.connect(url), prefix)
        await svc.start()
        client = ldlm.AsyncClient(url, subject_prefix=prefix, sessions=False)
        try:
            held = await client.try_lock("job")
            await held.unlock()
            assert [HEADER_SESSION in h for _, _, h in svc.requests] == [False, False]
            assert all(h.get(HEADER_OWNER) == client.owner() for _, _, h in svc.requests)
        finally:
            await client.close()
            await svc.nc.close()

    run(main())


def test_kept_wait_ends_at_its_wait_timeout_when_no_server_comes_back(own_server, name):
    """The server dies (kill -9: no reply of any kind) while a lock() with a
    wait timeout waits, and does not come back: the wait, kept for an
    attach that never comes, still ends as a wait timeout (a falsy lock),
    as without sessions, not as a local request timeout."""
    server = own_server()

    async def main():
        holder, waiter = ldlm.AsyncClient(server.url), ldlm.AsyncClient(server.url)
        admin = await nats.connect(server.url)
        try:
            assert await holder.lock(name)
            task = asyncio.ensure_future(waiter.lock(name, wait_timeout_seconds=2))
            await until(lambda: admin_waiters(admin, name), "the waiter waits")
            await asyncio.to_thread(stop_server, server, signal.SIGKILL)
            got = await asyncio.wait_for(task, WAIT)
            assert not got, "granted by a dead server"
        finally:
            for c in (holder, waiter):
                await c.close()
            await admin.close()

    run(main())
