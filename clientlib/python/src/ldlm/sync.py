"""The synchronous LDLM client: :class:`Client` and :class:`Lock`.

A Client runs an :class:`~ldlm.AsyncClient` on an asyncio event loop in a
background thread (which also renews locks that have a lock timeout). Its
methods may be called from any number of threads at once.

Nothing here repeats the asyncio client: each blocking method is made from
the AsyncClient (or AsyncLock) method of the same name, with its signature
and documentation, and runs it on the loop thread. Only what is particular
to blocking calls lives here: the loop thread, and giving back a grant when
the caller is interrupted (Ctrl-C) while it waits.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import functools
import logging
import threading
import weakref
from typing import Any, Callable, Coroutine, Optional, TypeVar

import nats.errors
from nats.aio.client import Client as NATS

from .aio import DEFAULT_ADDRESS, Address, AsyncClient, AsyncLock, release_on_exit
from .errors import LDLMError

log = logging.getLogger("ldlm")

T = TypeVar("T")

#: how long close() and the clean-up after an interrupted call wait
_CLEANUP_SECONDS = 15.0


def _blocking(async_method: Callable[..., Coroutine[Any, Any, Any]], of: str) -> Callable[..., Any]:
    """A blocking method that runs ``async_method`` (of AsyncClient or
    AsyncLock) on the client's loop, with the same signature and docs. A
    returned AsyncLock comes back as a :class:`Lock`."""
    name = async_method.__name__

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if of == "client":
            return self._run(getattr(self._aclient, name), args, kwargs)
        result = self._client._run(getattr(self._alock, name), args, kwargs)
        return self if isinstance(result, Lock) and result._alock is self._alock else result

    functools.update_wrapper(method, async_method)
    return method


class Lock:
    """The outcome of a lock request: truthy when the lock is held.

    Its attributes (``name``, ``key``, ``token``, ``size``, ``expires_at``,
    ``lock_timeout_seconds``, ``instance``, ``lost_error``, ``locked``) are
    those of the :class:`~ldlm.AsyncLock` it wraps; ``unlock()`` and
    ``renew(seconds)`` block. A Lock is also a context manager that unlocks
    on exit."""

    __slots__ = ("_client", "_alock")

    def __init__(self, client: "Client", alock: AsyncLock):
        self._client = client
        self._alock = alock

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self._alock, attr)

    def __bool__(self) -> bool:
        return self._alock.locked

    def __repr__(self) -> str:
        return repr(self._alock).replace("AsyncLock", "Lock", 1)

    unlock = _blocking(AsyncLock.unlock, "lock")
    renew = _blocking(AsyncLock.renew, "lock")

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._client._run(release_on_exit, (self._alock, exc_type), {})


class LockContext:
    """``with client.lock_context(...) as lock``: acquires on entry, unlocks
    a held lock on exit. ``lock`` may be falsy (wait timeout, or
    try_lock_context on a held lock)."""

    def __init__(self, acquire: Callable[[], Lock]):
        self._acquire = acquire
        self._lock: Optional[Lock] = None

    def __enter__(self) -> Lock:
        self._lock = self._acquire()
        return self._lock

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._lock is not None:
            self._lock.__exit__(exc_type, exc, tb)


def _context(acquire_name: str, async_method: Callable[..., Any]) -> Callable[..., LockContext]:
    def method(self: "Client", *args: Any, **kwargs: Any) -> LockContext:
        acquire = getattr(self, acquire_name)
        return LockContext(lambda: acquire(*args, **kwargs))

    functools.update_wrapper(method, async_method)
    method.__doc__ = (async_method.__doc__ or "").replace("async with", "with")
    return method


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
    connects at once; options and extra keyword arguments are those of
    :class:`~ldlm.AsyncClient` (extra ones go to :func:`nats.connect`).
    ``Client(nc, loop=loop)`` uses an existing nats-py connection whose event
    loop runs in another thread (``loop`` is found from ``nc`` when omitted);
    ``close()`` then leaves the connection open.
    """

    def __init__(self, address: Address = DEFAULT_ADDRESS, *, loop: Optional[asyncio.AbstractEventLoop] = None, **options: Any):
        self._closed = False
        self._close_mu = threading.Lock()
        self._hand_mu = threading.Lock()
        self._inbox: "collections.deque[_Call]" = collections.deque()
        self._draining = False
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
            self._thread = threading.Thread(target=_run_loop, args=(self._loop,), name="ldlm-client", daemon=True)
            self._thread.start()
        self._aclient = AsyncClient(address, **options)
        if self._owns_loop:
            try:
                self._run(self._aclient.connect, (), {})
            except BaseException:
                self._stop_loop()
                raise
            _live_clients.add(self)

    # -- the operations, made from AsyncClient's ------------------------

    lock = _blocking(AsyncClient.lock, "client")
    try_lock = _blocking(AsyncClient.try_lock, "client")
    unlock = _blocking(AsyncClient.unlock, "client")
    renew = _blocking(AsyncClient.renew, "client")
    lock_context = _context("lock", AsyncClient.lock_context)
    try_lock_context = _context("try_lock", AsyncClient.try_lock_context)

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

    # -- running on the loop ---------------------------------------------

    def _run(self, func: Callable[..., Coroutine[Any, Any, Any]], args: tuple, kwargs: dict) -> Any:
        """Run func(*args, **kwargs) on the loop and wait for its result. If
        the caller is interrupted meanwhile (KeyboardInterrupt, SystemExit),
        the call is cancelled (a waiting lock withdraws its request) or, if
        it already returned a lock, that lock is unlocked: nothing is left
        behind for a caller that is gone.

        This is on the path of every call, so it is kept cheap (bench/bench.py):
        the call goes into an inbox that the loop drains (woken with
        call_soon_threadsafe only when no drain is pending), and the caller
        sleeps on a plain lock of its thread that the loop releases with the
        outcome, rather than a run_coroutine_threadsafe future (a condition
        variable, callbacks, and a wake-up of the loop per call)."""
        if self._closed:
            raise nats.errors.ConnectionClosedError()
        if _running_loop() is self._loop:
            raise RuntimeError("ldlm.Client called from its own event loop would deadlock: use ldlm.AsyncClient there")
        waiter = getattr(_waiters, "lock", None)
        if waiter is None:
            waiter = _waiters.lock = threading.Lock()
            waiter.acquire()
        call = _Call(func, args, kwargs, waiter)
        self._inbox.append(call)
        if not self._draining:
            # Wake the loop only when no drain is pending: a busy loop
            # (many threads) is spared a self-pipe write and wake-up per call.
            self._draining = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except BaseException:  # the loop is closed: nothing will run this call
                self._draining = False
                try:
                    self._inbox.remove(call)
                except ValueError:
                    pass
                raise
        try:
            waiter.acquire()
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt, SystemExit...).
            # The loop may still release this waiter: the thread needs a new one.
            _waiters.lock = None
            with self._hand_mu:
                gave_up = call.state == _PENDING
                if gave_up:
                    call.state = _ABANDONED
            # Either the call has not delivered (it is cancelled, and gives
            # back what it gets itself), or it has, and the result is ours
            # to give back.
            if gave_up:
                self._settle(call)
            elif call.error is None and isinstance(call.result, AsyncLock):
                self._give_back(call.result)
            raise
        if call.error is not None:
            error, call.error = call.error, None  # no reference cycle through the traceback
            raise error
        result = call.result
        if isinstance(result, AsyncLock):
            return Lock(self, result)
        return result

    def _drain(self) -> None:
        """On the loop: start the calls handed over, unless their callers gave
        up already. The flag is cleared before the inbox is emptied, so a call
        appended meanwhile is either taken here or schedules another drain."""
        self._draining = False
        inbox, create_task = self._inbox, self._loop.create_task
        while inbox:
            call = inbox.popleft()
            if call.state == _PENDING:
                call.task = create_task(self._hand_over(call))

    async def _hand_over(self, call: "_Call") -> None:
        """On the loop: the call's outcome goes to its caller, unless the
        caller gave up first; a lock nobody will receive is then unlocked."""
        try:
            result = await call.func(*call.args, **call.kwargs)
        except BaseException as e:  # noqa: BLE001 - handed over, or nobody wants it
            with self._hand_mu:
                if call.state == _PENDING:
                    call.state = _DELIVERED
                    call.error = e
                    call.waiter.release()
            return
        with self._hand_mu:
            delivered = call.state == _PENDING
            if delivered:
                call.state = _DELIVERED
                call.result = result
                call.waiter.release()
        if not delivered and isinstance(result, AsyncLock) and result:
            try:
                await result.unlock()
            except Exception as e:  # noqa: BLE001
                log.debug("ldlm: giving back %r failed: %r", result.name, e)

    def _settle(self, call: "_Call") -> None:
        """Cancel the call and wait a little for it to end (a waiting lock
        withdraws its request), so that an exiting program leaves nothing."""

        async def cancel_and_wait() -> None:
            # A call not started yet never will be: it is abandoned.
            task = call.task
            if task is not None:
                task.cancel()
                await asyncio.wait([task], timeout=_CLEANUP_SECONDS)

        try:
            asyncio.run_coroutine_threadsafe(cancel_and_wait(), self._loop).result(_CLEANUP_SECONDS + 1)
        except Exception as e:  # noqa: BLE001
            log.debug("ldlm: waiting for the withdrawal: %r", e)

    def _give_back(self, alock: AsyncLock) -> None:
        if not alock:
            return
        try:
            asyncio.run_coroutine_threadsafe(alock.unlock(), self._loop).result(_CLEANUP_SECONDS)
        except Exception as e:  # noqa: BLE001
            log.debug("ldlm: giving back %r failed: %r", alock.name, e)


# the states of a _Call
_PENDING, _DELIVERED, _ABANDONED = 0, 1, 2

#: each thread's waiter: a lock held while no call is under way, which the
#: loop releases when the thread's call has an outcome
_waiters = threading.local()


class _Call:
    """One blocking call handed to the loop. ``state`` changes under the
    client's hand-over lock: the caller giving up and the loop delivering
    exclude each other."""

    __slots__ = ("func", "args", "kwargs", "waiter", "state", "result", "error", "task")

    def __init__(self, func: Callable[..., Coroutine[Any, Any, Any]], args: tuple, kwargs: dict, waiter: threading.Lock):
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.waiter = waiter
        self.state = _PENDING
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.task: Optional[asyncio.Task] = None


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    return asyncio._get_running_loop()


__all__ = ["Client", "Lock", "LockContext", "LDLMError"]
