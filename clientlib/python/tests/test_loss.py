"""Locks lost without being unlocked: the service's lost-lock notices, a
restarted lock server, a stopped one."""

from __future__ import annotations

import json
import signal
import threading

import pytest

import ldlm

from conftest import deadline_poll, stop_server


def admin_unlock(client: ldlm.Client, name: str) -> dict:
    import asyncio

    async def req():
        msg = await client.nc.request(f"ldlm.admin.unlock.{ldlm.encode_name(name)}", b"{}", timeout=10)
        return json.loads(msg.data)

    return asyncio.run_coroutine_threadsafe(req(), client.loop).result(30)


def test_force_released_lock_is_lost(make_client, name):
    holder, admin = make_client(), make_client()
    lock = holder.lock(name)
    assert lock
    reply = admin_unlock(admin, name)
    assert reply.get("unlocked"), reply
    deadline_poll(lambda: not lock, 30, what="the lost-lock notice")
    assert lock.lost_error.reason == "force-released"
    with pytest.raises(ldlm.LockLostError):
        lock.unlock()


def test_force_release_of_another_lock_leaves_ours(make_client, name):
    holder, admin = make_client(), make_client()
    ours = holder.lock(name)
    theirs = holder.lock(name + "-other")
    admin_unlock(admin, name + "-other")
    deadline_poll(lambda: not theirs, 30, what="the lost-lock notice")
    assert ours
    assert ours.unlock() is True


def test_restarted_server(own_server, name):
    """The lock server dies (kill -9) and a new one starts on the same port:
    held locks are lost, a waiting lock() asks the new server again. With
    sessions, a lock is not counted lost while the client is merely
    disconnected (a server restart within the grace keeps it): the new
    server's answer to the attach (it knows nothing of the session), or its
    start announcement, says that it is lost."""
    server = own_server()
    holder = ldlm.Client(server.url)
    waiter = ldlm.Client(server.url)
    try:
        held = holder.lock(name)
        assert held
        result = {}

        def wait():
            try:
                result["lock"] = waiter.lock(name, wait_timeout_seconds=120)
            except BaseException as e:  # noqa: BLE001
                result["error"] = e

        t = threading.Thread(target=wait)
        t.start()
        stop_server(server, signal.SIGKILL)
        own_server(server.port)  # a new instance, empty
        deadline_poll(lambda: not held, 60, what="the held lock to count as lost")
        assert held.lost_error.reason in ("connection-lost", "instance-gone")
        t.join(120)
        assert not t.is_alive()
        assert "error" not in result, result.get("error")
        lock = result["lock"]
        assert lock, "the waiter did not get the lock from the new server"
        assert lock.unlock() is True
    finally:
        holder.close()
        waiter.close()


def test_stopped_server_fails_the_waiter_or_keeps_waiting(own_server, name):
    """SIGTERM and no restart: the waiter keeps asking for its wait timeout,
    then says that no service answered (or that it stayed unavailable); it
    does not hang past its wait timeout, and held locks are lost."""
    server = own_server()
    holder = ldlm.Client(server.url)
    waiter = ldlm.Client(server.url)
    try:
        held = holder.lock(name)
        result = {}

        def wait():
            try:
                result["lock"] = waiter.lock(name, wait_timeout_seconds=8)
            except BaseException as e:  # noqa: BLE001
                result["error"] = e

        t = threading.Thread(target=wait)
        t.start()
        stop_server(server)
        deadline_poll(lambda: not held, 60, what="the held lock to count as lost")
        t.join(60)
        assert not t.is_alive()
        if "error" in result:
            assert isinstance(result["error"], (ldlm.NoServiceError, ldlm.UnavailableError)), result["error"]
        else:
            assert not result["lock"]
    finally:
        holder.close()
        waiter.close()


def test_graceful_stop_then_restart_the_waiter_gets_the_lock(own_server, name):
    """D4: SIGTERM of the lock server while a lock() waits (the service
    replies Unavailable, or the connection goes), then a new server on the
    same port: the waiter asks the new instance and gets the lock."""
    server = own_server()
    holder = ldlm.Client(server.url)
    waiter = ldlm.Client(server.url)
    try:
        held = holder.lock(name)
        assert held
        result = {}

        def wait():
            try:
                result["lock"] = waiter.lock(name, wait_timeout_seconds=120)
            except BaseException as e:  # noqa: BLE001
                result["error"] = e

        t = threading.Thread(target=wait)
        t.start()
        stop_server(server, signal.SIGTERM)
        deadline_poll(lambda: not held, 60, what="the held lock to count as lost")
        assert t.is_alive(), result  # still asking
        own_server(server.port)
        t.join(120)
        assert not t.is_alive()
        assert "error" not in result, result.get("error")
        lock = result["lock"]
        assert lock, "the waiter did not get the lock from the new instance"
        assert lock.unlock() is True
    finally:
        holder.close()
        waiter.close()
