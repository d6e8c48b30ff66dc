"""Lock timeouts, auto-renew and manual renew."""

from __future__ import annotations

import json
import time

import pytest

import ldlm

from conftest import deadline_poll


def hold_for(seconds: float, other: ldlm.Client, name: str) -> None:
    """For `seconds`, check again and again that `other` cannot take `name`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        attempt = other.try_lock(name)
        if attempt:
            attempt.unlock()
            pytest.fail(f"{name!r} was free {seconds - (end - time.monotonic()):.2f}s into the hold")
        time.sleep(0.1)


def test_auto_renew_keeps_the_lock(make_client, name):
    a, b = make_client(), make_client()
    lock = a.lock(name, lock_timeout_seconds=1)
    assert lock
    first_expiry = lock.expires_at
    hold_for(3.0, b, name)
    assert lock
    assert lock.expires_at > first_expiry  # renewed in the background
    assert lock.unlock() is True  # still ours
    assert b.try_lock(name).unlock()


def test_auto_renew_on_try_lock_and_contexts(make_client, name):
    a, b = make_client(), make_client()
    with a.try_lock_context(name, lock_timeout_seconds=1) as lock:
        assert lock
        hold_for(2.5, b, name)
    assert b.try_lock(name).unlock()


def test_lock_expires_without_auto_renew(make_client, name):
    a = make_client(auto_renew=False)
    b = make_client()
    lock = a.lock(name, lock_timeout_seconds=1)
    assert lock and lock.expires_at is not None
    taken = deadline_poll(lambda: b.try_lock(name), 30, what="the lock to expire")
    assert taken.token > lock.token
    assert not lock  # counted lost by the client, too
    with pytest.raises(ldlm.LockLostError) as info:
        lock.unlock()
    assert info.value.reason == "expired"
    assert lock.lost_error is info.value
    taken.unlock()


def test_lost_lock_turns_falsy_by_itself(client, name):
    lock = client.lock(name, lock_timeout_seconds=0.5, auto_renew=False)
    assert lock
    # lost_error, not the lock's truth: the lock turns falsy by the clock a
    # moment before the loop marks it lost
    deadline_poll(lambda: lock.lost_error is not None, 30, what="the lock to count as lost")
    assert not lock
    assert lock.lost_error.reason == "expired"
    assert "lost" in repr(lock)


def test_per_lock_auto_renew_switch(make_client, name):
    a, b = make_client(), make_client()  # auto-renew on for the client...
    lock = a.lock(name, lock_timeout_seconds=0.5, auto_renew=False)  # ...off for this lock
    deadline_poll(lambda: b.try_lock(name), 30, what="the lock to expire").unlock()
    with pytest.raises(ldlm.LDLMError):
        lock.renew(5)
    assert not lock


def test_manual_renew(make_client, name):
    a = make_client(auto_renew=False)
    b = make_client()
    lock = a.lock(name, lock_timeout_seconds=1)
    before = lock.expires_at
    assert lock.renew(60) is lock
    assert lock.lock_timeout_seconds == 60
    assert lock.expires_at > before
    hold_for(2.0, b, name)  # well past the first timeout
    assert lock.unlock() is True


def test_renew_adds_a_timeout_and_auto_renews_it(make_client, name):
    a, b = make_client(), make_client()
    lock = a.lock(name)
    assert lock.expires_at is None
    lock.renew(1)
    assert lock.expires_at is not None
    hold_for(2.5, b, name)
    assert lock.unlock() is True


def test_auto_renew_notices_a_lost_lock(client, name):
    lock = client.lock(name, lock_timeout_seconds=0.6)
    assert lock
    # Release it behind the Lock's back, as an expiry would.
    import asyncio

    async def steal():
        msg = await client.nc.request(
            f"ldlm.unlock.{name}", json.dumps({"key": lock.key}).encode(), timeout=10
        )
        return json.loads(msg.data)

    assert asyncio.run_coroutine_threadsafe(steal(), client.loop).result(30)["unlocked"]
    deadline_poll(lambda: not lock, 30, what="the renewer to notice the loss")
    assert lock.lost_error.reason == "refused"
    assert lock.lost_error.cause.code in ("InvalidLockKey", "NotLocked", "LockDoesNotExist")
    with pytest.raises(ldlm.LockLostError):
        lock.unlock()
    with pytest.raises(ldlm.LockLostError):
        lock.renew(5)


def test_renew_to_a_shorter_timeout_reschedules_the_renewer(make_client, name):
    a, b = make_client(), make_client()
    lock = a.lock(name, lock_timeout_seconds=300)  # renewer asleep for ~100 s
    lock.renew(1)  # now it must renew every ~0.33 s
    hold_for(2.5, b, name)
    assert lock.unlock() is True
