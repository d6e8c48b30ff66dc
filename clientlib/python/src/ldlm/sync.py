"""The synchronous LDLM client: :class:`Client` and :class:`Lock`.

A Client runs an :class:`~ldlm.AsyncClient` on an asyncio event loop of its
own: a calling thread runs it while no other thread does, and a background
thread between calls (which renews locks that have a lock timeout and hears
of lost ones). Its methods may be called from any number of threads at once.

Nothing here repeats the asyncio client: each blocking method is made from
the AsyncClient (or AsyncLock) method of the same name, with its signature
and documentation, and runs it on the loop. Only what is particular to
blocking calls lives here: who runs the loop (_Runner), the requests that
calling threads write on the connection themselves (try_lock, lock and
Lock.unlock: see _Direct in ldlm/aio.py), and giving back a grant when the
caller is interrupted (Ctrl-C) while it waits.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import functools
import _signal
import logging
import signal
import threading
import time
import weakref
from typing import Any, Callable, Coroutine, Optional, TypeVar

import nats.errors
from nats.aio.client import Client as NATS

from ._names import OP_LOCK, OP_TRYLOCK
from .aio import DEFAULT_ADDRESS, Address, AsyncClient, AsyncLock, _Direct, _finish, release_on_exit
from .errors import LDLMError

log = logging.getLogger("ldlm")

T = TypeVar("T")

#: how long close() and the clean-up after an interrupted call wait
_CLEANUP_SECONDS = 15.0


#: a direct request's start (see _Runner.run): called with the caller's done
#: and proceed, it returns the _Direct sent, None (not sent: run the method
#: on the loop) or a coroutine function to run on the loop instead
_Start = Callable[[Callable[..., None], Callable[..., None]], Any]


def _direct_acquire(op: str) -> Callable[..., _Start]:
    """The direct start of lock() or try_lock() (see AsyncClient._direct_acquire)."""
    params = ("wait_timeout_seconds", "lock_timeout_seconds", "size") if op == OP_LOCK else ("lock_timeout_seconds", "size")
    keywords = frozenset(params) | {"auto_renew"}

    def start_of(aclient: AsyncClient, name: str, *args: Any, **kwargs: Any) -> _Start:
        if len(args) > len(params) or not keywords.issuperset(kwargs) or any(p in kwargs for p in params[: len(args)]):
            return _no_direct  # the method itself says what is wrong
        given = dict(zip(params, args), **kwargs)
        wait_timeout, lock_timeout = given.get("wait_timeout_seconds"), given.get("lock_timeout_seconds")
        size, auto_renew = given.get("size"), given.get("auto_renew")

        def start(done: Callable[..., None], proceed: Callable[..., None]) -> Any:
            return aclient._direct_acquire(op, name, wait_timeout, lock_timeout, size, auto_renew, done, proceed)

        return start

    return start_of


def _no_direct(done: Callable[..., None], proceed: Callable[..., None]) -> None:
    return None


def _blocking(
    async_method: Callable[..., Coroutine[Any, Any, Any]], of: str, direct: Optional[Callable[..., _Start]] = None
) -> Callable[..., Any]:
    """A blocking method that runs ``async_method`` (of AsyncClient or
    AsyncLock) on the client's loop, with the same signature and docs. A
    returned AsyncLock comes back as a :class:`Lock`. With ``direct``, the
    caller's thread sends the request itself when it can (see _Runner.run)."""
    name = async_method.__name__

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if of == "client":
            start = direct(self._aclient, *args, **kwargs) if direct is not None and args else None
            return self._run(getattr(self._aclient, name), args, kwargs, start)
        alock = self._alock
        start = alock._direct_unlock if name == "unlock" and not args and not kwargs else None
        result = self._client._run(getattr(alock, name), args, kwargs, start)
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
        if isinstance(address, NATS):
            loop = loop or _loop_of(address)
            if loop is None:
                raise ValueError("pass loop=, the event loop that runs the nats-py connection")
            self._runner = _Runner(loop, owns_loop=False)
        else:
            if loop is not None:
                raise TypeError("loop= is only for an existing nats-py connection")
            self._runner = _Runner(asyncio.new_event_loop(), owns_loop=True)
        self._loop = self._runner.loop
        self._owns_loop = self._runner.owns_loop
        self._thread = self._runner.thread
        self._aclient = AsyncClient(address, **options)
        if self._owns_loop:
            try:
                self._run(self._aclient.connect, (), {})
            except BaseException:
                self._runner.stop()
                raise
            _live_clients.add(self)

    # -- the operations, made from AsyncClient's ------------------------

    lock = _blocking(AsyncClient.lock, "client", _direct_acquire(OP_LOCK))
    try_lock = _blocking(AsyncClient.try_lock, "client", _direct_acquire(OP_TRYLOCK))
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
            if self._owns_loop or self._loop.is_running():
                self._runner.run_threadsafe(self._aclient.close(), timeout)
        except (concurrent.futures.TimeoutError, RuntimeError) as e:
            log.debug("ldlm: close: %r", e)
        finally:
            self._runner.stop()

    def __del__(self) -> None:
        # Dropped without close() (and no Lock of it is referenced either):
        # close in the background rather than leak a thread and a connection.
        if getattr(self, "_closed", True) or not getattr(self, "_owns_loop", False):
            return
        self._closed = True
        runner, aclient = self._runner, self._aclient
        loop = runner.loop

        async def shutdown() -> None:
            try:
                await aclient.close()
            finally:
                runner.stopping = True
                loop.stop()

        def start() -> None:
            task = loop.create_task(shutdown())
            _shutdowns.add(task)
            task.add_done_callback(_shutdowns.discard)

        try:
            loop.call_soon_threadsafe(start)
            runner.wake.set()
        except RuntimeError:
            pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def _run(
        self, func: Callable[..., Coroutine[Any, Any, Any]], args: tuple, kwargs: dict, direct: Optional[_Start] = None
    ) -> Any:
        if self._closed:
            raise nats.errors.ConnectionClosedError()
        result = self._runner.run(func, args, kwargs, direct)
        if isinstance(result, AsyncLock):
            return Lock(self, result)
        return result


#: how long callers may leave the loop unattended between their calls before
#: the background thread runs it (for renewals, lost-lock notices, PINGs)
_IDLE_SECONDS = 0.01

# the states of a _Call
_PENDING, _DELIVERED, _ABANDONED = 0, 1, 2

#: each thread's waiter: a lock held while nothing is signalled to the
#: thread; released when its call has an outcome, or when the thread is to
#: take over running the loop
_waiters = threading.local()

_MAIN_THREAD = threading.main_thread().ident
_SIGINT = int(signal.SIGINT)

#: Python's signal handlers, without the enum conversions of the signal
#: module (this is checked on every call in the main thread)
_SIGNALS = tuple(int(s) for s in signal.valid_signals())
_QUIET_HANDLERS = (signal.SIG_DFL, signal.SIG_IGN, int(signal.SIG_DFL), int(signal.SIG_IGN), None)


def _default_signals() -> bool:
    """Whether no Python signal handler but the default SIGINT one is set
    (those run in the main thread, wherever it is: inside the loop's code
    they could end one of its tasks)."""
    getsignal, sigint, quiet = _signal.getsignal, _SIGINT, _QUIET_HANDLERS
    for s in _SIGNALS:
        handler = getsignal(s)
        if handler not in quiet and not (s == sigint and handler is signal.default_int_handler):
            return False
    return True


class _Call:
    """One blocking call. ``state`` and ``signalled`` change under the
    runner's lock: the caller giving up and the loop delivering exclude each
    other, and a waiter is released at most once per wait."""

    __slots__ = (
        "func", "args", "kwargs", "waiter", "state", "result", "error", "task",
        "leading", "signalled", "can_lead", "handed", "waiting", "interrupted",
        "runner", "direct", "deadline",
    )

    def __init__(self, runner: "_Runner", func: Callable[..., Coroutine[Any, Any, Any]], args: tuple, kwargs: dict, waiter: threading.Lock):
        self.runner = runner
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.waiter = waiter
        self.state = _PENDING
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.task: Optional[asyncio.Task] = None
        self.leading = False  # its caller runs the loop now
        self.signalled = False  # its waiter is released and not yet taken
        self.can_lead = False
        self.handed = False  # the loop was passed to its caller (who holds owner for it now)
        self.waiting = False  # its caller sleeps on its waiter (and holds nothing)
        self.interrupted = False  # Ctrl-C came, to be raised where its caller holds nothing
        self.direct: Optional[_Direct] = None  # the request its caller sent itself
        self.deadline: Optional[float] = None  # when the direct request expires (monotonic)

    # the outcome of a direct request, on the loop (see _Direct)
    def done(self, result: Any, error: Optional[BaseException]) -> None:
        runner = self.runner
        with runner.mu:
            if self.state == _PENDING:
                self.result, self.error = result, error
                runner._deliver(self)
                return
        if error is None and isinstance(result, AsyncLock) and result:
            # nobody will receive it: give it back (awaited by _settle)
            self.task = runner.loop.create_task(_finish(_unlock_quietly(result)))

    def proceed(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.task = self.runner.loop.create_task(self.runner._hand_over(self, coro))


class _Runner:
    """Runs the blocking calls of a Client on its event loop.

    A loop runs in one thread at a time: whoever holds ``owner``. A calling
    thread that finds the loop free runs it itself until its own call has an
    outcome (no hand-off between threads: the cheap case). try_lock, lock
    and Lock.unlock first write their request on the connection from the
    calling thread (see run()). A thread that finds the loop taken then
    waits for the reply; other calls are handed over (the inbox, drained on
    the loop). It sleeps on its waiter, which is released when the call has
    an outcome or when the loop is free again and the thread is to run it
    (a leader that finishes passes the loop to a waiting caller). The background thread
    runs the loop while callers leave it alone, after _IDLE_SECONDS without
    a call or at once when asked, so that renewals and lost-lock notices are
    handled between calls; it gives the loop back as soon as a caller that
    can run it comes.

    A loop of the application's (``Client(nc, loop=loop)``) runs elsewhere:
    every call is then handed over."""

    def __init__(self, loop: asyncio.AbstractEventLoop, owns_loop: bool):
        self.loop = loop
        self.owns_loop = owns_loop
        self.owner = threading.Lock()
        self.mu = threading.Lock()
        self.inbox: "collections.deque[_Call]" = collections.deque()
        self.draining = False
        self.followers: "dict[_Call, None]" = {}  # handed over, not delivered (under mu)
        self.entries = 0  # calls begun, to tell a busy loop from an idle one
        self.bg_leading = False
        self.leader: Optional[_Call] = None  # the call whose caller runs the loop
        self.stopping = False
        self.wake = threading.Event()  # the background thread is to run the loop now
        self.thread: Optional[threading.Thread] = None
        if owns_loop:
            # the thread references the runner, never the Client (see Client.__del__)
            self.thread = threading.Thread(target=self._background, name="ldlm-client", daemon=True)
            self.thread.start()

    def run(
        self, func: Callable[..., Coroutine[Any, Any, Any]], args: tuple, kwargs: dict, direct: Optional[_Start] = None
    ) -> Any:
        """Run func(*args, **kwargs) on the loop and return its result. If the
        caller is interrupted meanwhile (KeyboardInterrupt, SystemExit), the
        call is cancelled (a waiting lock withdraws its request) or, if it
        already returned a lock, that lock is unlocked: nothing is left
        behind for a caller that is gone.

        With ``direct`` the caller's thread first tries to send the request
        itself (see _Direct): the call then needs no task and no wake-up of
        the loop; its reply is settled on the loop as it is read, by
        whichever thread runs it (this one, if the loop is free)."""
        running = _running_loop()
        if running is self.loop:
            raise RuntimeError("ldlm.Client called from its own event loop would deadlock: use ldlm.AsyncClient there")
        waiter = getattr(_waiters, "lock", None)
        if waiter is None:
            waiter = _waiters.lock = threading.Lock()
            waiter.acquire()
        call = _Call(self, func, args, kwargs, waiter)
        self.entries += 1
        # In the main thread, the loop runs here only while no signal handler
        # can raise inside it, and Ctrl-C is raised only where this thread
        # holds nothing (see _interruptible).
        in_main = threading.get_ident() == _MAIN_THREAD
        call.can_lead = self.owns_loop and running is None and (not in_main or _default_signals())
        guarded = in_main and call.can_lead
        if guarded:
            _signal.signal(_SIGINT, self._interruptible(call))
        try:
            try:
                if direct is not None and call.can_lead:
                    self._send(call, direct)
                if call.direct is not None:
                    if self.owner.acquire(False):
                        self._lead(call)
                    else:
                        self._follow(call)
                elif call.can_lead and self.owner.acquire(False):
                    try:
                        call.task = self.loop.create_task(self._hand_over(call))
                    except BaseException:
                        self._release_loop()
                        raise
                    self._lead(call)
                else:
                    self._hand(call)
                while True:
                    if call.interrupted:
                        raise KeyboardInterrupt
                    with self.mu:
                        handed, call.handed = call.handed, False
                        if not handed and call.state == _DELIVERED:
                            signalled, call.signalled = call.signalled, False
                            break
                    if handed or (call.can_lead and self.owner.acquire(False)):
                        self._lead(call)
                        continue
                    call.waiting = True
                    if call.interrupted:
                        raise KeyboardInterrupt
                    if call.deadline is None:
                        waiter.acquire()
                    elif not waiter.acquire(timeout=max(call.deadline - time.monotonic(), 0.0)):
                        call.waiting = False
                        self._expire(call)
                        continue
                    call.waiting = False
                    with self.mu:
                        call.signalled = False
                if signalled:
                    waiter.acquire()  # the release that told us: held again for next time
                if call.interrupted:
                    raise KeyboardInterrupt
            except BaseException:
                # Interrupted (KeyboardInterrupt, SystemExit...). The loop may
                # still release this waiter: the thread needs a new one.
                if guarded:
                    guarded = False  # a second Ctrl-C cuts the clean-up short
                    _signal.signal(_SIGINT, signal.default_int_handler)
                _waiters.lock = None
                with self.mu:
                    gave_up = call.state == _PENDING
                    if gave_up:
                        call.state = _ABANDONED
                    self.followers.pop(call, None)
                    handed, call.handed = call.handed, False
                if handed:
                    self._release_loop()  # passed to us as we gave up: pass it on
                # Either the call has not delivered (it is cancelled, and gives
                # back what it gets itself), or it has, and the result is ours
                # to give back.
                if gave_up:
                    self._settle(call)
                elif call.error is None and isinstance(call.result, AsyncLock):
                    self._give_back(call.result)
                raise
        finally:
            if guarded:
                _signal.signal(_SIGINT, signal.default_int_handler)
        if call.error is not None:
            error, call.error = call.error, None  # no reference cycle through the traceback
            raise error
        return call.result

    def _interruptible(self, call: _Call) -> Callable[[int, Any], None]:
        """The SIGINT handler of a call in the main thread: KeyboardInterrupt
        while the thread sleeps on its waiter; elsewhere (running the loop,
        passing it on) the call is marked, the loop stopped if this thread
        runs it, and KeyboardInterrupt raised once the thread holds nothing."""
        loop = self.loop

        def on_sigint(signum: int, frame: Any) -> None:
            if call.waiting:
                raise KeyboardInterrupt
            call.interrupted = True
            if call.leading:
                loop.stop()
                loop.call_soon_threadsafe(_noop)  # out of the selector's wait

        return on_sigint

    def _lead(self, call: _Call) -> None:
        """Run the loop (this thread holds ``owner``) until the call has an
        outcome (or Ctrl-C in the main thread); then let the loop go."""
        try:
            if call.state == _PENDING and not call.interrupted:
                call.leading = True
                self.leader = call  # its deadline is watched by the background thread
                try:
                    self.loop.run_forever()
                finally:
                    call.leading = False
                    self.leader = None
        finally:
            self._release_loop()

    def _release_loop(self) -> None:
        """Let the loop go (this thread holds owner): pass it straight to a
        caller that waits and can run it, or else release it (and have the
        background thread run it for waiting callers that cannot)."""
        while True:
            with self.mu:
                for call in self.followers:
                    if call.can_lead and call.state == _PENDING:
                        call.handed = True
                        if not call.signalled:
                            call.signalled = True
                            call.waiter.release()
                        return
                others = bool(self.followers)
            self.owner.release()
            if others:
                self.wake.set()
                return
            # A caller that came meanwhile may have found the loop taken.
            if not self.followers or not self.owner.acquire(False):
                return

    def _hand(self, call: _Call) -> None:
        """Hand the call to the loop: into the inbox, which the loop drains
        (woken with call_soon_threadsafe only when no drain is pending)."""
        with self.mu:
            self.followers[call] = None
        self.inbox.append(call)
        if not self.draining:
            # Wake the loop only when no drain is pending: a busy loop
            # (many threads) is spared a self-pipe write and wake-up per call.
            self.draining = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except BaseException:  # the loop is closed: nothing will run this call
                self.draining = False
                with self.mu:
                    self.followers.pop(call, None)
                try:
                    self.inbox.remove(call)
                except ValueError:
                    pass
                raise
        if self.owns_loop and not call.can_lead and not self.owner.locked():
            self.wake.set()  # nobody runs the loop: the background thread is to

    def _drain(self) -> None:
        """On the loop: start the calls handed over, unless their callers gave
        up already. The flag is cleared before the inbox is emptied, so a call
        appended meanwhile is either taken here or schedules another drain.
        The background thread gives the loop up to a caller that can run it."""
        self.draining = False
        inbox, create_task = self.inbox, self.loop.create_task
        give_up = False
        while inbox:
            call = inbox.popleft()
            if call.state == _PENDING:
                call.task = create_task(self._hand_over(call))
                give_up = give_up or call.can_lead
        if give_up and self.bg_leading:
            self.loop.stop()

    async def _hand_over(self, call: _Call, coro: Optional[Coroutine[Any, Any, Any]] = None) -> None:
        """On the loop: the call's outcome (that of ``coro``, when given)
        goes to its caller, unless the caller gave up first; a lock nobody
        will receive is then unlocked."""
        try:
            result = await (call.func(*call.args, **call.kwargs) if coro is None else coro)
        except BaseException as e:  # noqa: BLE001 - handed over, or nobody wants it
            with self.mu:
                if call.state == _PENDING:
                    call.error = e
                    self._deliver(call)
            return
        with self.mu:
            delivered = call.state == _PENDING
            if delivered:
                call.result = result
                self._deliver(call)
        if not delivered and isinstance(result, AsyncLock) and result:
            try:
                await result.unlock()
            except Exception as e:  # noqa: BLE001
                log.debug("ldlm: giving back %r failed: %r", result.name, e)

    def _deliver(self, call: _Call) -> None:
        """Under mu, on the loop: the call has its outcome; tell its caller
        (who, running the loop itself, only needs the loop stopped)."""
        call.state = _DELIVERED
        self.followers.pop(call, None)
        if call.leading:
            self.loop.stop()
        elif not call.signalled:
            call.signalled = True
            call.waiter.release()

    def _send(self, call: _Call, direct: _Start) -> None:
        """Try to send the call's request from this thread (see run())."""
        try:
            started = direct(call.done, call.proceed)
        except Exception:  # noqa: BLE001 - e.g. a bad lock name: the loop raises it again
            return
        if isinstance(started, _Direct):
            call.direct = started
            call.deadline = started.deadline
        elif started is not None:
            call.func, call.args, call.kwargs = started, (), {}

    def _follow(self, call: _Call) -> None:
        """A direct request was sent while another thread runs the loop:
        wait as a follower (the loop is passed on to this caller when free).
        The background thread gives the loop up to callers."""
        with self.mu:
            if call.state == _PENDING:
                self.followers[call] = None
        if self.bg_leading:
            try:
                self.loop.call_soon_threadsafe(_stop_background, self)
            except RuntimeError:
                pass

    def _expire(self, call: _Call) -> None:
        """The caller's thread saw the direct request's deadline pass: the
        loop is to end it (withdraw and raise, as for its own requests)."""
        call.deadline = None
        direct = call.direct
        assert direct is not None
        try:
            self.loop.call_soon_threadsafe(direct.expire)
        except RuntimeError:  # the loop is closed: nothing will answer
            with self.mu:
                if call.state == _PENDING:
                    call.state = _DELIVERED
                    call.error = nats.errors.ConnectionClosedError()
                    self.followers.pop(call, None)
            return
        if not self.owner.locked():
            self.wake.set()

    def _expire_on_loop(self, call: _Call) -> None:
        call.deadline = None
        if call.direct is not None:
            call.direct.expire()

    def run_threadsafe(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run coro on the loop from a thread that does not run it."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        if self.owns_loop:
            self.wake.set()
        return fut.result(timeout)

    def _settle(self, call: _Call) -> None:
        """Cancel the call and wait a little for it to end (a waiting lock
        withdraws its request), so that an exiting program leaves nothing."""

        async def cancel_and_wait() -> None:
            # A direct request without an outcome yet is dropped and withdrawn.
            if call.direct is not None:
                cleanup = call.direct.abandon()
                if cleanup is not None:
                    await cleanup
                    return
            # A call not started yet never will be: it is abandoned.
            task = call.task
            if task is not None:
                task.cancel()
                await asyncio.wait([task], timeout=_CLEANUP_SECONDS)

        try:
            self.run_threadsafe(cancel_and_wait(), _CLEANUP_SECONDS + 1)
        except Exception as e:  # noqa: BLE001
            log.debug("ldlm: waiting for the withdrawal: %r", e)

    def _give_back(self, alock: AsyncLock) -> None:
        if not alock:
            return
        try:
            self.run_threadsafe(alock.unlock(), _CLEANUP_SECONDS)
        except Exception as e:  # noqa: BLE001
            log.debug("ldlm: giving back %r failed: %r", alock.name, e)

    # -- the background thread --------------------------------------------

    def _background(self) -> None:
        """Run the loop while callers leave it alone; at the end, close it."""
        loop = self.loop
        asyncio.set_event_loop(loop)
        seen = -1
        try:
            while not self.stopping:
                asked = self.wake.wait(_IDLE_SECONDS)
                if asked:
                    self.wake.clear()
                if self.stopping:
                    break
                self._watch_leader()
                if (asked or self.entries == seen or self.followers) and self.owner.acquire(False):
                    try:
                        if not self.stopping:
                            self.bg_leading = True
                            try:
                                loop.run_forever()
                            finally:
                                self.bg_leading = False
                    finally:
                        self._release_loop()
                seen = self.entries
        finally:
            self._close_loop()

    def _watch_leader(self) -> None:
        """Expire the direct request of the caller that runs the loop once
        its deadline passed (a caller that waits elsewhere watches its own)."""
        leader = self.leader
        if leader is not None and leader.deadline is not None and leader.deadline <= time.monotonic():
            leader.deadline = None
            try:
                self.loop.call_soon_threadsafe(self._expire_on_loop, leader)
            except RuntimeError:
                pass

    def _close_loop(self) -> None:
        end = time.monotonic() + _CLEANUP_SECONDS
        while not self.owner.acquire(timeout=_IDLE_SECONDS):
            self._watch_leader()  # a caller still inside waits for its deadline
            if time.monotonic() > end:
                log.debug("ldlm: the event loop is still in use: not closed")
                return
        loop = self.loop
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=5))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()  # owner stays taken: nobody runs this loop again

    def stop(self) -> None:
        """End the background thread (which closes the loop)."""
        if not self.owns_loop or self.thread is None:
            return
        self.stopping = True
        self.wake.set()
        try:
            self.loop.call_soon_threadsafe(_stop_background, self)
        except RuntimeError:
            pass
        if self.thread is not threading.current_thread():
            self.thread.join(_CLEANUP_SECONDS)


def _stop_background(runner: _Runner) -> None:
    if runner.bg_leading:
        runner.loop.stop()


def _noop() -> None:
    pass


async def _unlock_quietly(alock: AsyncLock) -> None:
    try:
        await alock.unlock()
    except Exception as e:  # noqa: BLE001
        log.debug("ldlm: giving back %r failed: %r", alock.name, e)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    return asyncio._get_running_loop()


__all__ = ["Client", "Lock", "LockContext", "LDLMError"]
