"""The synchronous client against the real server."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import nats
import pytest

import ldlm

from conftest import deadline_poll, free_port


def test_lock_is_truthy_and_has_fields(client, name):
    lock = client.lock(name)
    assert lock
    assert lock.locked
    assert lock.name == name
    assert isinstance(lock.key, str) and len(lock.key) >= 32
    assert isinstance(lock.token, int) and lock.token > 0
    assert lock.size == 1
    assert lock.expires_at is None
    assert "locked" in repr(lock)
    assert lock.unlock() is True
    assert not lock
    assert "not locked" in repr(lock)


def test_unlock_twice_is_a_no_op(client, name):
    lock = client.lock(name)
    assert lock.unlock() is True
    assert lock.unlock() is False


def test_tokens_increase(client, name):
    tokens = []
    for _ in range(3):
        lock = client.lock(name)
        tokens.append(lock.token)
        lock.unlock()
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


def test_try_lock_on_a_held_lock_is_falsy(make_client, name):
    a, b = make_client(), make_client()
    held = a.try_lock(name)
    assert held
    other = b.try_lock(name)
    assert not other
    assert other.name == name
    assert other.key is None and other.token is None
    assert other.unlock() is False  # nothing to release
    held.unlock()
    again = b.try_lock(name)
    assert again
    again.unlock()


def test_same_client_does_not_reenter(client, name):
    lock = client.lock(name)
    assert not client.try_lock(name)
    lock.unlock()


def test_wait_timeout_returns_falsy_lock(make_client, name):
    a, b = make_client(), make_client()
    held = a.lock(name)
    started = time.monotonic()
    lock = b.lock(name, wait_timeout_seconds=0.5)
    elapsed = time.monotonic() - started
    assert not lock
    assert lock.name == name
    assert 0.4 <= elapsed < 30  # generous: a shared 2-core machine
    held.unlock()


def test_waiter_gets_the_lock_when_released(make_client, name):
    a, b = make_client(), make_client()
    held = a.lock(name)
    result = {}

    def wait():
        result["lock"] = b.lock(name, wait_timeout_seconds=60)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)  # not needed for correctness: the grant may come either way
    assert t.is_alive()
    held.unlock()
    t.join(60)
    assert not t.is_alive()
    assert result["lock"]
    assert result["lock"].token > held.token
    result["lock"].unlock()


def test_unlimited_wait_is_not_bounded_by_request_timeout(url, name):
    # a request timeout far shorter than the wait: lock() must still wait
    a = ldlm.Client(url)
    b = ldlm.Client(url, request_timeout_seconds=0.2)
    try:
        held = a.lock(name)
        timer = threading.Timer(1.0, held.unlock)
        timer.start()
        lock = b.lock(name)  # no wait timeout: waits as long as it takes
        assert lock
        lock.unlock()
        timer.join()
    finally:
        a.close()
        b.close()


def test_size(make_client, name):
    a, b = make_client(), make_client()
    l1 = a.lock(name, size=2)
    l2 = b.lock(name, size=2)
    assert l1 and l2 and l1.size == 2 and l2.size == 2
    assert not a.try_lock(name, size=2)
    assert not b.lock(name, size=2, wait_timeout_seconds=0.2)
    l1.unlock()
    l3 = a.try_lock(name, size=2)
    assert l3
    l2.unlock()
    l3.unlock()


def test_size_mismatch(client, name):
    lock = client.lock(name, size=3)
    with pytest.raises(ldlm.LockSizeMismatchError) as info:
        client.try_lock(name, size=2)
    assert info.value.code == "LockSizeMismatch"
    assert isinstance(info.value, ldlm.LDLMError)
    assert info.value.lock_name == name
    lock.unlock()


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"size": 0}, ldlm.InvalidLockSizeError),
        ({"lock_timeout_seconds": -1}, ldlm.InvalidTimeoutError),
        ({"lock_timeout_seconds": 10 * 365 * 24 * 3600}, ldlm.InvalidTimeoutError),
        ({"wait_timeout_seconds": -1}, ldlm.InvalidTimeoutError),
    ],
)
def test_invalid_requests(client, name, kwargs, error):
    with pytest.raises(error) as info:
        client.lock(name, **kwargs)
    assert info.value.code == error.CODE


def test_renew_errors(client, name):
    lock = client.lock(name)
    with pytest.raises(ldlm.InvalidTimeoutError):
        lock.renew(-5)
    assert lock  # a refused renew of a held lock does not lose it
    lock.unlock()
    with pytest.raises(ldlm.NotLockedError):
        lock.renew(10)


def test_lock_as_context_manager(client, name):
    with client.lock(name) as lock:
        assert lock
        assert not client.try_lock(name)
    assert not lock
    assert client.try_lock(name).unlock()


def test_lock_context_releases_on_exception(client, name):
    with pytest.raises(RuntimeError):
        with client.lock_context(name) as lock:
            assert lock
            raise RuntimeError("boom")
    assert not lock
    assert client.try_lock(name).unlock()


def test_lock_context_with_wait_timeout_when_held(make_client, name):
    a, b = make_client(), make_client()
    held = a.lock(name)
    with b.lock_context(name, wait_timeout_seconds=0.2) as lock:
        assert not lock
    assert held  # exiting the context did not touch the holder's lock
    assert not b.try_lock(name)
    held.unlock()


def test_try_lock_context(make_client, name):
    a, b = make_client(), make_client()
    with a.try_lock_context(name, lock_timeout_seconds=30) as lock:
        assert lock
        assert lock.expires_at is not None
        with b.try_lock_context(name) as other:
            assert not other
    assert not lock
    assert b.try_lock(name).unlock()


def test_context_exit_after_lock_was_lost(client, name):
    # no auto-renew, lock expires inside the block: exiting raises, since the
    # work was not protected to the end
    with pytest.raises(ldlm.LDLMError):
        with client.lock_context(name, lock_timeout_seconds=0.3, auto_renew=False) as lock:
            assert lock
            deadline_poll(lambda: client.try_lock(name), 30, what="the lock to expire").unlock()


def test_address_forms(ldlm_server, name):
    for address in (f"127.0.0.1:{ldlm_server.port}", ldlm_server.url, [ldlm_server.url]):
        with ldlm.Client(address) as c:
            lock = c.try_lock(name)
            assert lock
            lock.unlock()


def test_owner_header_identity(client):
    owner = client.owner()
    server_id, _, cid = owner.rpartition(":")
    assert server_id == client.nc._server_info['server_id']
    assert int(cid) == client.nc.client_id


def test_close_releases_locks(make_client, url, name):
    a = ldlm.Client(url)
    lock = a.lock(name)
    assert lock
    a.close()
    a.close()  # idempotent
    b = make_client()
    assert b.try_lock(name).unlock()
    with pytest.raises(nats.errors.ConnectionClosedError):
        a.lock(name)


def test_no_service(ldlm_server):
    # a prefix nobody serves: asked again until the budget is spent, then an
    # error that says so (also a nats-py NoRespondersError)
    with ldlm.Client(ldlm_server.url, subject_prefix="nobody", request_timeout_seconds=0.3) as c:
        with pytest.raises(ldlm.NoServiceError, match="no lock service answered on nobody") as info:
            c.try_lock("x")
        assert isinstance(info.value, nats.errors.NoRespondersError)
        with pytest.raises(ldlm.NoServiceError):
            c.lock("x", wait_timeout_seconds=0.3)
    with ldlm.Client(ldlm_server.url, subject_prefix="nobody", retries=0) as c:
        with pytest.raises(ldlm.NoServiceError):
            c.try_lock("x")


def test_connect_failure_is_prompt():
    # nats-py alone would retry the first connect 60 times, 2 s apart
    started = time.monotonic()
    with pytest.raises((nats.errors.NoServersError, OSError)):
        ldlm.Client(f"nats://127.0.0.1:{free_port()}", connect_timeout=1)
    assert time.monotonic() - started < 60


def test_client_from_existing_connection(url, name):
    """Client(nc) drives a nats-py connection that runs on a loop in another
    thread; close() leaves the connection open."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        nc = asyncio.run_coroutine_threadsafe(nats.connect(url), loop).result(30)
        c = ldlm.Client(nc)  # loop found from the connection
        lock = c.lock(name)
        assert lock
        assert c.owner() == f"{nc._server_info['server_id']}:{nc.client_id}"
        c2 = ldlm.Client(nc, loop=loop)
        assert not c2.try_lock(name)
        lock.unlock()
        c.close()
        c2.close()
        assert nc.is_connected
        asyncio.run_coroutine_threadsafe(nc.close(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def test_sync_client_refuses_its_own_loop(client, name):
    async def inside():
        with pytest.raises(RuntimeError, match="deadlock"):
            client.lock(name)

    asyncio.run_coroutine_threadsafe(inside(), client.loop).result(30)


def test_dropped_client_is_closed(make_client, url, name):
    c = ldlm.Client(url)
    lock = c.lock(name)
    thread = c._thread
    assert lock and thread.is_alive()
    del lock, c
    gc.collect()
    deadline_poll(lambda: not thread.is_alive(), 30, what="the dropped client's thread to end")
    other = make_client()
    assert other.lock(name, wait_timeout_seconds=30).unlock()


def test_a_referenced_lock_keeps_its_client(make_client, name, url):
    lock = ldlm.Client(url).lock(name)  # the Client is only reachable through the Lock
    gc.collect()
    other = make_client()
    assert not other.try_lock(name)
    assert lock.unlock() is True
    lock._client.close()
