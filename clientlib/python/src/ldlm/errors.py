"""Exceptions raised by the LDLM client.

Every error the lock service can reply with has its own class, named after
the protocol's error code (``InvalidLockKey`` -> :class:`InvalidLockKeyError`),
all derived from :class:`LDLMError`, whose ``code`` attribute is the code as
the service sent it.

Two outcomes are deliberately *not* exceptions, because they are normal
answers: ``lock(..., wait_timeout_seconds=N)`` that is not granted in time and
``try_lock()`` on a lock that is held both return a falsy :class:`ldlm.Lock`.

Failures of the transport (no NATS server, a request timing out) are
nats-py's own exceptions (``nats.errors.*``). When no lock service answers
for the whole budget of a call, :class:`NoServiceError` says so; it is also a
``nats.errors.NoRespondersError``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import nats.errors


class LDLMError(Exception):
    """Base class of every error reported by the lock service.

    ``code`` is the protocol's error code (a string such as
    ``"InvalidLockKey"``), ``message`` the service's explanation and
    ``lock_name`` the name of the lock the request was about (if known).
    """

    #: the protocol error code of the class (LDLMError itself: any code)
    CODE: Optional[str] = None

    def __init__(self, message: str = "", *, code: Optional[str] = None, lock_name: Optional[str] = None):
        self.code: Optional[str] = code if code is not None else self.CODE
        self.message = message
        self.lock_name = lock_name
        text = f"{self.code}: {message}" if self.code else message
        super().__init__(text)


class BadRequestError(LDLMError):
    """The request body was not a JSON object of the documented fields."""

    CODE = "BadRequest"


class InvalidLockNameError(LDLMError):
    """The name is empty, too long, not UTF-8 or badly encoded."""

    CODE = "InvalidLockName"


class InvalidLockSizeError(LDLMError):
    """The size is below 1 or above the service's limit."""

    CODE = "InvalidLockSize"


class LockSizeMismatchError(LDLMError):
    """The lock exists (held or waited for) with another size."""

    CODE = "LockSizeMismatch"


class InvalidTimeoutError(LDLMError):
    """A timeout is negative, too large, or missing for renew."""

    CODE = "InvalidTimeout"


class LockDoesNotExistOrInvalidKeyError(LDLMError):
    """Base of :class:`InvalidLockKeyError` and :class:`LockDoesNotExistError`
    (the name of py-ldlm's class for either): the key holds nothing."""


class InvalidLockKeyError(LockDoesNotExistOrInvalidKeyError):
    """unlock/renew: the key holds no slot of the lock (or is malformed)."""

    CODE = "InvalidLockKey"


class LockKeyInUseError(LDLMError):
    """lock/trylock: the client-chosen key already holds or waits for the lock."""

    CODE = "LockKeyInUse"


class LockDoesNotExistError(LockDoesNotExistOrInvalidKeyError):
    """unlock/renew: no one holds or waits for the lock."""

    CODE = "LockDoesNotExist"


class NotLockedError(LDLMError):
    """unlock/renew: the lock has waiters but no holder with that key.

    Also raised locally by ``renew()`` on a :class:`ldlm.Lock` that is not held.
    """

    CODE = "NotLocked"


class LockWaitTimeoutError(LDLMError):
    """lock: not granted within ``wait_timeout_seconds``.

    The client turns this reply into a falsy Lock; the class exists so that
    every protocol code has one.
    """

    CODE = "LockWaitTimeout"


class LockWaitCancelledError(LDLMError):
    """lock: the wait was cancelled by an unlock with the waiter's key."""

    CODE = "LockWaitCancelled"


class OwnerGoneError(LDLMError):
    """lock: the requesting connection closed (e.g. reconnected) while it waited."""

    CODE = "OwnerGone"


class LimitExceededError(LDLMError):
    """A configured limit (locks, waiters) of the service is reached."""

    CODE = "LimitExceeded"


class UnavailableError(LDLMError):
    """The service is stopping."""

    CODE = "Unavailable"


class InternalError(LDLMError):
    """A fault of the service."""

    CODE = "Internal"


class UnexpectedReplyError(LDLMError):
    """The reply was not a valid LDLM reply (not JSON, wrong shape).

    Not a protocol code: raised by the client itself (``code`` is None).
    """


class LockLostError(LDLMError):
    """A lock this client held is no longer held, and not because it was
    unlocked: set as ``Lock.lost_error`` and raised by ``unlock()`` and
    ``renew()`` of a lost lock. Not a protocol code (``code`` is None).

    ``reason`` is one of:

    - ``"expired"``: its lock timeout passed without a renewal;
    - ``"refused"``: the service answered a renew or unlock saying the key
      holds nothing (``cause`` is that error);
    - ``"connection-lost"``: the NATS connection it was granted over closed
      or was replaced by a reconnect (the service releases such locks);
    - ``"instance-gone"``: the lock service instance that granted it stopped
      or was replaced;
    - ``"released-on-disconnect"``, ``"force-released"`` (and ``"expired"``):
      the service's own lost-lock notice said so.
    """

    def __init__(
        self,
        message: str = "",
        *,
        reason: str,
        lock_name: Optional[str] = None,
        cause: Optional[BaseException] = None,
    ):
        super().__init__(message, lock_name=lock_name)
        self.reason = reason
        self.cause = cause


class NoServiceError(LDLMError, nats.errors.NoRespondersError):
    """No lock service answered (no responders, or it kept replying that it
    is stopping) for the whole budget of the call: the request timeout for
    trylock, unlock and renew, the wait timeout for lock. Not a protocol code
    (``code`` is None). It is also a ``nats.errors.NoRespondersError``."""

    def __str__(self) -> str:
        return self.message


class ConnectionLostError(LDLMError):
    """The NATS connection is down (the client is reconnecting), so the
    request was not sent. Not a protocol code (``code`` is None)."""


#: error class by protocol code
ERRORS_BY_CODE: dict[str, type[LDLMError]] = {
    cls.CODE: cls
    for cls in (
        BadRequestError,
        InvalidLockNameError,
        InvalidLockSizeError,
        LockSizeMismatchError,
        InvalidTimeoutError,
        InvalidLockKeyError,
        LockKeyInUseError,
        LockDoesNotExistError,
        NotLockedError,
        LockWaitTimeoutError,
        LockWaitCancelledError,
        OwnerGoneError,
        LimitExceededError,
        UnavailableError,
        InternalError,
    )
    if cls.CODE
}

#: codes that, in reply to renew or unlock of a lock we were granted, mean the
#: grant is gone (it expired, or was released when our connection closed)
LOST_CODES = frozenset({"InvalidLockKey", "NotLocked", "LockDoesNotExist"})


def error_from_reply(error: Any, lock_name: Optional[str] = None) -> LDLMError:
    """Build the exception for the ``error`` object of a reply."""
    if isinstance(error, Mapping):
        code = str(error.get("code") or "") or None
        message = str(error.get("message") or "")
    else:
        code, message = None, str(error)
    cls = ERRORS_BY_CODE.get(code or "", LDLMError)
    if cls is LDLMError:
        return LDLMError(message, code=code, lock_name=lock_name)
    return cls(message, lock_name=lock_name)


__all__ = [
    "LDLMError",
    *(cls.__name__ for cls in ERRORS_BY_CODE.values()),
    "LockDoesNotExistOrInvalidKeyError",
    "UnexpectedReplyError",
    "LockLostError",
    "NoServiceError",
    "ConnectionLostError",
    "ERRORS_BY_CODE",
    "error_from_reply",
]
