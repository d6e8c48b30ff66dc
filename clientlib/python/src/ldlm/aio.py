"""The asyncio LDLM client: :class:`AsyncClient` and :class:`AsyncLock`.

The synchronous :class:`ldlm.Client` is a thin layer over this module that
runs it on an event loop in a background thread.

How the client follows what the service does with its locks
(docs/protocol.md):

- every lock request carries a key chosen here, so that a request given up
  on (cancelled, interrupted, timed out locally) can be withdrawn with an
  unlock of that key;
- requests carry ``Ldlm-Owner: SERVER_NAME:CLIENT_ID`` so that the service
  releases this connection's locks when it closes. The client therefore
  treats a dropped or replaced connection (a reconnect) as the loss of the
  locks granted over it, and asks again, over the new connection, for the
  locks it was waiting for (unless ``keep_on_disconnect``);
- it listens to the lost-lock notices for its connection
  (``PREFIX.lost.OWNER``) and to instance announcements
  (``PREFIX.instance.*``);
- a lock with a lock timeout is renewed in the background (unless auto-renew
  is off) and counted lost once its timeout passes without a renewal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from datetime import datetime
from typing import Any, Awaitable, Callable, Optional, Sequence, TypeVar, Union

import nats
import nats.errors
from nats.aio.client import Client as NATS

from ._names import DEFAULT_PREFIX, OP_LOCK, OP_RENEW, OP_TRYLOCK, OP_UNLOCK, encode_name, subject
from .errors import (
    LOST_CODES,
    ConnectionLostError,
    LockLostError,
    NotLockedError,
    OwnerGoneError,
    UnexpectedReplyError,
    error_from_reply,
)

log = logging.getLogger("ldlm")

T = TypeVar("T")

#: where a client connects when given no address
DEFAULT_ADDRESS = "nats://127.0.0.1:4222"
#: how long trylock, unlock and renew wait for the service's reply
DEFAULT_REQUEST_TIMEOUT_SECONDS = 10.0
#: added to wait_timeout_seconds to bound a blocking lock request locally
DEFAULT_WAIT_MARGIN_SECONDS = 10.0
#: how long the client keeps trying to withdraw a request it gave up on
DEFAULT_CLEANUP_TIMEOUT_SECONDS = 5.0
#: request timeout of a lock that waits without limit (ten years: "forever",
#: while still a finite number that every nats-py version accepts)
_UNLIMITED_REQUEST_TIMEOUT = 10 * 365 * 24 * 3600.0
#: nats-py's default max_reconnect_attempts, restored after the first connect
_NATS_DEFAULT_RECONNECT_ATTEMPTS = 60
#: how often the client checks its connection for a reconnect
_WATCH_INTERVAL = 0.25
#: how long a withdrawal waits for the connection to come back
_WITHDRAW_RECONNECT_WAIT = 180.0
#: the service's smallest timeout
_MIN_TIMEOUT = 0.001

HEADER_OWNER = "Ldlm-Owner"
HEADER_ERROR_CODE = "Nats-Service-Error-Code"
HEADER_ERROR = "Nats-Service-Error"

Address = Union[str, Sequence[str], NATS]

# lock states
_HELD = "held"
_UNLOCKED = "unlocked"
_LOST = "lost"
_NOT_OBTAINED = "not obtained"


def normalize_servers(address: Union[str, Sequence[str]]) -> list[str]:
    """Turn "host:port", "nats://host:port", "a:1,b:2" or a list of those into
    a list of NATS URLs (a bare "host:port" gets the nats:// scheme)."""
    if isinstance(address, str):
        parts = [p.strip() for p in address.split(",")]
    else:
        parts = [str(p).strip() for p in address]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("no server address given")
    return [p if "://" in p else "nats://" + p for p in parts]


def _parse_time(value: Any) -> Optional[datetime]:
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        log.debug("cannot parse time %r", value)
        return None


async def _finish(aw: Awaitable[T]) -> T:
    """Await aw to completion even if the caller is cancelled meanwhile; then
    re-raise the cancellation. Used for the clean-up requests (the unlock that
    gives back an abandoned grant) that must not be cut short."""
    task = asyncio.ensure_future(aw)
    interrupted = False
    while not task.done():
        try:
            # asyncio.wait, unlike wait_for, never cancels what it waits for
            await asyncio.wait({task})
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        if not task.cancelled() and task.exception() is not None:
            log.debug("clean-up failed: %r", task.exception())
        raise asyncio.CancelledError()
    return task.result()


def _unknown_key(err: Any) -> bool:
    """Whether an error object of a reply says that the key holds or waits
    for nothing."""
    return isinstance(err, dict) and err.get("code") in LOST_CODES


class AsyncLock:
    """The outcome of a lock request: truthy while the lock is held.

    Attributes: ``name``; and when it was granted ``key`` (the holder's
    secret), ``token`` (the fencing token), ``size``, ``expires_at`` (the
    service's expiry, a datetime, or None without a lock timeout),
    ``lock_timeout_seconds`` and ``instance`` (the service instance that
    granted it). ``lost_error`` is a :class:`~ldlm.LockLostError` once the
    lock was lost (it expired, was released by the service, or its connection
    went away); the lock is then falsy.
    """

    def __init__(
        self,
        client: "AsyncClient",
        name: str,
        *,
        granted: bool = False,
        key: Optional[str] = None,
        token: Optional[int] = None,
        size: Optional[int] = None,
        expires_at: Optional[datetime] = None,
        lock_timeout_seconds: Optional[float] = None,
        auto_renew: bool = False,
        epoch: Optional[str] = None,
        instance: Optional[str] = None,
        sent_at: float = 0.0,
    ):
        self._client = client
        self.name = name
        self.key = key
        self.token = token
        self.size = size
        self.expires_at = expires_at
        self.lock_timeout_seconds = lock_timeout_seconds
        self.instance = instance
        self.lost_error: Optional[LockLostError] = None
        self._state = _HELD if granted else _NOT_OBTAINED
        self._auto_renew = auto_renew
        self._epoch = epoch
        # Our estimate of the expiry, on the monotonic clock: counted from
        # before the request left, so it errs on the early side.
        self._expires_mono: Optional[float] = (
            sent_at + lock_timeout_seconds if granted and lock_timeout_seconds else None
        )
        self._watch_task: Optional[asyncio.Task] = None
        self._poke = asyncio.Event()
        self._renew_mu = asyncio.Lock()

    @property
    def locked(self) -> bool:
        """True while this grant is held, as far as this client knows."""
        if self._state != _HELD:
            return False
        exp = self._expires_mono
        return exp is None or time.monotonic() < exp

    def __bool__(self) -> bool:
        return self.locked

    def __repr__(self) -> str:
        kind = type(self).__name__
        if self.locked:
            return f"<{kind} {self.name!r} locked token={self.token} size={self.size} expires_at={self.expires_at}>"
        if self.lost_error is not None:
            return f"<{kind} {self.name!r} lost ({self.lost_error.reason})>"
        return f"<{kind} {self.name!r} not locked>"

    async def unlock(self) -> bool:
        """Release the lock. Returns True when released, False when this Lock
        was not held (never granted, or already unlocked). Raises
        :class:`~ldlm.LockLostError` when the lock had been lost meanwhile:
        the work done under it may not have been protected."""
        if self._state in (_NOT_OBTAINED, _UNLOCKED):
            return False
        self._check_expiry()
        if self._state == _LOST:
            # The service should not hold it any more, but our estimate of
            # the expiry runs ahead of the service's: unlock in case.
            await self._client._release(self.name, self.key)
            assert self.lost_error is not None
            raise self.lost_error
        self._end(_UNLOCKED)
        await self._stop_watch()
        reply = await self._client._request(
            OP_UNLOCK, self.name, {"key": self.key}, self._client._request_timeout
        )
        err = reply.get("error")
        if err:
            exc = error_from_reply(err, self.name)
            if exc.code in LOST_CODES:
                self._state = _LOST
                self.lost_error = LockLostError(
                    f"the service no longer had the lock: {exc}", reason="refused", lock_name=self.name, cause=exc
                )
                raise self.lost_error from exc
            raise exc
        if not reply.get("unlocked"):
            raise UnexpectedReplyError(f"unlock reply without unlocked=true: {reply!r}", lock_name=self.name)
        return True

    async def renew(self, lock_timeout_seconds: float) -> "AsyncLock":
        """Set the lock to expire ``lock_timeout_seconds`` from now (and keep
        that timeout for background renewals).

        Raises :class:`~ldlm.NotLockedError` if this Lock is not held,
        :class:`~ldlm.LockLostError` if it was lost (also when the service
        answers that the key holds nothing: the Lock then becomes falsy), and
        the service's error if it refuses otherwise."""
        await self._renew(lock_timeout_seconds, self._client._request_timeout)
        if self._state == _HELD:
            self._start_watch()
            self._poke.set()
        return self

    async def __aenter__(self) -> "AsyncLock":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await _release_on_exit(self, exc_type)

    # -- internals --------------------------------------------------------

    def _needs_release(self) -> bool:
        return self._state in (_HELD, _LOST)

    def _check_expiry(self) -> None:
        if self._state == _HELD and self._expires_mono is not None and time.monotonic() >= self._expires_mono:
            self._lose("expired", "its lock timeout passed without a renewal")

    def _end(self, state: str) -> bool:
        """Leave the held state; True if this call did."""
        if self._state != _HELD:
            return False
        self._state = state
        self._client._held.discard(self)
        task = self._watch_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        return True

    def _lose(self, reason: str, why: str, cause: Optional[BaseException] = None) -> None:
        err = LockLostError(f"lock {self.name!r} was lost: {why}", reason=reason, lock_name=self.name, cause=cause)
        if self._end(_LOST):
            self.lost_error = err
            log.warning("ldlm: %s", err.message)

    async def _renew(self, lock_timeout_seconds: Optional[float], timeout: float, if_expires: Optional[float] = None) -> None:
        """Send a renewal. For a background renewal, if_expires is the expiry
        the watch saw: the current timeout is used, and nothing is sent if a
        renew() moved the expiry meanwhile."""
        async with self._renew_mu:
            self._check_expiry()
            if self._state == _LOST:
                assert self.lost_error is not None
                raise self.lost_error
            if self._state != _HELD:
                raise NotLockedError("the lock is not held", lock_name=self.name)
            if if_expires is not None:
                if self._expires_mono != if_expires:
                    return
                lock_timeout_seconds = self.lock_timeout_seconds
            sent_at = time.monotonic()
            reply = await self._client._request(
                OP_RENEW,
                self.name,
                {"key": self.key, "lock_timeout_seconds": lock_timeout_seconds},
                timeout,
            )
            err = reply.get("error")
            if err:
                exc = error_from_reply(err, self.name)
                if exc.code in LOST_CODES:
                    self._lose("refused", f"the service refused to renew it: {exc}", cause=exc)
                    if self.lost_error is not None:
                        raise self.lost_error from exc
                raise exc
            if not reply.get("locked"):
                raise UnexpectedReplyError(f"renew reply without locked=true: {reply!r}", lock_name=self.name)
            if self._state == _HELD and lock_timeout_seconds:
                self.lock_timeout_seconds = lock_timeout_seconds
                self._expires_mono = sent_at + lock_timeout_seconds
                self.expires_at = _parse_time(reply.get("expires_at"))
                if reply.get("token"):
                    self.token = reply["token"]

    def _start_watch(self) -> None:
        if (self._watch_task is None or self._watch_task.done()) and self._state == _HELD and self.lock_timeout_seconds:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(), name=f"ldlm-watch-{self.name}")

    async def _stop_watch(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait({task})

    async def _watch(self) -> None:
        """Runs while a lock with a lock timeout is held: renews it a third of
        the way into each timeout (with auto-renew), and counts it lost once
        the timeout passes without a renewal. A renewal that fails without the
        service refusing it is retried every tenth of the timeout."""
        retry_at = 0.0
        while self._state == _HELD and self._expires_mono is not None and self.lock_timeout_seconds:
            expires, timeout = self._expires_mono, self.lock_timeout_seconds
            wake = expires
            renew_at = 0.0
            if self._auto_renew:
                renew_at = max(expires - timeout * 2 / 3, retry_at)
                wake = min(wake, renew_at)
            self._poke.clear()
            delay = wake - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._poke.wait(), delay)
                    retry_at = 0.0
                    continue  # renewed by renew(): recompute
                except asyncio.TimeoutError:
                    pass
            now = time.monotonic()
            self._check_expiry()
            if self._state != _HELD:
                return
            if self._auto_renew and now >= renew_at:
                try:
                    await self._renew(
                        None, max(min(self._client._request_timeout, expires - now), _MIN_TIMEOUT), if_expires=expires
                    )
                    retry_at = 0.0
                except asyncio.CancelledError:
                    raise
                except LockLostError:
                    return
                except Exception as e:  # noqa: BLE001 - keep trying until it expires
                    log.warning("ldlm: renewing lock %r failed (%r); retrying", self.name, e)
                    retry_at = time.monotonic() + timeout / 10


async def _release_on_exit(lock: AsyncLock, exc_type: Any) -> None:
    """Context-manager exit: unlock a held lock. A failure (including the
    loss of the lock) is raised unless the body is already raising (then it
    is only logged)."""
    if not lock._needs_release():
        return
    try:
        await _finish(lock.unlock())
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001
        if exc_type is None:
            raise
        log.warning("ldlm: unlocking %r on context exit failed: %r", lock.name, e)


class AsyncLockContext:
    """``async with client.lock_context(...) as lock``: acquires on entry,
    unlocks a held lock on exit. ``lock`` may be falsy (wait timeout, or
    try_lock_context on a held lock)."""

    def __init__(self, acquire: Callable[[], Awaitable[AsyncLock]]):
        self._acquire = acquire
        self._lock: Optional[AsyncLock] = None

    async def __aenter__(self) -> AsyncLock:
        self._lock = await self._acquire()
        return self._lock

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._lock is not None:
            await _release_on_exit(self._lock, exc_type)


class AsyncClient:
    """An asyncio LDLM client.

    ``AsyncClient("nats://host:4222")`` (or "host:port", or a list of URLs)
    connects on first use or on ``await client.connect()``; extra keyword
    arguments go to :func:`nats.connect` (``user``, ``password``, ``tls``,
    ``user_credentials``...). ``AsyncClient(nc)`` uses an existing nats-py
    connection, which ``close()`` then leaves open.

    Options:

    - ``auto_renew`` (default True): renew locks that have a lock timeout in
      the background, a third of the way into each timeout;
    - ``subject_prefix`` (default "ldlm");
    - ``request_timeout_seconds``: bounds trylock, unlock and renew requests;
    - ``wait_margin_seconds``: added to ``wait_timeout_seconds`` to bound a
      blocking lock request locally (a lock without a wait timeout waits
      without limit);
    - ``cleanup_timeout_seconds``: how long to keep trying to withdraw a
      request given up on;
    - ``keep_on_disconnect`` (default False): for a service that runs with
      ``LDLM_NO_CLEAR_ON_DISCONNECT=true``, where locks outlive their
      connection: do not count locks lost when the connection drops.
    """

    def __init__(
        self,
        address: Address = DEFAULT_ADDRESS,
        *,
        auto_renew: bool = True,
        subject_prefix: str = DEFAULT_PREFIX,
        request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
        wait_margin_seconds: float = DEFAULT_WAIT_MARGIN_SECONDS,
        cleanup_timeout_seconds: float = DEFAULT_CLEANUP_TIMEOUT_SECONDS,
        keep_on_disconnect: bool = False,
        **connect_options: Any,
    ):
        if isinstance(address, NATS):
            if connect_options:
                raise TypeError(
                    "connect options (%s) cannot be used with an existing connection"
                    % ", ".join(sorted(connect_options))
                )
            self._nc: Optional[NATS] = address
            self._servers: Optional[list[str]] = None
            self._owns_nc = False
        else:
            self._nc = None
            self._servers = normalize_servers(address)
            self._owns_nc = True
        self._connect_options = connect_options
        self._auto_renew = auto_renew
        self._prefix = subject_prefix
        self._request_timeout = float(request_timeout_seconds)
        self._wait_margin = float(wait_margin_seconds)
        self._cleanup_timeout = float(cleanup_timeout_seconds)
        self._keep_on_disconnect = keep_on_disconnect
        self._connect_lock = asyncio.Lock()
        self._held: set[AsyncLock] = set()
        self._closed = False
        self._warned_no_owner = False
        # the connection as last seen (see _epoch_now); None: not connected
        self._epoch: Optional[str] = None
        self._epoch_changed = asyncio.Event()  # set and replaced on each change
        self._instance: Optional[str] = None  # the service instance last heard of
        self._instance_started = asyncio.Event()  # set and replaced on each start
        self._set_up = False
        self._refresh_mu = asyncio.Lock()
        self._subs: list[Any] = []
        self._lost_subs: set[str] = set()
        self._tasks: set[asyncio.Task] = set()  # watcher and background withdrawals

    # -- connection -------------------------------------------------------

    @property
    def nc(self) -> Optional[NATS]:
        """The nats-py connection (None until connected)."""
        return self._nc

    async def connect(self) -> "AsyncClient":
        """Connect now (otherwise the first request connects). Returns self."""
        if self._closed:
            raise nats.errors.ConnectionClosedError()
        if self._nc is None:
            async with self._connect_lock:
                if self._nc is None:
                    self._nc = await self._open()
        await self._setup()
        return self

    async def _open(self) -> NATS:
        opts: dict[str, Any] = {"name": "ldlm-python"}
        opts.update(self._connect_options)
        for cb_name in ("disconnected_cb", "reconnected_cb"):
            user_cb = opts.get(cb_name)

            async def cb(user_cb=user_cb) -> None:
                await self._refresh()
                if user_cb is not None:
                    await user_cb()

            opts[cb_name] = cb
        if "error_cb" not in opts:
            # nats-py's default prints a traceback per failed attempt
            async def error_cb(e: Exception) -> None:
                log.warning("ldlm: NATS: %r", e)

            opts["error_cb"] = error_cb
        # nats-py retries the *first* connect as often as later reconnects
        # (60 times, 2 s apart, by default): fail fast instead (two tries a
        # server), then allow the usual reconnects. An explicit
        # max_reconnect_attempts rules both.
        later_attempts = opts.get("max_reconnect_attempts")
        if later_attempts is None:
            opts["max_reconnect_attempts"] = 1
        nc = await nats.connect(servers=self._servers, **opts)
        if later_attempts is None and isinstance(getattr(nc, "options", None), dict):
            nc.options["max_reconnect_attempts"] = _NATS_DEFAULT_RECONNECT_ATTEMPTS
        return nc

    async def _setup(self) -> None:
        """Once connected: listen to instance announcements, follow the
        connection."""
        if self._set_up or self._closed:
            return
        self._set_up = True
        assert self._nc is not None
        try:
            sub = await self._nc.subscribe(f"{self._prefix}.instance.*", cb=self._on_instance)
            self._subs.append(sub)
        except Exception as e:  # noqa: BLE001 - e.g. no permission: live without it
            log.warning("ldlm: cannot subscribe to instance announcements: %r", e)
        self._spawn(self._watch_connection())
        await self._refresh()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Release the locks this client holds, stop renewing, and close the
        connection if the client opened it. Waiting lock() calls give up."""
        if self._closed:
            return
        self._closed = True
        self._wake_waiters()
        held = list(self._held)
        for lock in held:
            await lock._stop_watch()
        nc = self._nc
        if nc is not None and nc.is_connected and held:
            results = await asyncio.gather(*(lock.unlock() for lock in held), return_exceptions=True)
            for lock, r in zip(held, results):
                if isinstance(r, BaseException):
                    log.debug("ldlm: unlocking %r on close failed: %r", lock.name, r)
        self._held.clear()
        for task in list(self._tasks):
            task.cancel()
        if nc is not None and not nc.is_closed:
            if self._owns_nc:
                await nc.close()
            else:
                for sub in self._subs:
                    try:
                        await sub.unsubscribe()
                    except Exception:  # noqa: BLE001
                        pass

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close()

    def owner(self) -> Optional[str]:
        """The Ldlm-Owner value of the current connection, SERVER_NAME:CLIENT_ID
        (None when the server's INFO lacks either)."""
        nc = self._nc
        if nc is None:
            return None
        info = getattr(nc, "_server_info", None) or {}
        server_name = info.get("server_name")
        client_id = getattr(nc, "client_id", None) or info.get("client_id")
        if not server_name or not client_id:
            return None
        return f"{server_name}:{client_id}"

    def _epoch_now(self) -> Optional[str]:
        """Names the connection as it is now; None while it is down. A
        reconnect gives a new client id, so a new name."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return None
        owner = self.owner()
        if owner:
            return owner
        stats = getattr(nc, "stats", None) or {}
        return f"reconnects:{stats.get('reconnects', 0)}"

    async def _refresh(self) -> None:
        """Compare the connection with the one last seen. When it dropped or
        was replaced, the locks granted over the old one are lost (the
        service releases them) and waiting lock() calls ask again."""
        async with self._refresh_mu:
            now = self._epoch_now()
            if now != self._epoch:
                old, self._epoch = self._epoch, now
                if old is not None and not self._keep_on_disconnect:
                    for lock in list(self._held):
                        if lock._epoch != now:
                            lock._lose("connection-lost", "its NATS connection closed or was replaced")
                self._wake_waiters(epoch=True)
            owner = self.owner() if now is not None else None
            if owner and owner not in self._lost_subs and self._nc is not None and not self._closed:
                self._lost_subs.add(owner)
                try:
                    sub = await self._nc.subscribe(
                        f"{self._prefix}.lost.{encode_name(owner)}", cb=self._on_lost
                    )
                    self._subs.append(sub)
                except Exception as e:  # noqa: BLE001
                    log.warning("ldlm: cannot subscribe to lost-lock notices: %r", e)

    def _wake_waiters(self, epoch: bool = True, instance: bool = False) -> None:
        if epoch:
            ev, self._epoch_changed = self._epoch_changed, asyncio.Event()
            ev.set()
        if instance:
            ev, self._instance_started = self._instance_started, asyncio.Event()
            ev.set()

    async def _watch_connection(self) -> None:
        # nats-py has no status listeners that leave the application's own
        # callbacks alone, so look: it costs no network.
        while not self._closed:
            await asyncio.sleep(_WATCH_INTERVAL)
            try:
                await self._refresh()
            except Exception as e:  # noqa: BLE001
                log.debug("ldlm: refresh: %r", e)

    async def _on_lost(self, msg: Any) -> None:
        try:
            notice = json.loads(msg.data)
            name, token, reason = notice["name"], notice.get("token"), str(notice.get("reason") or "lost")
        except Exception:  # noqa: BLE001
            log.debug("ldlm: unreadable lost-lock notice %r", msg.data)
            return
        for lock in list(self._held):
            if lock.name == name and (not token or lock.token == token):
                lock._lose(reason, f"the service says: {reason}")

    async def _on_instance(self, msg: Any) -> None:
        try:
            notice = json.loads(msg.data)
            instance, event = notice["instance"], notice["event"]
        except Exception:  # noqa: BLE001
            log.debug("ldlm: unreadable instance notice %r", msg.data)
            return
        if event == "started":
            self._saw_instance(instance, announced=True)
        elif event == "stopped":
            for lock in list(self._held):
                if lock.instance == instance:
                    lock._lose("instance-gone", f"the lock service instance ({instance}) that granted it stopped")

    def _saw_instance(self, instance: str, announced: bool = False) -> None:
        """The service instance serving now is `instance` (it announced its
        start, or it answered us). Only one instance serves a prefix and it
        keeps its locks in memory, so grants of any other instance are gone,
        and waits parked there will never be answered."""
        if instance == self._instance and not announced:
            return
        for lock in list(self._held):
            if lock.instance and lock.instance != instance:
                lock._lose("instance-gone", f"another lock service instance ({instance}) serves now")
        if instance != self._instance:
            first = self._instance is None and not announced
            self._instance = instance
            if not first:
                self._wake_waiters(epoch=False, instance=True)

    # -- operations -------------------------------------------------------

    async def lock(
        self,
        name: str,
        size: int = 1,
        wait_timeout_seconds: Optional[float] = None,
        lock_timeout_seconds: Optional[float] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> AsyncLock:
        """Acquire ``name``, waiting while all its slots are held (at most
        ``wait_timeout_seconds``, when given). Returns a falsy lock when the
        wait timed out. Cancelling the call gives up the wait race-free."""
        return await self._acquire(OP_LOCK, name, size, wait_timeout_seconds, lock_timeout_seconds, auto_renew)

    async def try_lock(
        self,
        name: str,
        size: int = 1,
        lock_timeout_seconds: Optional[float] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> AsyncLock:
        """Acquire ``name`` only if a slot is free now; a falsy lock otherwise."""
        return await self._acquire(OP_TRYLOCK, name, size, None, lock_timeout_seconds, auto_renew)

    def lock_context(
        self,
        name: str,
        size: int = 1,
        wait_timeout_seconds: Optional[float] = None,
        lock_timeout_seconds: Optional[float] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> AsyncLockContext:
        """``async with client.lock_context(name) as lock:``: lock() on entry,
        unlock on exit (when it was obtained)."""
        return AsyncLockContext(
            lambda: self.lock(name, size, wait_timeout_seconds, lock_timeout_seconds, auto_renew=auto_renew)
        )

    def try_lock_context(
        self,
        name: str,
        size: int = 1,
        lock_timeout_seconds: Optional[float] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> AsyncLockContext:
        """``async with client.try_lock_context(name) as lock:`` (check ``if lock:``)."""
        return AsyncLockContext(lambda: self.try_lock(name, size, lock_timeout_seconds, auto_renew=auto_renew))

    # -- internals --------------------------------------------------------

    def _owner_headers(self, owner: Optional[str]) -> Optional[dict[str, str]]:
        if owner is None:
            if not self._warned_no_owner:
                self._warned_no_owner = True
                log.warning(
                    "ldlm: the NATS server's INFO has no server_name/client_id; locks are sent without"
                    " an owner and will not be released when this process disconnects"
                )
            return None
        return {HEADER_OWNER: owner}

    async def _request(self, op: str, name: str, body: dict, timeout: float, owner: Any = ...) -> dict:
        if self._nc is None:
            await self.connect()
        assert self._nc is not None
        subj = subject(self._prefix, op, name)
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = self._owner_headers(self.owner() if owner is ... else owner)
        msg = await self._nc.request(subj, payload, timeout=timeout, headers=headers)
        return _decode_reply(msg, name)

    async def _acquire(
        self,
        op: str,
        name: str,
        size: Optional[int],
        wait_timeout_seconds: Optional[float],
        lock_timeout_seconds: Optional[float],
        auto_renew: Optional[bool],
    ) -> AsyncLock:
        if self._closed:
            raise nats.errors.ConnectionClosedError()
        await self.connect()
        deadline: Optional[float] = None
        if op == OP_LOCK and wait_timeout_seconds is not None and wait_timeout_seconds > 0:
            deadline = time.monotonic() + float(wait_timeout_seconds)

        def not_obtained() -> AsyncLock:
            return AsyncLock(self, name)

        while True:
            if self._closed:
                raise nats.errors.ConnectionClosedError()
            await self._refresh()
            epoch = self._epoch
            if epoch is None:
                # Down: a request now would name the old connection as owner.
                if op == OP_TRYLOCK:
                    raise ConnectionLostError("not connected to NATS (reconnecting)", lock_name=name)
                changed = self._epoch_changed
                pause = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if pause <= 0:
                    return not_obtained()
                try:
                    await asyncio.wait_for(changed.wait(), pause)
                except asyncio.TimeoutError:
                    pass
                continue

            # A key of our own: if we give up before the reply, an unlock
            # with it releases a grant that raced in or cancels the wait.
            key = secrets.token_hex(16)
            body: dict[str, Any] = {"key": key}
            if size is not None:
                body["size"] = size
            if deadline is not None:
                left = deadline - time.monotonic()
                if left < _MIN_TIMEOUT:
                    return not_obtained()
                body["wait_timeout_seconds"] = round(left, 3)
            elif wait_timeout_seconds is not None:
                body["wait_timeout_seconds"] = wait_timeout_seconds  # 0 or invalid: the service decides
            if lock_timeout_seconds is not None:
                body["lock_timeout_seconds"] = lock_timeout_seconds
            if op == OP_LOCK:
                timeout = (
                    _UNLIMITED_REQUEST_TIMEOUT
                    if deadline is None
                    else body["wait_timeout_seconds"] + self._wait_margin
                )
            else:
                timeout = self._request_timeout
            owner = self.owner()
            epoch_changed, instance_started = self._epoch_changed, self._instance_started
            sent_at = time.monotonic()
            req = asyncio.ensure_future(self._request(op, name, body, timeout, owner=owner))
            try:
                if op == OP_LOCK:
                    # A wait ends with the reply -- or when the connection or
                    # the service instance changes: the reply could be lost.
                    watchers = {
                        asyncio.ensure_future(epoch_changed.wait()),
                        asyncio.ensure_future(instance_started.wait()),
                    }
                    try:
                        done, _ = await asyncio.wait({req, *watchers}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in watchers:
                            w.cancel()
                    if req not in done:
                        req.cancel()
                        await asyncio.wait({req})
                        await _finish(self._withdraw(name, key))
                        continue  # ask again, for the time that is left
                reply = await req
            except nats.errors.NoRespondersError:
                raise  # nobody received the request: nothing to undo
            except BaseException:
                # Cancelled, timed out locally, interrupted: give back whatever
                # the service may have done with our key.
                if not req.done():
                    req.cancel()
                await _finish(self._withdraw(name, key))
                raise

            err = reply.get("error")
            if err:
                exc = error_from_reply(err, name)
                if exc.code == "LockWaitTimeout":
                    return not_obtained()
                if isinstance(exc, OwnerGoneError) and op == OP_LOCK:
                    # The service saw our connection close while we waited:
                    # ask again once we see the new one.
                    await self._refresh()
                    if self._epoch != epoch:
                        continue
                raise exc
            if not reply.get("locked"):
                if op == OP_LOCK:
                    await _finish(self._withdraw(name, key))
                    raise UnexpectedReplyError(f"lock reply without locked=true: {reply!r}", lock_name=name)
                return not_obtained()
            if reply.get("instance"):
                self._saw_instance(reply["instance"])
            lock = AsyncLock(
                self,
                reply.get("name") or name,
                granted=True,
                key=reply.get("key") or key,
                token=reply.get("token"),
                size=reply.get("size") or size,
                expires_at=_parse_time(reply.get("expires_at")),
                lock_timeout_seconds=lock_timeout_seconds or None,
                auto_renew=self._auto_renew if auto_renew is None else auto_renew,
                epoch=epoch,
                instance=reply.get("instance"),
                sent_at=sent_at,
            )
            await self._refresh()
            if self._closed or (not self._keep_on_disconnect and self._epoch != epoch):
                # Granted over a connection that is gone (the service releases
                # it with that connection; unlock anyway in case it has not
                # seen that yet), or to a client closed meanwhile.
                await _finish(self._release(name, lock.key))
                if self._closed:
                    raise nats.errors.ConnectionClosedError()
                if op == OP_LOCK:
                    continue
                raise ConnectionLostError("the NATS connection changed while the reply came", lock_name=name)
            self._held.add(lock)
            lock._start_watch()
            return lock

    async def _unlock_key(self, name: str, key: str, timeout: float) -> Optional[dict]:
        """Send unlock for key; the reply's error object, or None if unlocked.
        Transport errors are raised."""
        reply = await self._request(OP_UNLOCK, name, {"key": key}, timeout)
        return reply.get("error") or None

    async def _withdraw(self, name: str, key: str) -> None:
        """Take back a lock request we gave up on: unlock with its key, which
        releases a grant that raced in or cancels the wait.

        The first unlock is sent at once. When it cannot settle the matter,
        the client keeps trying in the background (see _keep_withdrawing),
        for two reasons:

        - "unknown key" is ambiguous: the request may have ended already (it
          timed out, never left), or the service has not processed it yet --
          it serves each operation on its own subscription, so an unlock can
          overtake the lock sent just before it;
        - while the connection is down, nats-py buffers what is published
          and sends it after reconnecting: the request may still reach the
          service then (and, carrying the old connection's owner name, be
          held for a connection that is not ours)."""
        nc = self._nc
        if nc is None or nc.is_closed:
            return  # nothing buffered survives a closed connection
        if self._epoch_now() is not None:
            try:
                err = await self._unlock_key(name, key, min(self._request_timeout, self._cleanup_timeout))
            except Exception as e:  # noqa: BLE001
                log.debug("ldlm: withdrawing the request for %r failed: %r", name, e)
            else:
                if not _unknown_key(err):
                    return
        self._spawn(self._keep_withdrawing(name, key))

    async def _keep_withdrawing(self, name: str, key: str) -> None:
        reconnect_until = time.monotonic() + _WITHDRAW_RECONNECT_WAIT
        while self._epoch_now() is None:
            if self._nc is None or self._nc.is_closed or time.monotonic() > reconnect_until:
                return
            await asyncio.sleep(0.05)
        end = time.monotonic() + self._cleanup_timeout
        pause = 0.001
        while True:
            if self._nc is None or self._nc.is_closed:
                return
            try:
                err = await self._unlock_key(name, key, max(min(self._request_timeout, end - time.monotonic()), 0.1))
                if not _unknown_key(err):
                    return
            except Exception as e:  # noqa: BLE001 - e.g. the service is not back yet
                log.debug("ldlm: withdrawing the request for %r failed: %r", name, e)
            if time.monotonic() >= end:
                return
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.25)

    async def _release(self, name: str, key: Optional[str]) -> None:
        """Best-effort unlock of a grant whose reply we received (so the
        service processed the request): an unknown key means it is gone."""
        nc = self._nc
        if not key or nc is None or nc.is_closed:
            return
        try:
            await self._unlock_key(name, key, min(self._request_timeout, self._cleanup_timeout))
        except Exception as e:  # noqa: BLE001
            log.debug("ldlm: releasing %r failed: %r", name, e)


def _decode_reply(msg: Any, name: str) -> dict:
    data = msg.data or b""
    reply: dict
    if data.strip():
        try:
            decoded = json.loads(data)
        except ValueError:
            raise UnexpectedReplyError(f"reply is not JSON: {data[:80]!r}", lock_name=name) from None
        if not isinstance(decoded, dict):
            raise UnexpectedReplyError(f"reply is not a JSON object: {data[:80]!r}", lock_name=name)
        reply = decoded
    else:
        reply = {}
    if not reply.get("error"):
        headers = msg.headers or {}
        code = headers.get(HEADER_ERROR_CODE)
        if code:
            reply["error"] = {"code": code, "message": headers.get(HEADER_ERROR, "")}
        elif not reply:
            raise UnexpectedReplyError("empty reply", lock_name=name)
    return reply
