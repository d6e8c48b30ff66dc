"""The asyncio client. Each test runs its own event loop (no plugin needed)."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

import ldlm


def run(coro, timeout: float = 300):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def eventually_free(client: ldlm.AsyncClient, name: str, timeout: float = 20) -> bool:
    """Whether `name` becomes free within timeout (a withdrawal may still be
    retrying in the background: the service can serve an unlock before the
    lock request sent just before it)."""
    end = time.monotonic() + timeout
    while True:
        lock = await client.try_lock(name)
        if lock:
            await lock.unlock()
            return True
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)


def test_lock_try_lock_unlock(url, name):
    async def main():
        async with ldlm.AsyncClient(url) as a, ldlm.AsyncClient(url) as b:
            lock = await a.lock(name)
            assert lock and lock.locked and lock.token
            assert not await b.try_lock(name)
            assert not await b.lock(name, wait_timeout_seconds=0.2)
            assert await lock.unlock() is True
            assert not lock
            assert await lock.unlock() is False
            other = await b.try_lock(name)
            assert other
            await other.unlock()

    run(main())


def test_connects_lazily(url, name):
    async def main():
        c = ldlm.AsyncClient(url)
        assert c.nc is None
        lock = await c.try_lock(name)
        assert c.nc is not None and c.nc.is_connected
        assert lock
        await c.close()
        assert c.nc.is_closed
        with pytest.raises(nats.errors.ConnectionClosedError):
            await c.lock(name)

    run(main())


def test_contexts(url, name):
    async def main():
        async with ldlm.AsyncClient(url) as a, ldlm.AsyncClient(url) as b:
            async with a.lock_context(name) as lock:
                assert lock
                async with b.try_lock_context(name) as other:
                    assert not other
                async with b.lock_context(name, wait_timeout_seconds=0.2) as other:
                    assert not other
            assert not lock
            async with b.try_lock_context(name) as other:
                assert other
            with pytest.raises(KeyError):
                async with a.lock_context(name) as lock:
                    raise KeyError("boom")
            assert not lock
            async with await a.lock(name) as lock:
                assert lock
            assert not lock

    run(main())


def test_waiter_is_granted(url, name):
    async def main():
        async with ldlm.AsyncClient(url) as a, ldlm.AsyncClient(url) as b:
            held = await a.lock(name, size=2)
            held2 = await a.lock(name, size=2)
            waiter = asyncio.ensure_future(b.lock(name, size=2, wait_timeout_seconds=60))
            await asyncio.sleep(0.1)
            assert not waiter.done()
            await held.unlock()
            lock = await asyncio.wait_for(waiter, 60)
            assert lock and lock.token > held2.token
            await lock.unlock()
            await held2.unlock()

    run(main())


def test_auto_renew_task(url, name):
    async def main():
        async with ldlm.AsyncClient(url) as a, ldlm.AsyncClient(url) as b:
            lock = await a.lock(name, lock_timeout_seconds=1)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                assert not await b.try_lock(name)
                await asyncio.sleep(0.1)
            assert await lock.unlock() is True

    run(main())


def test_auto_renew_off(url, name):
    async def main():
        async with ldlm.AsyncClient(url, auto_renew=False) as a, ldlm.AsyncClient(url) as b:
            lock = await a.lock(name, lock_timeout_seconds=0.5)
            end = time.monotonic() + 30
            while not (other := await b.try_lock(name)):
                assert time.monotonic() < end, "the lock did not expire"
                await asyncio.sleep(0.05)
            await other.unlock()
            with pytest.raises(ldlm.LDLMError):
                await lock.renew(5)
            assert not lock

    run(main())


def test_cancelled_waiter_leaves_nothing_behind(url, name):
    """Cancel a waiting lock() at many moments, some right after the request
    left: whatever the service did with it, nothing may stay granted to the
    waiter once the holder unlocks."""

    async def main():
        async with ldlm.AsyncClient(url) as holder_client, ldlm.AsyncClient(url) as waiter_client:
            for i in range(40):
                held = await holder_client.lock(name)
                waiter = asyncio.ensure_future(waiter_client.lock(name))
                await asyncio.sleep((i % 8) * 0.0005)
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
                await held.unlock()
                assert await eventually_free(holder_client, name), f"iteration {i}: the cancelled waiter kept a grant"

    run(main())


def test_cancel_after_grant_gives_it_back(url, name):
    """The grant races with the cancellation: the cancelled lock() must give
    back what it may have been granted."""

    async def main():
        async with ldlm.AsyncClient(url) as a, ldlm.AsyncClient(url) as b:
            for i in range(20):
                held = await a.lock(name)
                waiter = asyncio.ensure_future(b.lock(name))
                await asyncio.sleep(0.01)
                unlocking = asyncio.ensure_future(held.unlock())
                await asyncio.sleep((i % 5) * 0.0005)
                waiter.cancel()
                try:
                    got = await waiter
                except asyncio.CancelledError:
                    pass
                else:
                    await got.unlock()  # it finished before the cancel: fine
                await unlocking
                assert await eventually_free(a, name), f"iteration {i}: a grant was left behind"

    run(main())


def test_wait_for_timeout_gives_up_the_wait(url, name):
    async def main():
        async with ldlm.AsyncClient(url) as a, ldlm.AsyncClient(url) as b:
            held = await a.lock(name)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(b.lock(name), 0.3)
            await held.unlock()
            assert await eventually_free(a, name)

    run(main())


def test_from_existing_connection(url, name):
    async def main():
        nc = await nats.connect(url)
        c = ldlm.AsyncClient(nc)
        assert c.owner() == f"{nc._server_info['server_id']}:{nc.client_id}"
        lock = await c.lock(name, lock_timeout_seconds=30)
        assert lock
        await c.close()  # releases the lock, keeps the connection
        assert nc.is_connected
        c2 = ldlm.AsyncClient(nc)
        again = await c2.try_lock(name)
        assert again
        await again.unlock()
        await nc.close()

    run(main())


def test_connect_options_need_an_address():
    with pytest.raises(TypeError):
        ldlm.AsyncClient(nats.aio.client.Client(), name="x")


def test_errors(url, name):
    async def main():
        async with ldlm.AsyncClient(url) as c:
            with pytest.raises(ldlm.InvalidLockSizeError):
                await c.lock(name, size=0)
            lock = await c.lock(name, size=2)
            with pytest.raises(ldlm.LockSizeMismatchError):
                await c.try_lock(name, size=1)
            await lock.unlock()

    run(main())


def test_close_right_after_renew_unlocks_at_once(url, name):
    """close() just after renew() gives the lock back at once. renew() wakes
    the lock's watch, and close() stops it while it wakes: with
    asyncio.wait_for before Python 3.12 the watch swallowed that
    cancellation and close() waited until the lock timeout passed (then the
    lock counted lost instead of unlocked). Several rounds: the two meet
    only in some."""

    async def main():
        async with ldlm.AsyncClient(url) as other:
            for i in range(10):
                client = ldlm.AsyncClient(url, auto_renew=False)
                lock = await client.try_lock(f"{name}-{i}", lock_timeout_seconds=600)
                assert lock
                await lock.renew(600)
                # bounded: a hanging close() ends the test instead of waiting 600 s
                await asyncio.wait_for(client.close(), 60)
                assert lock.lost_error is None, lock.lost_error
                assert not lock.locked
                again = await other.try_lock(f"{name}-{i}")
                assert again, "close() did not give the lock back"
                await again.unlock()

    run(main())
