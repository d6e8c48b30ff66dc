"""py-ldlm's calling conventions (issue 15): what a py-ldlm user's code
looks like, run against this package."""

from __future__ import annotations

import ssl

import pytest

import ldlm

from conftest import deadline_poll


def test_positional_order_of_lock_and_try_lock(make_client, name):
    c = make_client()
    # py-ldlm: lock(name, wait_timeout_seconds, lock_timeout_seconds, size)
    lock = c.lock(name, 5, 30, 2)
    assert lock and lock.size == 2 and lock.lock_timeout_seconds == 30 and lock.expires_at is not None
    # try_lock(name, lock_timeout_seconds, size)
    other = c.try_lock(name, 30, 2)
    assert other and other.size == 2
    assert not c.try_lock(name, 30, 2)
    assert not c.lock(name, 0.2, 30, 2)  # waits 0.2 s, then falsy
    with c.lock_context(name + "-ctx", 5, 30, 1) as held:
        assert held and held.lock_timeout_seconds == 30
    with c.try_lock_context(name + "-ctx", 30, 1) as held:
        assert held
    lock.unlock()
    other.unlock()


def test_unlock_and_renew_by_name_and_key(make_client, name):
    a, b = make_client(), make_client()
    lock = a.lock(name, lock_timeout_seconds=30)
    # another client (or process) that knows the key
    renewed = b.renew(name, lock.key, 60)
    assert renewed.token == lock.token and renewed.lock_timeout_seconds == 60
    assert b.unlock(name, lock.key) is True
    assert b.try_lock(name).unlock()
    with pytest.raises(ldlm.exceptions.LockDoesNotExistOrInvalidKeyError):
        b.unlock(name, lock.key)
    with pytest.raises(ldlm.LockDoesNotExistError):
        b.renew(name, lock.key, 10)
    # the holder's own lock, by name and key: it stops renewing it
    mine = a.lock(name, lock_timeout_seconds=30)
    assert a.renew(name, mine.key, 45) is not None and mine.lock_timeout_seconds == 45
    assert a.unlock(name, mine.key) is True
    assert not mine
    assert mine.unlock() is False


def test_client_options(make_client, name):
    c = make_client(auto_renew_locks=False, lock_timeout_seconds=0.5)
    lock = c.lock(name)  # the client-wide lock timeout applies
    assert lock.lock_timeout_seconds == 0.5
    # lost_error, not the lock's truth: the lock turns falsy by the clock a
    # moment before the loop marks it lost
    deadline_poll(lambda: lock.lost_error is not None, 30, what="the lock to expire without renewals")
    assert not lock
    assert lock.lost_error.reason == "expired"
    own = c.lock(name + "-own", lock_timeout_seconds=30)  # a lock's own timeout wins
    assert own.lock_timeout_seconds == 30
    own.unlock()
    renewing = make_client(auto_refresh_locks=True, lock_timeout_seconds=1)
    held = renewing.lock(name + "-renewed")
    assert held.lock_timeout_seconds == 1
    held.unlock()


def test_retries_bound_the_wait_for_a_service(ldlm_server):
    with ldlm.Client(ldlm_server.url, subject_prefix="nobody", retries=2, retry_delay_seconds=0.1) as c:
        with pytest.raises(ldlm.exceptions.NoServiceError):
            c.try_lock("x")


def test_exceptions_module():
    from ldlm.exceptions import (  # noqa: F401 - py-ldlm's names import
        BaseLDLMException,
        InvalidLockKeyError,
        InvalidLockSizeError,
        LDLMError,
        LockDoesNotExistError,
        LockDoesNotExistOrInvalidKeyError,
        LockSizeMismatchError,
        LockWaitTimeoutError,
        NotLockedError,
    )

    assert BaseLDLMException is ldlm.LDLMError
    assert issubclass(InvalidLockKeyError, LockDoesNotExistOrInvalidKeyError)
    assert issubclass(LockDoesNotExistError, LockDoesNotExistOrInvalidKeyError)
    assert not issubclass(NotLockedError, LockDoesNotExistOrInvalidKeyError)


def test_tls_config_and_password_are_translated():
    c = ldlm.AsyncClient("127.0.0.1:1", tls=ldlm.TLSConfig(), password="s3cret")
    assert isinstance(c._connect_options["tls"], ssl.SSLContext)
    assert c._connect_options["token"] == "s3cret" and "password" not in c._connect_options
    c = ldlm.AsyncClient("127.0.0.1:1", user="app", password="s3cret")
    assert c._connect_options["password"] == "s3cret" and "token" not in c._connect_options
