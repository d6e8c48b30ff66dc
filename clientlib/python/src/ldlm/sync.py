"""The synchronous LDLM client: :class:`Client` and :class:`Lock`.

A Client runs an :class:`~ldlm.AsyncClient` on an asyncio event loop in a
background thread (which also renews locks that have a lock timeout). Its
methods may be called from any number of threads at once.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import weakref
from datetime import datetime
from typing import Any, Coroutine, Optional, TypeVar

import nats.errors
from nats.aio.client import Client as NATS

from ._names import DEFAULT_PREFIX, OP_LOCK, OP_TRYLOCK
from .aio import (
    DEFAULT_ADDRESS,
    DEFAULT_CLEANUP_TIMEOUT_SECONDS,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    DEFAULT_WAIT_MARGIN_SECONDS,
    Address,
    AsyncClient,
    AsyncLock,
    _finish,
)
from .errors import LDLMError

log = logging.getLogger("ldlm")

T = TypeVar("T")

#: how long close() and the clean-up after an interrupted lock() wait
_CLEANUP_SECONDS = 15.0


class Lock:
    """The outcome of a lock request: truthy when the lock is held.

    ``name``, ``key``, ``token`` (fencing token), ``size``, ``expires_at``,
    ``lock_timeout_seconds``, ``instance`` and ``lost_error`` are as on
    :class:`~ldlm.AsyncLock`. ``unlock()`` releases it, ``renew(seconds)``
    pushes its expiry back. A Lock is also a context manager that unlocks on
    exit."""

    def __init__(self, client: "Client", alock: AsyncLock):
        self._client = client
        self._alock = alock

    name = property(lambda self: self._alock.name)
    key = property(lambda self: self._alock.key)
    token = property(lambda self: self._alock.token)
    size = property(lambda self: self._alock.size)
    lock_timeout_seconds = property(lambda self: self._alock.lock_timeout_seconds)
    lost_error = property(lambda self: self._alock.lost_error)
    instance = property(lambda self: self._alock.instance)

    @property
    def expires_at(self) -> Optional[datetime]:
        return self._alock.expires_at

    @property
    def locked(self) -> bool:
        return self._alock.locked

    def __bool__(self) -> bool:
        return self._alock.locked

    def __repr__(self) -> str:
        return repr(self._alock).replace("AsyncLock", "Lock", 1)

    def unlock(self) -> bool:
        """Release the lock: True when released, False when this Lock was not
        held (never granted, or already unlocked). Raises
        :class:`~ldlm.LockLostError` if the lock was lost meanwhile, and the
        service's error (an :class:`~ldlm.LDLMError`) if it refuses."""
        if self._alock._state in ("not obtained", "unlocked"):
            return False
        return self._client._call(self._alock.unlock())

    def renew(self, lock_timeout_seconds: float) -> "Lock":
        """Set the lock to expire ``lock_timeout_seconds`` from now (and keep
        that timeout for background renewals). Raises
        :class:`~ldlm.LockLostError` if the lock was lost."""
        self._client._call(self._alock.renew(lock_timeout_seconds))
        return self

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _release_on_exit(self, exc_type)


def _release_on_exit(lock: Lock, exc_type: Any) -> None:
    if not lock._alock._needs_release():
        return
    try:
        lock.unlock()
    except Exception as e:  # noqa: BLE001
        if exc_type is None:
            raise
        log.warning("ldlm: unlocking %r on context exit failed: %r", lock.name, e)


class LockContext:
    """``with client.lock_context(...) as lock``: acquires on entry, unlocks
    a held lock on exit. ``lock`` may be falsy (wait timeout, or
    try_lock_context on a held lock)."""

    def __init__(self, acquire):
        self._acquire = acquire
        self._lock: Optional[Lock] = None

    def __enter__(self) -> Lock:
        self._lock = self._acquire()
        return self._lock

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._lock is not None:
            _release_on_exit(self._lock, exc_type)


class _Handoff:
    """Hands a lock request's outcome from the loop thread to the caller, or
    tells the loop thread that the caller gave up (Ctrl-C) so that a grant
    arriving after that is given back."""

    __slots__ = ("mu", "abandoned", "delivered", "result", "task", "finished")

    def __init__(self) -> None:
        self.mu = threading.Lock()
        self.abandoned = False
        self.delivered = False
        self.result: Optional[AsyncLock] = None
        self.task: Optional[asyncio.Task] = None
        self.finished = threading.Event()

    def cancel(self) -> None:  # runs in the loop thread
        if self.task is not None and not self.task.done():
            self.task.cancel()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=5))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


#: background shutdowns of dropped Clients (referenced until done)
_shutdowns: "set[asyncio.Task]" = set()

#: Clients that own a background loop, closed (briefly) at interpreter exit
_live_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for client in list(_live_clients):
        try:
            client.close(timeout=2.0)
        except Exception:  # noqa: BLE001 - the process is exiting anyway
            pass


def _loop_of(nc: NATS) -> Optional[asyncio.AbstractEventLoop]:
    for attr in ("_reading_task", "_flusher_task", "_ping_interval_task"):
        task = getattr(nc, attr, None)
        if task is not None:
            try:
                return task.get_loop()
            except Exception:  # noqa: BLE001
                pass
    return None


class Client:
    """A synchronous LDLM client, safe to share between threads.

    ``Client("nats://host:4222")`` (or "host:port", or a list of URLs)
    connects at once; extra keyword arguments go to :func:`nats.connect`.
    ``Client(nc, loop=loop)`` uses an existing nats-py connection whose event
    loop runs in another thread (``loop`` is found from ``nc`` when omitted);
    ``close()`` then leaves the connection open.

    Options are those of :class:`~ldlm.AsyncClient`: ``auto_renew``,
    ``subject_prefix``, ``request_timeout_seconds``, ``wait_margin_seconds``,
    ``cleanup_timeout_seconds``, ``keep_on_disconnect``.
    """

    def __init__(
        self,
        address: Address = DEFAULT_ADDRESS,
        *,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        auto_renew: bool = True,
        subject_prefix: str = DEFAULT_PREFIX,
        request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
        wait_margin_seconds: float = DEFAULT_WAIT_MARGIN_SECONDS,
        cleanup_timeout_seconds: float = DEFAULT_CLEANUP_TIMEOUT_SECONDS,
        keep_on_disconnect: bool = False,
        **connect_options: Any,
    ):
        self._closed = False
        self._close_mu = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        if isinstance(address, NATS):
            loop = loop or _loop_of(address)
            if loop is None:
                raise ValueError("pass loop=, the event loop that runs the nats-py connection")
            self._loop = loop
            self._owns_loop = False
        else:
            if loop is not None:
                raise TypeError("loop= is only for an existing nats-py connection")
            self._loop = asyncio.new_event_loop()
            self._owns_loop = True
            self._thread = threading.Thread(
                target=_run_loop, args=(self._loop,), name="ldlm-client", daemon=True
            )
            self._thread.start()
        self._aclient = AsyncClient(
            address,
            auto_renew=auto_renew,
            subject_prefix=subject_prefix,
            request_timeout_seconds=request_timeout_seconds,
            wait_margin_seconds=wait_margin_seconds,
            cleanup_timeout_seconds=cleanup_timeout_seconds,
            keep_on_disconnect=keep_on_disconnect,
            **connect_options,
        )
        if self._owns_loop:
            try:
                self._call(self._aclient.connect())
            except BaseException:
                self._stop_loop()
                raise
            _live_clients.add(self)

    # -- connection -------------------------------------------------------

    @property
    def async_client(self) -> AsyncClient:
        """The AsyncClient this Client drives (use it only on ``loop``)."""
        return self._aclient

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def nc(self) -> Optional[NATS]:
        return self._aclient.nc

    def owner(self) -> Optional[str]:
        return self._aclient.owner()

    def close(self, timeout: float = _CLEANUP_SECONDS) -> None:
        """Release the locks this client holds and close the connection (if
        the client opened it) and its background thread. Idempotent."""
        with self._close_mu:
            if self._closed:
                return
            self._closed = True
        _live_clients.discard(self)
        try:
            if self._loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(self._aclient.close(), self._loop)
                fut.result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError) as e:
            log.debug("ldlm: close: %r", e)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self._owns_loop and self._thread is not None:
            try:
                self._loop.call_soon_threadsafe(self._loop.stop)
            except RuntimeError:
                pass
            if self._thread is not threading.current_thread():
                self._thread.join(_CLEANUP_SECONDS)

    def __del__(self) -> None:
        # Dropped without close() (and no Lock of it is referenced either):
        # close in the background rather than leak a thread and a connection.
        if getattr(self, "_closed", True) or not getattr(self, "_owns_loop", False):
            return
        self._closed = True
        loop, aclient = self._loop, self._aclient

        async def shutdown() -> None:
            try:
                await aclient.close()
            finally:
                loop.stop()

        def start() -> None:
            task = loop.create_task(shutdown())
            _shutdowns.add(task)
            task.add_done_callback(_shutdowns.discard)

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:
            pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- operations -------------------------------------------------------

    def lock(
        self,
        name: str,
        size: int = 1,
        wait_timeout_seconds: Optional[float] = None,
        lock_timeout_seconds: Optional[float] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> Lock:
        """Acquire ``name``, blocking while all its slots are held (at most
        ``wait_timeout_seconds``, when given). Returns a falsy Lock when the
        wait timed out. Ctrl-C while waiting gives up the wait race-free."""
        return self._acquire(OP_LOCK, name, size, wait_timeout_seconds, lock_timeout_seconds, auto_renew)

    def try_lock(
        self,
        name: str,
        size: int = 1,
        lock_timeout_seconds: Optional[float] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> Lock:
        """Acquire ``name`` only if a slot is free now; a falsy Lock otherwise."""
        return self._acquire(OP_TRYLOCK, name, size, None, lock_timeout_seconds, auto_renew)

    def lock_context(
        self,
        name: str,
        size: int = 1,
        wait_timeout_seconds: Optional[float] = None,
        lock_timeout_seconds: Optional[float] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> LockContext:
        """``with client.lock_context(name) as lock:``: lock() on entry,
        unlock on exit (when it was obtained)."""
        return LockContext(
            lambda: self.lock(name, size, wait_timeout_seconds, lock_timeout_seconds, auto_renew=auto_renew)
        )

    def try_lock_context(
        self,
        name: str,
        size: int = 1,
        lock_timeout_seconds: Optional[float] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> LockContext:
        """``with client.try_lock_context(name) as lock:`` (check ``if lock:``)."""
        return LockContext(lambda: self.try_lock(name, size, lock_timeout_seconds, auto_renew=auto_renew))

    # -- internals --------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise nats.errors.ConnectionClosedError()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError(
                "ldlm.Client called from its own event loop would deadlock: use ldlm.AsyncClient there"
            )

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            self._check_usable()
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except BaseException:
            coro.close()
            raise
        return fut.result()

    def _acquire(
        self,
        op: str,
        name: str,
        size: Optional[int],
        wait_timeout_seconds: Optional[float],
        lock_timeout_seconds: Optional[float],
        auto_renew: Optional[bool],
    ) -> Lock:
        self._check_usable()
        h = _Handoff()
        aclient = self._aclient

        async def runner() -> Optional[AsyncLock]:
            try:
                with h.mu:
                    if h.abandoned:
                        return None
                    h.task = asyncio.current_task()
                alock = await aclient._acquire(
                    op, name, size, wait_timeout_seconds, lock_timeout_seconds, auto_renew
                )
                with h.mu:
                    if not h.abandoned:
                        h.delivered = True
                        h.result = alock
                        return alock
                # The caller gave up just as the grant arrived: give it back.
                if alock:
                    try:
                        await _finish(alock.unlock())
                    except Exception as e:  # noqa: BLE001
                        log.debug("ldlm: giving back %r failed: %r", name, e)
                return None
            finally:
                h.finished.set()

        fut = asyncio.run_coroutine_threadsafe(runner(), self._loop)
        try:
            alock = fut.result()
            assert alock is not None
            lock = Lock(self, alock)
        except BaseException as e:
            if isinstance(e, Exception) and fut.done() and not fut.cancelled() and fut.exception() is e:
                raise  # the request itself failed
            # Interrupted while waiting (KeyboardInterrupt, SystemExit...):
            # make sure the service keeps nothing for us, then re-raise.
            with h.mu:
                h.abandoned = True
                delivered, result = h.delivered, h.result
            if delivered:
                if result:
                    try:
                        asyncio.run_coroutine_threadsafe(result.unlock(), self._loop).result(_CLEANUP_SECONDS)
                    except Exception as ue:  # noqa: BLE001
                        log.debug("ldlm: giving back %r failed: %r", name, ue)
            else:
                try:
                    self._loop.call_soon_threadsafe(h.cancel)
                except RuntimeError:
                    pass
                else:
                    h.finished.wait(_CLEANUP_SECONDS)
            raise
        return lock


__all__ = ["Client", "Lock", "LockContext", "LDLMError"]
