"""LDLM client for Python: a light-weight distributed lock manager on NATS.

    import ldlm

    client = ldlm.Client("nats://127.0.0.1:4222")
    lock = client.lock("my-task")
    # Do work, then release lock
    lock.unlock()

``ldlm.Client`` is synchronous (and thread-safe); ``ldlm.AsyncClient`` is the
asyncio client. Both speak the LDLM wire protocol (docs/protocol.md) through
nats-py.
"""

from ._names import decode_name, encode_name
from . import exceptions
from .aio import DEFAULT_ADDRESS, AsyncClient, AsyncLock, AsyncLockContext, TLSConfig, format_owner
from .errors import (
    ERRORS_BY_CODE,
    BadRequestError,
    ConnectionLostError,
    InternalError,
    InvalidLockKeyError,
    InvalidLockNameError,
    InvalidLockSizeError,
    InvalidTimeoutError,
    LDLMError,
    LimitExceededError,
    LockDoesNotExistError,
    LockDoesNotExistOrInvalidKeyError,
    LockKeyInUseError,
    LockLostError,
    LockSizeMismatchError,
    LockWaitCancelledError,
    LockWaitTimeoutError,
    NoServiceError,
    NotLockedError,
    OwnerGoneError,
    UnavailableError,
    UnexpectedReplyError,
)
from .sync import Client, Lock, LockContext

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncClient",
    "AsyncLock",
    "AsyncLockContext",
    "Client",
    "Lock",
    "LockContext",
    "TLSConfig",
    "exceptions",
    "format_owner",
    "encode_name",
    "decode_name",
    "ERRORS_BY_CODE",
    "LDLMError",
    "BadRequestError",
    "InvalidLockNameError",
    "InvalidLockSizeError",
    "LockSizeMismatchError",
    "InvalidTimeoutError",
    "InvalidLockKeyError",
    "LockKeyInUseError",
    "LockDoesNotExistError",
    "LockDoesNotExistOrInvalidKeyError",
    "NotLockedError",
    "LockWaitTimeoutError",
    "LockWaitCancelledError",
    "OwnerGoneError",
    "LimitExceededError",
    "UnavailableError",
    "InternalError",
    "UnexpectedReplyError",
    "LockLostError",
    "NoServiceError",
    "ConnectionLostError",
]
