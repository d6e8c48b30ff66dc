"""The asyncio LDLM client: :class:`AsyncClient` and :class:`AsyncLock`.

The synchronous :class:`ldlm.Client` is a thin layer over this module that
runs it on an event loop of its own (see ldlm/sync.py).

How the client follows what the service does with its locks
(docs/protocol.md); the rules are those of the Go client (clientlib), and
the shared wire vectors (subjects/testdata/wire-vectors.json) check both:

- every lock request carries a key chosen here, so that a request given up
  on (cancelled, interrupted, timed out locally) can be withdrawn with an
  unlock of that key;
- requests carry ``Ldlm-Owner: SERVER_ID:CLIENT_ID`` so that the service
  releases this connection's locks when it closes. The client therefore
  treats a dropped or replaced connection (a reconnect) as the loss of the
  locks granted over it, and asks again, over the new connection, for the
  locks it was waiting for (unless ``keep_on_disconnect``). It learns of
  those changes from nats-py's connection callbacks, and checks the
  connection's identity before each request and after each grant;
- with sessions (the default) requests also carry ``Ldlm-Session``, an id
  made once per client, so that the service keeps the client's locks and
  queue places across a reconnect its NATS server caused (a shutdown, a
  restart), within its reconnect grace. After a reconnect the client sends
  ``PREFIX.attach``, asking again until answered for max(request timeout,
  60 s), and keeps what the reply lists: held locks stay held, listed waits
  keep waiting for their reply; the rest is lost or asked again as above;
  what the reply lists that the client does not know is released
  (docs/protocol.md, "Sessions");
- an unlock that no service answered (the user's, or one the client sends
  itself to withdraw a wait or give back a grant) still fails, and the
  client re-sends it in the background, one task for all of them, until
  any answer comes or the client closes;
- it listens to the lost-lock notices for its connection
  (``PREFIX.lost.OWNER``), which end a held lock of the same name *and*
  fencing token (a notice that comes before the grant's reply is kept for a
  while), and to instance announcements (``PREFIX.instance.*``);
- a waiting lock asks again when the service is stopping (``Unavailable``),
  when nobody answers (no responders) and when another instance takes over;
  it retries the first two within its wait timeout (without one, within the
  request timeout of silence), and trylock, unlock and renew within the
  request timeout. Each retry waits longer (10 ms doubling to 1 s);
- a lock with a lock timeout is renewed in the background (unless auto-renew
  is off) and counted lost once its timeout passes without a renewal; the
  timeout counts from the grant: the time the request was sent plus the
  ``waited_ms`` of the grant (a grant already expired by that count is
  given back, and the call raises LockLostError "expired").
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from secrets import token_hex
from typing import Any, Awaitable, Callable, Optional, Sequence, TypeVar, Union

import nats
import nats.errors
from nats.aio.client import Client as NATS

from ._names import DEFAULT_PREFIX, OP_ATTACH, OP_LOCK, OP_RENEW, OP_TRYLOCK, OP_UNLOCK, encode_name
from .errors import (
    LOST_CODES,
    ConnectionLostError,
    LockLostError,
    NoServiceError,
    NotLockedError,
    UnavailableError,
    UnexpectedReplyError,
    error_from_reply,
)

log = logging.getLogger("ldlm")

T = TypeVar("T")

#: where a client connects when given no address
DEFAULT_ADDRESS = "nats://127.0.0.1:4222"
#: how long trylock, unlock and renew wait for the service's reply (and keep
#: retrying while no service answers); the Go client's default too
DEFAULT_REQUEST_TIMEOUT_SECONDS = 5.0
#: added to wait_timeout_seconds to bound a blocking lock request locally
DEFAULT_WAIT_MARGIN_SECONDS = 5.0
#: how long the client keeps trying to withdraw a request it gave up on
DEFAULT_CLEANUP_TIMEOUT_SECONDS = 5.0
#: request timeout of a lock that waits without limit (ten years: "forever",
#: while still a finite number that every nats-py version accepts)
_UNLIMITED_REQUEST_TIMEOUT = 10 * 365 * 24 * 3600.0
#: nats-py's default max_reconnect_attempts, restored after the first connect
_NATS_DEFAULT_RECONNECT_ATTEMPTS = 60
#: how long a withdrawal waits for the connection to come back
_WITHDRAW_RECONNECT_WAIT = 180.0
#: the service's smallest timeout
_MIN_TIMEOUT = 0.001
#: pauses between retries: from _RETRY_PAUSE, doubling, up to _MAX_RETRY_PAUSE
_RETRY_PAUSE = 0.01
_MAX_RETRY_PAUSE = 1.0
#: the least time the client keeps asking attach after a reconnect (the
#: budget is max(request timeout, this)): a takeover of the lock service
#: can take seconds, and the session's locks wait for the attach
_ATTACH_BUDGET = 60.0
#: pauses between re-sends of a release the service did not confirm: from
#: _RETRY_PAUSE, doubling, up to this
_MAX_RELEASE_PAUSE = 5.0
#: at most this many unconfirmed releases are remembered (the oldest is dropped)
_MAX_PENDING_RELEASES = 10_000
#: at most this many of them are re-sent at once
_RELEASE_BATCH = 100
#: how many unmatched lost notices and gone instances are remembered: they
#: only need to cover the replies in flight when the news comes
_REMEMBERED = 64

#: how nats-py marks a no-responders reply (nats.js.api.Header.STATUS, nats.aio.client.NO_RESPONDERS_STATUS)
_STATUS_HEADER = "Status"
_NO_RESPONDERS_STATUS = "503"

HEADER_OWNER = "Ldlm-Owner"
HEADER_SESSION = "Ldlm-Session"
HEADER_ERROR_CODE = "Nats-Service-Error-Code"
HEADER_ERROR = "Nats-Service-Error"

#: the INFO field that names the server in the owner header. WIRE-V2: the
#: server id (unique per server start, so a client id reused after a server
#: restart is not mistaken for the old connection).
OWNER_SERVER_FIELD = "server_id"

Address = Union[str, Sequence[str], NATS]

#: what the service accepts in Ldlm-Session (docs/protocol.md): 16 to 64
#: characters of A-Z a-z 0-9 _ -
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_session_id() -> str:
    """A session id as the clients make them: 32 lowercase hex digits, 128
    bits from the operating system's cryptographic random source."""
    return token_hex(16)


def is_session_id(value: str) -> bool:
    """Whether the service accepts ``value`` as an Ldlm-Session header."""
    return isinstance(value, str) and value.isascii() and _SESSION_ID.fullmatch(value) is not None


def parse_attach_reply(data: bytes) -> dict:
    """Decode a reply to ``PREFIX.attach``: ``attached``, ``resumed``,
    ``held`` (a list of ``{"name", "key", "token"}``), ``waiting`` (a list of
    ``{"name", "key"}``) and ``error`` (None, or ``{"code", "message"}``).
    Raises UnexpectedReplyError for a body that is not such an object."""
    try:
        reply: Any = json.loads(data) if data else None
    except ValueError:
        reply = None
    if type(reply) is not dict:
        raise UnexpectedReplyError(f"attach reply is not a JSON object: {data[:80]!r}")
    err = reply.get("error") or None
    if err is not None and not (isinstance(err, dict) and isinstance(err.get("code"), str)):
        raise UnexpectedReplyError(f"attach reply with a malformed error: {data[:80]!r}")
    out: dict = {
        "attached": reply.get("attached") is True,
        "resumed": reply.get("resumed") is True,
        "held": [],
        "waiting": [],
        "error": err,
    }
    for field, keys in (("held", ("name", "key", "token")), ("waiting", ("name", "key"))):
        items = reply.get(field) or []
        if not isinstance(items, list):
            raise UnexpectedReplyError(f"attach reply: {field} is not a list: {data[:80]!r}")
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("key"), str):
                raise UnexpectedReplyError(f"attach reply: a malformed {field} entry: {data[:80]!r}")
            out[field].append({k: item.get(k) for k in keys})
    return out

# lock states
_HELD = "held"
_UNLOCKED = "unlocked"
_LOST = "lost"
_NOT_OBTAINED = "not obtained"


def format_owner(server: str, client_id: int) -> str:
    """The Ldlm-Owner header value of a connection: ``SERVER_ID:CLIENT_ID``."""
    return f"{server}:{client_id}"


def owner_of(server_info: Any) -> Optional[str]:
    """The owner of the connection whose server INFO is ``server_info``
    (nats-py keeps it as ``nc._server_info``); None when the INFO lacks the
    server id or the client id."""
    if not isinstance(server_info, dict):
        return None
    server, cid = server_info.get(OWNER_SERVER_FIELD), server_info.get("client_id")
    if not server or not cid:
        return None
    return format_owner(server, cid)


@dataclass
class TLSConfig:
    """TLS files, as py-ldlm's ``TLSConfig``: ``AsyncClient(url, tls=TLSConfig(...))``.
    nats-py's own ``tls=ssl.SSLContext`` works as well."""

    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    ca_file: Optional[str] = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


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


def _number(v: Any) -> str:
    """A number as JSON text (a bad value goes as JSON too: the service
    refuses it with the right code)."""
    t = type(v)
    if t is int:
        return str(v)
    if t is float:
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else json.dumps(str(v))
    return json.dumps(v)


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until event is set, at most timeout seconds; True if it was set.

    Not asyncio.wait_for: before Python 3.12 it swallows a cancellation that
    comes while the event wakes it (it returns the result instead, CPython
    gh-86296), and the task goes on as if not cancelled: close() then
    waited for a lock's watch until the lock's timeout passed (a minute in
    the no_service renew vector, in about half the runs)."""
    try:
        async with asyncio.timeout(timeout):
            return await event.wait()
    except TimeoutError:
        return False


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


def _acquire_tail(
    is_lock: bool,
    deadline: Optional[float],
    wait_timeout_seconds: Optional[float],
    lock_timeout_seconds: Optional[float],
    size: Optional[int],
) -> str:
    """The end of a lock or trylock request's JSON body, after the key (and
    the wait timeout of a wait with a deadline, which changes each try)."""
    tail = ""
    if size is not None:
        tail += ',"size":' + _number(size)
    if lock_timeout_seconds is not None:
        tail += ',"lock_timeout_seconds":' + _number(lock_timeout_seconds)
    if is_lock and deadline is None and wait_timeout_seconds is not None:
        tail += ',"wait_timeout_seconds":' + _number(wait_timeout_seconds)  # 0 or invalid: the service decides
    return tail + "}"


def _key_json(key: Optional[str]) -> str:
    """A key as a JSON string; the client's own keys (hex) need no escaping."""
    if key is not None and key.isalnum() and key.isascii():
        return '"' + key + '"'
    return json.dumps(key)


def _unknown_key(err: Any) -> bool:
    """Whether an error object of a reply says that the key holds or waits
    for nothing."""
    return isinstance(err, dict) and err.get("code") in LOST_CODES


#: the most an asyncio socket transport reads at once for the client (see _small_reads)
_READ_SIZE = 32 * 1024


def _small_reads(nc: Any) -> None:
    """Make the connection's socket reads 32 KiB instead of asyncio's 256 KiB.

    asyncio's socket transport reads with ``recv(256 KiB)``: a 256 KiB buffer
    per read, cut down to the few hundred bytes a reply has. On an event
    loop in a thread other than the main one (the synchronous client's),
    glibc serves a buffer that large from fresh mmap'ed pages every time:
    page faults and system calls on every reply (about 10 % of the CPU of a
    synchronous lock+unlock, bench/bench.py). nats-py takes at most 32 KiB
    a read from the stream anyway. The transport is nats-py's private
    attribute: when it is not there (another nats-py version, WebSocket),
    nothing changes."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is not None and getattr(transport, "max_size", 0) > _READ_SIZE:
        try:
            transport.max_size = _READ_SIZE
        except AttributeError:
            pass


class _Replies:
    """The replies to the client's requests, on a subscription of its own
    (``INBOX.*``, the shape of nats-py's own request inbox).

    It takes the place of the subscription's pending-message queue (a
    private attribute of nats-py): nats-py's read loop puts each reply here,
    which hands it straight to the future of its request. nats-py's
    ``request()`` takes two more turns of the event loop per reply (the
    subscription's task, then ``wait_for``'s waiter) and a timer handle of
    its own: about a fifth of the CPU of a synchronous lock+unlock
    (bench/bench.py). Where the attribute is not an asyncio.Queue (another
    nats-py version), the client uses ``request()``."""

    def __init__(self, sub: Any, prefix: str):
        self.sub = sub
        self.prefix = prefix  # the inbox, with the dot before the token
        # the requests waiting for their reply, by the token that ends their
        # inbox: futures, or _Direct requests (sent by other threads)
        self.waiting: dict[str, Any] = {}
        self.seq = itertools.count(1)  # next() is atomic: other threads take tokens too

    @staticmethod
    def attach(sub: Any, prefix: str) -> Optional["_Replies"]:
        if not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue) or not hasattr(sub, "_pending_size"):
            return None
        replies = _Replies(sub, prefix)
        sub._pending_queue = replies
        return replies

    # the part of asyncio.Queue that nats-py uses
    def put_nowait(self, msg: Any) -> None:
        self.sub._pending_size -= len(msg.data)
        subject = msg.subject
        fut = self.waiting.pop(subject[subject.rfind(".") + 1 :], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    async def join(self) -> None:
        return None


def _time_out(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(nats.errors.TimeoutError())


def _pause(retries: int) -> float:
    return min(_RETRY_PAUSE * (2 ** min(retries, 10)), _MAX_RETRY_PAUSE)


def _unanswered(e: BaseException) -> bool:
    """Whether a release (unlock) ended without the service's answer: nobody
    answered, it kept saying it is stopping, or it timed out. Such a release
    is not confirmed: the client re-sends it in the background (see
    AsyncClient._pend_release)."""
    return isinstance(e, (nats.errors.TimeoutError, TimeoutError, nats.errors.NoRespondersError, UnavailableError))


def _check_responders(msg: Any) -> None:
    """Raise NoRespondersError for nats-py's no-responders reply."""
    if msg.headers and msg.headers.get(_STATUS_HEADER) == _NO_RESPONDERS_STATUS:
        raise nats.errors.NoRespondersError


#: nats-py's status of a connection that is up (not connecting, not draining)
_CONNECTED = NATS.CONNECTED

#: how long a thread that wrote part of a request waits to write the rest
_WRITE_REST_SECONDS = 10.0


class _SocketWriter:
    """Lets threads other than the event loop's write requests on the
    connection's socket themselves (the synchronous client's callers: a
    request then costs no wake-up of the loop, nor a task, nor a turn of
    nats-py's flusher).

    Its lock orders the writes: the transport's write() and writelines()
    take it too (they are wrapped here), and another thread writes only
    while nothing waits to be written before it (asyncio's buffer and
    nats-py's pending commands are empty). A command is written whole: a
    thread that wrote part of one writes the rest before letting go. Only
    for a plain TCP socket transport of asyncio (not TLS, not WebSocket):
    attach() returns None otherwise, and everything goes through the loop."""

    def __init__(self, transport: Any, sock: socket.socket):
        self.transport = transport
        self.sock = sock
        self.mu = threading.RLock()  # writelines() may call write()
        write, writelines, mu = transport.write, transport.writelines, self.mu

        def locked_write(data: Any) -> None:
            with mu:
                write(data)

        def locked_writelines(lines: Any) -> None:
            with mu:
                writelines(lines)

        transport.write = locked_write
        transport.writelines = locked_writelines

    @staticmethod
    def attach(nc: Any) -> Optional["_SocketWriter"]:
        """The writer of the connection's current socket (made once per socket)."""
        writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
        transport = getattr(writer, "transport", None)
        if transport is None or type(transport).__name__ != "_SelectorSocketTransport":
            return None
        if not isinstance(getattr(nc, "_status", None), int) or not isinstance(getattr(nc, "_pending_data_size", None), int):
            return None  # another nats-py: send() could not tell whether the way is clear
        found = getattr(transport, "_ldlm_writer", None)
        if found is not None:
            return found
        sock = getattr(transport, "_sock", None)
        if not isinstance(sock, socket.socket) or transport.get_extra_info("sslcontext") is not None:
            return None
        try:
            found = _SocketWriter(transport, sock)
            transport._ldlm_writer = found
        except AttributeError:
            return None
        return found

    def send(self, nc: Any, data: bytes) -> bool:
        """Write data now, from any thread; False (nothing written) when it
        cannot go first: the caller then lets the loop send it."""
        with self.mu:
            t = self.transport
            if nc._status != _CONNECTED or nc._pending_data_size or t.get_write_buffer_size() or t.is_closing():
                return False
            try:
                n = self.sock.send(data)
            except OSError:  # would block, or the connection broke: nothing written
                return False
            if n < len(data):
                self._send_rest(memoryview(data)[n:])
            return True

    def _send_rest(self, rest: memoryview) -> None:
        """The socket took part of a command: write the rest before anything
        else may be written. If that fails the stream is broken: shut the
        socket down, so that nats-py reconnects (the request's caller hears
        of it like of any lost connection)."""
        end = time.monotonic() + _WRITE_REST_SECONDS
        try:
            while rest:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the socket took no data for %.0fs" % _WRITE_REST_SECONDS)
                select.select([], [self.sock], [], left)
                try:
                    rest = rest[self.sock.send(rest) :]
                except (BlockingIOError, InterruptedError):
                    pass
        except OSError as e:
            log.warning("ldlm: writing a request failed (%r): dropping the connection", e)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _pub_command(subject: str, reply: str, payload: bytes, header: Optional[bytes]) -> bytes:
    """nats-py's PUB (HPUB with a header block) command, made off the loop."""
    if header is None:
        return b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply.encode(),
        len(header),
        len(header) + len(payload),
        header,
        payload,
    )


class _Interrupted(Exception):
    """A direct lock request's wait was interrupted (see _Wait): withdraw it
    and ask again."""


class _Direct:
    """A request that a thread other than the event loop's wrote on the
    connection itself (see _SocketWriter), for a synchronous caller.

    Its reply is settled on the loop as nats-py reads it (_Replies), without
    a task: ``settle(direct, msg, error)``, a function of the client, ends
    the call with ``done(result, error)`` in the common cases and otherwise
    hands what is left (retries, withdrawals) to the asyncio code, in a
    task, with ``proceed(coro)``. ``done`` and ``proceed`` are the caller's
    (ldlm/sync.py). The reply, the expiry of ``deadline`` (expire()), an
    interruption of a lock wait and the caller giving up (abandon()) all
    happen on the loop, so exactly one of them resolves the request."""

    __slots__ = (
        "replies", "token", "settle", "on_done", "proceed", "deadline", "resolved_mu",
        "msg", "error", "key", "ep", "headers", "sent_at", "wait", "wait_deadline", "cleanup",
    )

    def __init__(
        self,
        replies: "_Replies",
        settle: Callable[["_Direct"], None],
        done: Callable[[Any, Optional[BaseException]], None],
        proceed: Callable[[Any], None],
    ):
        self.replies = replies
        self.token = str(next(replies.seq))
        self.settle = settle
        self.on_done = done
        self.proceed = proceed
        self.deadline: Optional[float] = None  # monotonic; None: no limit
        # taken once, by whatever resolves the request (on the loop), or by
        # the caller's thread taking back a request it could not write
        self.resolved_mu = threading.Lock()
        self.msg: Any = None
        self.error: Optional[BaseException] = None
        self.key: Optional[str] = None
        self.ep: Optional["_Epoch"] = None  # of the wait, once settled: an attach may move it
        self.headers: Optional[dict[str, str]] = None  # as sent (the session's OwnerGone)
        self.sent_at = 0.0
        self.wait: Optional["_Wait"] = None
        self.wait_deadline: Optional[float] = None
        self.cleanup: Optional[Callable[[], Awaitable[Any]]] = None  # what abandon() leaves to do

    @property
    def reply_to(self) -> str:
        return self.replies.prefix + self.token

    def claim(self) -> bool:
        """Resolve the request now; False if something else did first."""
        return self.resolved_mu.acquire(False)

    # what _Replies.put_nowait uses of a future
    def done(self) -> bool:
        return self.resolved_mu.locked()

    def set_result(self, msg: Any) -> None:
        self._resolve(msg, None)

    def expire(self) -> None:
        """On the loop: the deadline passed without a reply."""
        self._resolve(None, nats.errors.TimeoutError())

    def interrupt(self) -> None:
        """On the loop: the lock wait may be parked where no reply will come from."""
        self._resolve(None, _Interrupted())

    def _resolve(self, msg: Any, error: Optional[BaseException]) -> None:
        if not self.claim():
            return
        self.replies.waiting.pop(self.token, None)
        self.msg, self.error = msg, error
        try:
            self.settle(self)
        except BaseException as e:  # noqa: BLE001 - never into nats-py's read loop
            self.on_done(None, e)
        self._unlink()

    def _unlink(self) -> None:
        """Drop the references that make cycles (the caller's callbacks, the
        wait): resolved requests are freed at once, without the collector."""
        self.settle = self.on_done = self.proceed = self.cleanup = None  # type: ignore[assignment]
        if self.wait is not None:
            self.wait.direct = None
            self.wait = None

    def abandon(self) -> Optional[Awaitable[Any]]:
        """On the loop: the caller gave up. Unless already resolved (then the
        task or the outcome takes care of itself), the request is dropped
        and its clean-up (a withdrawal) returned, to be awaited."""
        if not self.claim():
            return None
        self.replies.waiting.pop(self.token, None)
        cleanup = self.cleanup
        try:
            return cleanup() if cleanup is not None else None
        finally:
            self._unlink()


class _Epoch:
    """One unbroken stretch of the connection: connected, to one server, with
    one client id. nats-py replaces its INFO dict on every (re)connect, so the
    dict itself names the stretch.

    ``headers`` are sent as they are by every request of the epoch: built
    here once, and replaced (never modified) when the session id changes."""

    __slots__ = ("info", "owner", "headers", "wire", "writer")

    def __init__(self, info: Any, owner: Optional[str], session: Optional[str], writer: Optional[_SocketWriter] = None):
        self.info = info
        self.owner = owner
        self.headers: Optional[dict[str, str]] = None
        # (headers, the same block as nats-py writes it): what requests
        # written off the loop carry; one attribute, so that a thread reads
        # both of one session id
        self.wire: tuple[Optional[dict[str, str]], Optional[bytes]] = (None, None)
        self.writer = writer  # None: requests go through nats-py only
        self.set_session(session)

    def set_session(self, session: Optional[str]) -> None:
        """On the loop: the headers of the epoch's requests from now on."""
        headers: Optional[dict[str, str]]
        if not self.owner:
            headers = None  # a session needs an owner: the service refuses it alone
        elif session:
            headers = {HEADER_OWNER: self.owner, HEADER_SESSION: session}
        else:
            headers = {HEADER_OWNER: self.owner}
        block = None
        if headers is not None:
            block = ("NATS/1.0\r\n" + "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n").encode()
        self.headers = headers
        self.wire = (headers, block)

    @property
    def session(self) -> Optional[str]:
        """The session id that this epoch's requests carry (None: none)."""
        return self.headers.get(HEADER_SESSION) if self.headers else None


class _Wait:
    """A lock request parked at the service, which the client interrupts
    (cancels, then asks again) when its reply could be lost: the connection
    changed (unless the session kept the wait: the attach after the
    reconnect then moves it to the new epoch), or another instance of the
    service took over."""

    __slots__ = ("task", "epoch", "key", "interrupted", "direct")

    def __init__(self, task: "Optional[asyncio.Task[Any]]", epoch: _Epoch, key: str, direct: Optional[_Direct] = None):
        self.task = task  # the lock() call's, or None for a direct request
        self.epoch = epoch
        self.key = key
        self.interrupted = False
        self.direct = direct

    def interrupt(self) -> None:
        """On the loop."""
        if not self.interrupted:
            self.interrupted = True
            if self.task is not None:
                self.task.cancel()
            elif self.direct is not None:
                self.direct.interrupt()


class AsyncLock:
    """The outcome of a lock request: truthy while the lock is held.

    Attributes: ``name``; and when it was granted ``key`` (the holder's
    secret), ``token`` (the fencing token), ``size``, ``expires_at`` (the
    service's expiry, a datetime, or None without a lock timeout),
    ``lock_timeout_seconds``, ``instance`` (the service instance that
    granted it) and ``waited_ms`` (how long the request waited in the
    service's queue, as the service says; the client counts the lock
    timeout from the grant: the time it sent the request plus that). ``lost_error`` is a :class:`~ldlm.LockLostError` once the
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
        expires_at: Optional[str] = None,
        lock_timeout_seconds: Optional[float] = None,
        auto_renew: bool = False,
        epoch: Optional[_Epoch] = None,
        instance: Optional[str] = None,
        sent_at: float = 0.0,
        waited_ms: Union[int, float] = 0,
    ):
        self._client = client
        self.name = name
        self._subject_name = encode_name(name)
        self.key = key
        self.token = token
        self.size = size
        self._expires_at_text = expires_at
        self.lock_timeout_seconds = lock_timeout_seconds
        self.instance = instance
        self.waited_ms = waited_ms
        self.lost_error: Optional[LockLostError] = None
        self._state = _HELD if granted else _NOT_OBTAINED
        # taken once, by whoever ends the hold: the loop, or a synchronous
        # caller's unlock on its own thread (see _direct_unlock)
        self._ending = threading.Lock()
        self._auto_renew = auto_renew
        self._epoch = epoch
        # Our estimate of the expiry, on the monotonic clock: counted from
        # before the request left plus the time the service says it waited
        # in the queue (the timeout starts at the grant), so it errs on the
        # early side.
        self._expires_mono: Optional[float] = (
            sent_at + waited_ms / 1000 + lock_timeout_seconds if granted and lock_timeout_seconds else None
        )
        self._watch_task: Optional[asyncio.Task] = None
        self._poke: Optional[asyncio.Event] = None
        self._renew_mu: Optional[asyncio.Lock] = None

    @property
    def expires_at(self) -> Optional[datetime]:
        """The service's expiry (its clock), None without a lock timeout."""
        return _parse_time(self._expires_at_text)

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
        the work done under it may not have been protected. When no service
        answers it raises :class:`~ldlm.NoServiceError` (or a timeout) as
        other calls do, the Lock is ended all the same, and the client
        re-sends the unlock in the background until a service answers."""
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
        if self._watch_task is not None:
            await self._stop_watch()
        return await self._send_unlock()

    async def _send_unlock(self, first_try: Optional[tuple[float, bool]] = None) -> bool:
        """The part of unlock() after the hold ended: ask the service (see
        _call for first_try)."""
        try:
            reply = await self._client._call(
                OP_UNLOCK, self.name, '{"key":%s}' % _key_json(self.key), encoded=self._subject_name, first_try=first_try
            )
        except Exception as e:
            if _unanswered(e):
                self._client._pend_release(self.name, self.key)
            raise
        return self._unlocked(reply)

    def _unlocked(self, reply: dict) -> bool:
        """unlock()'s outcome from the service's reply."""
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

    def _direct_unlock(self, done: Callable[[Any, Optional[BaseException]], None], proceed: Callable[[Any], None]) -> Any:
        """unlock() for a synchronous caller, called on its own thread (not
        the loop's): the unlock request is written on the connection by this
        thread (see _Direct). Returns the _Direct; None when only unlock()
        on the loop will do (nothing was changed); or, when the hold was
        ended here but the request could not be written, the coroutine
        function that sends it, to run on the loop instead of unlock().
        Only for a lock without a lock timeout (no expiry, no renewals)."""
        client = self._client
        replies, nc = client._replies, client._nc
        if self._state != _HELD or self._expires_mono is not None or self._watch_task is not None:
            return None
        if replies is None or nc is None or client._closed:
            return None
        ep = client._current()
        if ep is None or ep.writer is None:
            return None
        if not self._end(_UNLOCKED):
            return None  # ended meanwhile (lost): unlock() says how
        # From here on the unlock is to be sent: by this thread, or by the loop.
        d = _Direct(replies, self._settle_unlock, done, proceed)
        try:
            payload = ('{"key":%s}' % _key_json(self.key)).encode()
            d.headers, block = ep.wire  # Ldlm-Owner and Ldlm-Session, as the loop's requests
            cmd = _pub_command(f"{client._prefix}.{OP_UNLOCK}.{self._subject_name}", d.reply_to, payload, block)
            d.sent_at = time.monotonic()
            d.deadline = d.sent_at + max(min(client._request_timeout, client._no_service_budget), _MIN_TIMEOUT)
            replies.waiting[d.token] = d
            sent = ep.writer.send(nc, cmd)
        except Exception as e:  # noqa: BLE001 - not written: the loop sends it
            log.debug("ldlm: writing an unlock request: %r", e)
            sent = False
        if not sent and d.claim():
            replies.waiting.pop(d.token, None)
            return self._send_unlock
        return d

    def _settle_unlock(self, d: _Direct) -> None:
        """On the loop: the outcome of a direct unlock request."""
        if d.error is not None:
            if _unanswered(d.error):
                self._client._pend_release(self.name, self.key)
            d.on_done(None, d.error)
            return
        msg = d.msg
        unavailable = False
        if not (msg.headers and msg.headers.get(_STATUS_HEADER) == _NO_RESPONDERS_STATUS):
            reply = _decode_reply(msg, self.name)
            err = reply.get("error")
            if not err or err.get("code") != "Unavailable":
                d.on_done(self._unlocked(reply), None)
                return
            unavailable = True
        # Nobody answered, or the service is stopping: the loop retries,
        # within the budget that started with this first try.
        d.proceed(self._send_unlock((d.sent_at, unavailable)))

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
            if self._poke is not None:
                self._poke.set()
        return self

    async def __aenter__(self) -> "AsyncLock":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await release_on_exit(self, exc_type)

    # -- internals --------------------------------------------------------

    def _expired_on_arrival(self) -> bool:
        """Whether a fresh grant's lock timeout already passed by our count
        (a lock timeout shorter than the transit)."""
        return self._expires_mono is not None and time.monotonic() >= self._expires_mono

    def _check_expiry(self) -> None:
        if self._state == _HELD and self._expires_mono is not None and time.monotonic() >= self._expires_mono:
            self._lose("expired", "its lock timeout passed without a renewal")

    def _end(self, state: str) -> bool:
        """Leave the held state; True if this call did."""
        if self._state != _HELD or not self._ending.acquire(False):
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

    async def _renew(self, lock_timeout_seconds: Optional[float], budget: float, if_expires: Optional[float] = None) -> None:
        """Send a renewal. For a background renewal, if_expires is the expiry
        the watch saw: the current timeout is used, and nothing is sent if a
        renew() moved the expiry meanwhile."""
        if self._renew_mu is None:
            self._renew_mu = asyncio.Lock()
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
            body = '{"key":%s,"lock_timeout_seconds":%s}' % (_key_json(self.key), _number(lock_timeout_seconds))
            reply = await self._client._call(OP_RENEW, self.name, body, budget, encoded=self._subject_name)
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
                self._expires_at_text = reply.get("expires_at")
                if reply.get("token"):
                    self.token = reply["token"]

    def _start_watch(self) -> None:
        if (self._watch_task is None or self._watch_task.done()) and self._state == _HELD and self.lock_timeout_seconds:
            if self._poke is None:
                self._poke = asyncio.Event()
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
        assert self._poke is not None
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
            if delay > 0 and await _wait_event(self._poke, delay):
                retry_at = 0.0
                continue  # renewed by renew(): recompute
            now = time.monotonic()
            self._check_expiry()
            if self._state != _HELD:
                return
            if self._auto_renew and now >= renew_at:
                try:
                    # no point retrying past the expiry
                    await self._renew(None, max(expires - now, _MIN_TIMEOUT), if_expires=expires)
                    retry_at = 0.0
                except asyncio.CancelledError:
                    raise
                except LockLostError:
                    return
                except Exception as e:  # noqa: BLE001 - keep trying until it expires
                    log.warning("ldlm: renewing lock %r failed (%r); retrying", self.name, e)
                    retry_at = time.monotonic() + timeout / 10


async def release_on_exit(lock: AsyncLock, exc_type: Any) -> None:
    """Context-manager exit: unlock a held lock. A failure (including the
    loss of the lock) is raised unless the body is already raising (then it
    is only logged)."""
    if lock._state not in (_HELD, _LOST):
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
            await release_on_exit(self._lock, exc_type)


class AsyncClient:
    """An asyncio LDLM client.

    ``AsyncClient("nats://host:4222")`` (or "host:port", or a list of URLs)
    connects on first use or on ``await client.connect()``; extra keyword
    arguments go to :func:`nats.connect` (``user``, ``password``, ``token``,
    ``tls``, ``user_credentials``...). ``AsyncClient(nc)`` uses an existing
    nats-py connection, which ``close()`` then leaves open.

    Options:

    - ``auto_renew`` (default True; py-ldlm's ``auto_renew_locks`` and
      ``auto_refresh_locks`` too): renew locks that have a lock timeout in
      the background, a third of the way into each timeout;
    - ``lock_timeout_seconds`` (default None): the lock timeout of every lock
      that does not give its own;
    - ``subject_prefix`` (default "ldlm");
    - ``request_timeout_seconds`` (default 5): bounds trylock, unlock and
      renew requests, including their retries while no service answers, and
      how long a lock without a wait timeout keeps asking while none does
      (an unlock left unanswered is then retried in the background); each
      try of the attach after a reconnect (asked for at least 60 s);
    - ``retries`` and ``retry_delay_seconds`` (py-ldlm's): instead of the
      request timeout, keep retrying while no service answers for
      ``retries * retry_delay_seconds`` seconds (``retries=-1``: for ever);
    - ``wait_margin_seconds`` (default 5): added to ``wait_timeout_seconds``
      to bound a blocking lock request locally (a lock without a wait
      timeout waits without limit);
    - ``cleanup_timeout_seconds`` (default 5): how long to keep trying to
      withdraw a request given up on;
    - ``sessions`` (default True): send the ``Ldlm-Session`` header, an id
      made once per client, so that the client's locks belong to the client
      rather than to its NATS connection: when its NATS server cuts the
      connection (shutdown, restart) and nats-py reconnects within the
      service's ``LDLM_RECONNECT_GRACE`` (5 s), the client re-attaches and
      keeps its locks (same key and token, still renewed) and its place in
      lock queues. Closing the connection still frees them at once. False:
      locks belong to the connection and are lost on any reconnect;
    - ``keep_on_disconnect`` (default False): for a service that runs with
      ``LDLM_NO_CLEAR_ON_DISCONNECT=true``, where locks outlive their
      connection: do not count locks lost when the connection drops (with
      sessions: when no reply to the attach after a reconnect says which
      are kept);
    - ``tls``: an ``ssl.SSLContext`` or a :class:`TLSConfig`; ``password``
      without ``user`` is sent as a NATS token (py-ldlm's single password).
    """

    def __init__(
        self,
        address: Address = DEFAULT_ADDRESS,
        *,
        auto_renew: Optional[bool] = None,
        lock_timeout_seconds: Optional[float] = None,
        subject_prefix: str = DEFAULT_PREFIX,
        request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
        retries: Optional[int] = None,
        retry_delay_seconds: float = 5.0,
        wait_margin_seconds: float = DEFAULT_WAIT_MARGIN_SECONDS,
        cleanup_timeout_seconds: float = DEFAULT_CLEANUP_TIMEOUT_SECONDS,
        keep_on_disconnect: bool = False,
        sessions: bool = True,
        auto_renew_locks: Optional[bool] = None,
        auto_refresh_locks: Optional[bool] = None,
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
        tls = connect_options.get("tls")
        if isinstance(tls, TLSConfig):
            connect_options["tls"] = tls.context()
        if connect_options.get("password") and not connect_options.get("user") and not connect_options.get("token"):
            connect_options["token"] = connect_options.pop("password")
        self._connect_options = connect_options
        renew = next((v for v in (auto_renew, auto_renew_locks, auto_refresh_locks) if v is not None), True)
        self._auto_renew = bool(renew)
        self._lock_timeout = lock_timeout_seconds or None
        self._prefix = subject_prefix
        self._request_timeout = float(request_timeout_seconds)
        if retries is None:
            self._no_service_budget = self._request_timeout
        elif retries < 0:
            self._no_service_budget = float("inf")
        else:
            self._no_service_budget = retries * float(retry_delay_seconds)
        self._wait_margin = float(wait_margin_seconds)
        self._cleanup_timeout = float(cleanup_timeout_seconds)
        self._keep_on_disconnect = keep_on_disconnect
        # The session id sent in Ldlm-Session (None: sessions off); replaced
        # when the service says it forgot it. _attached is the epoch whose
        # attach was settled (or that needed none): until then what earlier
        # epochs held and waited for is neither kept nor lost. Both are
        # changed on the event loop only.
        self._session: Optional[str] = new_session_id() if sessions else None
        self._attached: Optional[_Epoch] = None
        self._connect_lock: Optional[asyncio.Lock] = None
        self._closed = False
        self._set_up = False
        self._warned_no_owner = False
        self._held: set[AsyncLock] = set()
        # the connection as last seen; None: not connected
        self._epoch: Optional[_Epoch] = None
        self._epoch_changed: Optional[asyncio.Event] = None  # set and dropped on each change
        self._conn_mu: Optional[asyncio.Lock] = None
        self._waits: set[_Wait] = set()
        # What the service's notices said (as in the Go client's notices.go).
        self._instance: Optional[str] = None  # the instance serving now, as last heard
        self._unsure = False  # _instance was learned from a reply while none was known
        self._gone: collections.deque[str] = collections.deque(maxlen=_REMEMBERED)
        self._unmatched: collections.deque[tuple[str, int, str]] = collections.deque(maxlen=_REMEMBERED)
        self._subs: list[Any] = []
        self._replies: Optional[_Replies] = None  # None: nc.request()
        self._lost_subs: dict[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()  # background withdrawals
        # Releases the service did not confirm (docs/protocol.md,
        # "Unconfirmed releases"): key -> [name, when to send next
        # (monotonic), the pause after that], oldest first. Changed on the
        # event loop only; one task, _release_task, re-sends them.
        self._pending: dict[str, list] = {}
        self._release_task: Optional[asyncio.Task] = None
        self._pending_added: Optional[asyncio.Event] = None
        # keys of the lock and trylock requests sent whose outcome is not
        # known yet: an attach reply that lists one is not ours to release
        # (added by callers' threads too: set.add is atomic)
        self._asking: set[str] = set()

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
            if self._connect_lock is None:
                self._connect_lock = asyncio.Lock()
            async with self._connect_lock:
                if self._nc is None:
                    self._nc = await self._open()
        if not self._set_up:
            await self._setup()
        return self

    async def _open(self) -> NATS:
        opts: dict[str, Any] = {"name": "ldlm-python"}
        opts.update(self._connect_options)
        for cb_name in ("disconnected_cb", "reconnected_cb", "closed_cb"):
            opts[cb_name] = self._follow(opts.get(cb_name))
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
        assert self._servers is not None  # an AsyncClient(nc) never opens one
        nc = await nats.connect(servers=self._servers, **opts)
        if later_attempts is None and isinstance(getattr(nc, "options", None), dict):
            nc.options["max_reconnect_attempts"] = _NATS_DEFAULT_RECONNECT_ATTEMPTS
        return nc

    def _follow(self, user_cb: Optional[Callable[[], Awaitable[None]]]) -> Callable[[], Awaitable[None]]:
        """A nats-py connection callback that checks the connection, then
        calls the application's own callback (if any)."""

        async def cb() -> None:
            if not self._closed:
                try:
                    await self._sync_connection()
                except Exception as e:  # noqa: BLE001 - never break nats-py's reconnect loop
                    log.debug("ldlm: following the connection: %r", e)
            if user_cb is not None:
                await user_cb()

        return cb

    async def _setup(self) -> None:
        """Once connected: listen to instance announcements, follow the
        connection."""
        if self._set_up or self._closed:
            return
        self._set_up = True
        nc = self._nc
        assert nc is not None
        if not self._owns_nc:
            # A connection of the application: chain our check in front of
            # the callbacks it set (nats-py keeps them in these attributes).
            for attr in ("_disconnected_cb", "_reconnected_cb", "_closed_cb"):
                if hasattr(nc, attr):
                    setattr(nc, attr, self._follow(getattr(nc, attr)))
        try:
            sub = await nc.subscribe(f"{self._prefix}.instance.*", cb=self._on_instance)
            self._subs.append(sub)
        except Exception as e:  # noqa: BLE001 - e.g. no permission: live without it
            log.warning("ldlm: cannot subscribe to instance announcements: %r", e)
        try:
            prefix = nc.new_inbox() + "."
            sub = await nc.subscribe(prefix + "*")
            self._replies = _Replies.attach(sub, prefix)
            if self._replies is None:
                await sub.unsubscribe()
            else:
                self._subs.append(sub)
        except Exception as e:  # noqa: BLE001 - nc.request() will do
            log.debug("ldlm: no reply subscription of our own: %r", e)
        await self._sync_connection()

    async def _request(self, nc: NATS, subj: str, payload: bytes, timeout: float, headers: Any) -> Any:
        """nc.request(), with the replies handed over by _Replies."""
        replies = self._replies
        if replies is None:
            return await nc.request(subj, payload, timeout=timeout, headers=headers)
        token = str(next(replies.seq))
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        replies.waiting[token] = fut
        try:
            await nc.publish(subj, payload, reply=replies.prefix + token, headers=headers)
            timer = loop.call_later(timeout, _time_out, fut)
            try:
                msg = await fut
            finally:
                timer.cancel()
        finally:
            replies.waiting.pop(token, None)
        _check_responders(msg)
        return msg

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_background(self, timeout: float = DEFAULT_CLEANUP_TIMEOUT_SECONDS) -> None:
        """Wait (at most ``timeout`` seconds) for the clean-up this client
        does in the background: the withdrawals of requests given up on."""
        await asyncio.sleep(0)  # let a just-cancelled request start its withdrawal
        tasks = {t for t in self._tasks if not t.done()}
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def close(self) -> None:
        """Release the locks this client holds, stop renewing, and close the
        connection if the client opened it. Waiting lock() calls give up."""
        if self._closed:
            return
        self._closed = True
        for w in list(self._waits):
            w.interrupt()
        self._signal_epoch_change()
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
        # Closing the connection ends the session: the service frees all of
        # it, unconfirmed releases included.
        self._pending.clear()
        task = self._release_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=self._cleanup_timeout)
        if nc is not None and not nc.is_closed:
            if self._owns_nc:
                try:
                    await nc.close()
                except Exception as e:  # noqa: BLE001 - e.g. the server went away meanwhile
                    log.debug("ldlm: closing the connection: %r", e)
            else:
                for sub in [*self._subs, *self._lost_subs.values()]:
                    try:
                        await sub.unsubscribe()
                    except Exception:  # noqa: BLE001
                        pass

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close()

    def owner(self) -> Optional[str]:
        """The Ldlm-Owner value of the current connection, SERVER_ID:CLIENT_ID
        (None while disconnected, or when the server's INFO lacks either)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return None
        return owner_of(getattr(nc, "_server_info", None))

    def _current(self) -> Optional[_Epoch]:
        """The epoch to send on, if the connection is still the one it names."""
        ep = self._epoch
        nc = self._nc
        if ep is not None and nc is not None and nc.is_connected and nc._server_info is ep.info:
            return ep
        return None

    async def _sync_connection(self) -> None:
        """Compare the connection with the epoch last seen. When it dropped or
        was replaced, the epoch ends: its locks are lost (the service releases
        them with the connection) and its waiting lock() calls ask again;
        with sessions, they wait for the next epoch's attach to say what the
        service kept (see _reattach). A new epoch starts once connected,
        after subscribing to its owner's lost-lock notices (so none is
        missed)."""
        if self._conn_mu is None:
            self._conn_mu = asyncio.Lock()
        async with self._conn_mu:
            nc = self._nc
            connected = nc is not None and nc.is_connected and not self._closed
            info = getattr(nc, "_server_info", None) if connected else None
            old = self._epoch
            if old is not None and old.info is info:
                return
            if old is not None:
                self._epoch = None
                survives = old.session is not None and not self._closed and nc is not None and not nc.is_closed
                if not survives and not self._keep_on_disconnect:
                    for lock in list(self._held):
                        if lock._epoch is old:
                            lock._lose("connection-lost", "its NATS connection closed or was replaced")
                for w in list(self._waits):
                    if w.epoch is old and not survives:
                        w.interrupt()
                self._signal_epoch_change()
            if self._epoch is None and nc is not None and nc.is_closed:
                # No reconnect will come (closed, or out of reconnect
                # attempts): what the session kept for an attach is lost.
                self._settle(None, None)
            if connected and nc is not None:
                owner = owner_of(info)
                if owner is None and not self._warned_no_owner:
                    self._warned_no_owner = True
                    log.warning(
                        "ldlm: the NATS server's INFO has no %s/client_id; locks are sent without an owner"
                        " and will not be released when this process disconnects",
                        OWNER_SERVER_FIELD,
                    )
                if owner is not None and owner not in self._lost_subs:
                    try:
                        self._lost_subs[owner] = await nc.subscribe(
                            f"{self._prefix}.lost.{encode_name(owner)}", cb=self._on_lost
                        )
                    except Exception as e:  # noqa: BLE001
                        log.warning("ldlm: cannot subscribe to lost-lock notices: %r", e)
                if nc.is_connected and nc._server_info is info:
                    writer = _SocketWriter.attach(nc) if self._replies is not None else None
                    ep = _Epoch(info, owner, self._session, writer)
                    first = self._attached is None
                    self._epoch = ep
                    if first or ep.session is None:
                        self._settle(ep, None)  # nothing to attach, or no sessions: as before
                    else:
                        self._spawn(self._reattach(ep))
                    self._signal_epoch_change()
                    _small_reads(nc)
            await self._drop_lost_subs()

    # -- sessions (docs/protocol.md, "Sessions") --------------------------

    async def _reattach(self, ep: _Epoch) -> None:
        """Send the session's attach over ep, a connection that replaced
        another, and settle with its reply what earlier epochs held and
        waited for."""
        try:
            reply = await self._ask_attach(ep)
        except Exception as e:  # noqa: BLE001 - as if no service answered
            log.debug("ldlm: attach failed: %r", e)
            reply = None
        log.debug("ldlm: attach of the session over %s: %r", ep.owner, reply)
        self._settle(ep, reply)
        await self._drop_lost_subs()

    async def _ask_attach(self, ep: _Epoch) -> Optional[dict]:
        """Send PREFIX.attach over ep until it is answered, asking again
        while no service answers, it is stopping or a try times out (each
        try bounded by the request timeout, pauses from 10 ms doubling to
        1 s), for the attach budget: max(request timeout, 60 s) from now.
        A new active may not be up yet, and the service keeps the session's
        locks until the reconnect grace after it restored them, so waiting
        for an answer loses nothing (docs/protocol.md, "What a client does
        on a reconnect"). None when no usable answer came within the budget
        (a service older than sessions does not answer attach at all), when
        the service refused, or when the client closed or the connection
        changed again (the next one attaches for itself)."""
        nc = self._nc
        assert nc is not None
        subj = f"{self._prefix}.{OP_ATTACH}"
        end = time.monotonic() + max(self._request_timeout, _ATTACH_BUDGET)
        tries = 0
        while True:
            if self._closed or self._current() is not ep:
                return None
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                msg = await self._request(nc, subj, b"", min(self._request_timeout, left), ep.headers)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass
            else:
                reply = parse_attach_reply(msg.data)
                err = reply["error"]
                if err is None and reply["attached"]:
                    return reply
                if err is None or err.get("code") != "Unavailable":
                    log.warning("ldlm: the lock service refused to attach the session: %r", err)
                    return None
            pause = _pause(tries)
            tries += 1
            if time.monotonic() + pause >= end:
                break
            await asyncio.sleep(pause)
        log.warning(
            "ldlm: no lock service answered the attach of the session for %.0fs: the locks of the old connection are lost",
            max(self._request_timeout, _ATTACH_BUDGET),
        )
        return None

    def _settle(self, ep: Optional[_Epoch], reply: Optional[dict]) -> None:
        """Decide, for the current epoch ep, about the locks and lock
        requests of earlier epochs, from the attach reply (None: none came,
        or none was sent; then as without sessions). A listed lock stays
        held and a listed wait keeps waiting for its reply, both now of ep;
        the others are lost, or interrupted to be asked again. With ep None
        (the connection closed for good) everything of earlier epochs ends."""
        if self._closed or self._epoch is not ep:
            return  # a later connection settles for itself
        if ep is not None:
            self._attached = ep
        held: dict[str, str] = {}  # key → name
        waiting: set[str] = set()
        if reply is not None:
            for h in reply["held"]:
                held[h["key"]] = h["name"]
                waiting.add(h["key"])  # a wait granted meanwhile: its reply is on the way
            for w in reply["waiting"]:
                waiting.add(w["key"])
        for lock in list(self._held):
            if lock._epoch is ep:
                continue
            if reply is not None and held.get(lock.key or "") == lock.name:
                lock._epoch = ep
            elif reply is not None:
                lock._lose(
                    "connection-lost",
                    "released while disconnected: the lock service released it while the client was reconnecting",
                )
            elif not self._keep_on_disconnect:
                lock._lose("connection-lost", "its NATS connection closed or was replaced")
        for w in list(self._waits):
            if w.epoch is ep:
                continue
            if reply is not None and ep is not None and w.key in waiting:
                w.epoch = ep
            else:
                w.interrupt()
        if reply is not None and ep is not None:
            # What the session holds or waits for that nobody here knows of
            # (given up while the service did not answer, say) would stay
            # the session's for ever: release it in the background.
            known = {lock.key for lock in self._held} | {w.key for w in self._waits} | frozenset(self._asking)
            for entry in [*reply["held"], *reply["waiting"]]:
                if entry["key"] not in known:
                    self._pend_release(entry["name"], entry["key"])
        if reply is not None and not reply["resumed"]:
            self._new_session()

    def _unsettled(self, ep: Optional[_Epoch]) -> bool:
        """Whether a grant made over ep, which is not the current epoch, may
        still be kept: ep carried the session, and the current connection's
        attach has not settled yet (it will judge the grant)."""
        return ep is not None and ep.session is not None and (self._epoch is None or self._attached is not self._epoch)

    def _new_session(self) -> None:
        """Replace the session id: the service forgot the old one (and
        refuses it for a while)."""
        if self._session is None:
            return
        self._session = new_session_id()
        if self._epoch is not None:
            self._epoch.set_session(self._session)

    def _forget_session(self, headers: Optional[dict]) -> None:
        """An OwnerGone reply to a request sent with headers: if they carried
        the current session, the service released it; later requests use a
        new one."""
        if headers and self._session is not None and headers.get(HEADER_SESSION) == self._session:
            self._new_session()

    async def _drop_lost_subs(self) -> None:
        """End the lost-notice subscriptions of owners that are not the
        current connection and hold no lock (with keep_on_disconnect, locks
        taken before a reconnect keep their old owner at the service)."""
        needed = {lock._epoch.owner for lock in list(self._held) if lock._epoch is not None}
        if self._epoch is not None:
            needed.add(self._epoch.owner)
        for owner in [o for o in self._lost_subs if o not in needed]:
            sub = self._lost_subs.pop(owner)
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - a closed connection has none left
                pass

    def _signal_epoch_change(self) -> None:
        ev, self._epoch_changed = self._epoch_changed, None
        if ev is not None:
            ev.set()

    async def _epoch_for(self, wait: bool, deadline: Optional[float], name: str) -> Optional[_Epoch]:
        """The epoch to send a request on. When the connection is down it
        waits for it to come back if ``wait`` (until ``deadline``: None is
        returned then), else raises ConnectionLostError."""
        while True:
            if self._closed:
                raise nats.errors.ConnectionClosedError()
            nc = self._nc
            if nc is not None and nc.is_closed:
                raise nats.errors.ConnectionClosedError()
            await self._sync_connection()
            ep = self._current()
            if ep is not None:
                return ep
            if not wait:
                raise ConnectionLostError("not connected to NATS (reconnecting)", lock_name=name)
            pause = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if pause <= 0:
                return None
            await self._epoch_change(pause)

    async def _epoch_change(self, timeout: float) -> None:
        """Wait until the epoch changes (the connection callbacks say so), at
        most timeout seconds (a check in case a callback is missed)."""
        if self._epoch_changed is None:
            self._epoch_changed = asyncio.Event()
        await _wait_event(self._epoch_changed, timeout)

    # -- the service's notices -------------------------------------------

    async def _on_lost(self, msg: Any) -> None:
        """A lost notice ends the held lock of the same name and fencing
        token. It can be handled before the grant's reply (they come on
        different subscriptions): a notice that matches no held lock is kept
        for _register."""
        try:
            notice = json.loads(msg.data)
            name, token, reason = notice["name"], notice["token"], str(notice.get("reason") or "lost")
        except Exception:  # noqa: BLE001
            log.debug("ldlm: unreadable lost-lock notice %r", msg.data)
            return
        if not isinstance(name, str) or not name or type(token) is not int or token <= 0:
            return  # not a notice of this protocol: nothing to end
        for lock in list(self._held):
            if lock.name == name and lock.token == token:
                lock._lose(reason, f"the service says: {reason}")
                return
        self._unmatched.append((name, token, reason))

    async def _on_instance(self, msg: Any) -> None:
        try:
            notice = json.loads(msg.data)
            instance, event = notice["instance"], notice["event"]
        except Exception:  # noqa: BLE001
            log.debug("ldlm: unreadable instance notice %r", msg.data)
            return
        if not isinstance(instance, str) or not instance:
            return
        if event == "started":
            self._serves(instance, announced=True)
        elif event == "stopped":
            if instance not in self._gone:
                self._gone.append(instance)
            if self._instance == instance:
                self._instance = None
            for lock in list(self._held):
                if lock.instance == instance:
                    lock._lose("instance-gone", f"the lock service instance ({instance}) that granted it stopped")

    def _serves(self, instance: str, announced: bool) -> None:
        """The service instance serving now is `instance` (it announced its
        start, or a grant came from it). Only one instance serves a prefix and
        it keeps its locks in memory, so grants of any other instance are
        gone, and waits parked there will never be answered: they ask again.
        The first reply the client sees teaches it nothing about its waits;
        an announcement, or a change, does."""
        if instance in self._gone:
            return  # late news of an instance known to be gone
        if instance == self._instance:
            if announced and self._unsure:
                self._unsure = False
                self._interrupt_lock_waits()
            return
        if self._instance is not None or announced:
            self._interrupt_lock_waits()
        if self._instance is not None:
            self._gone.append(self._instance)
        self._unsure = self._instance is None and not announced
        self._instance = instance
        for lock in list(self._held):
            if lock.instance and lock.instance != instance:
                lock._lose("instance-gone", f"another lock service instance ({instance}) serves now")

    def _interrupt_lock_waits(self) -> None:
        for w in list(self._waits):
            w.interrupt()

    def _register(self, lock: AsyncLock, ep: _Epoch) -> Optional[str]:
        """Record a fresh grant as held, or say why not: "closed", "connection"
        (granted over a connection that is gone), "instance" (by an instance
        known to be gone). A lost notice that came before the reply makes the
        lock lost at once (it is returned, lost)."""
        if self._closed:
            return "closed"
        if not self._keep_on_disconnect and self._current() is not ep and not self._unsettled(ep):
            return "connection"
        if lock.instance and lock.instance in self._gone:
            return "instance"
        for name, token, reason in self._unmatched:
            if name == lock.name and token == lock.token:
                lock._state = _LOST
                lock.lost_error = LockLostError(
                    f"lock {lock.name!r} was lost: the service says: {reason}", reason=reason, lock_name=lock.name
                )
                return None
        if lock.instance:
            self._serves(lock.instance, announced=False)
        self._held.add(lock)
        return None

    # -- operations -------------------------------------------------------

    async def lock(
        self,
        name: str,
        wait_timeout_seconds: Optional[float] = None,
        lock_timeout_seconds: Optional[float] = None,
        size: Optional[int] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> AsyncLock:
        """Acquire ``name``, waiting while all its slots are held (at most
        ``wait_timeout_seconds``, when given; None or 0: no limit). Returns a
        falsy lock when the wait timed out. Cancelling the call gives up the
        wait race-free. While the service is stopping or nobody answers, it
        asks again within the wait timeout (for ever without one); then it
        raises :class:`~ldlm.NoServiceError` or
        :class:`~ldlm.UnavailableError`. The lock timeout counts from the
        grant (the service says how long the request waited); a grant whose
        lock timeout passed before it arrived is given back and raises
        :class:`~ldlm.LockLostError` with reason ``"expired"``."""
        return await self._acquire(OP_LOCK, name, wait_timeout_seconds, lock_timeout_seconds, size, auto_renew)

    async def try_lock(
        self,
        name: str,
        lock_timeout_seconds: Optional[float] = None,
        size: Optional[int] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> AsyncLock:
        """Acquire ``name`` only if a slot is free now; a falsy lock otherwise."""
        return await self._acquire(OP_TRYLOCK, name, None, lock_timeout_seconds, size, auto_renew)

    def lock_context(
        self,
        name: str,
        wait_timeout_seconds: Optional[float] = None,
        lock_timeout_seconds: Optional[float] = None,
        size: Optional[int] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> AsyncLockContext:
        """``async with client.lock_context(name) as lock:``: lock() on entry,
        unlock on exit (when it was obtained)."""
        return AsyncLockContext(
            lambda: self.lock(name, wait_timeout_seconds, lock_timeout_seconds, size, auto_renew=auto_renew)
        )

    def try_lock_context(
        self,
        name: str,
        lock_timeout_seconds: Optional[float] = None,
        size: Optional[int] = None,
        *,
        auto_renew: Optional[bool] = None,
    ) -> AsyncLockContext:
        """``async with client.try_lock_context(name) as lock:`` (check ``if lock:``)."""
        return AsyncLockContext(lambda: self.try_lock(name, lock_timeout_seconds, size, auto_renew=auto_renew))

    async def unlock(self, name: str, key: str) -> bool:
        """Release the grant of ``name`` that ``key`` holds (py-ldlm's
        ``Client.unlock(name, key)``); a held lock of this client with that
        key stops renewing. Returns True; raises the service's error when the
        key holds nothing (:class:`~ldlm.InvalidLockKeyError`,
        :class:`~ldlm.LockDoesNotExistError`, :class:`~ldlm.NotLockedError`),
        and :class:`~ldlm.NoServiceError` (or a timeout) when no service
        answered: the client then re-sends it in the background until one
        does."""
        for lock in list(self._held):
            if lock.name == name and lock.key == key:
                lock._end(_UNLOCKED)
                await lock._stop_watch()
        try:
            reply = await self._call(OP_UNLOCK, name, json.dumps({"key": key}))
        except Exception as e:
            if _unanswered(e):
                self._pend_release(name, key)
            raise
        err = reply.get("error")
        if err:
            raise error_from_reply(err, name)
        if not reply.get("unlocked"):
            raise UnexpectedReplyError(f"unlock reply without unlocked=true: {reply!r}", lock_name=name)
        return True

    async def renew(self, name: str, key: str, lock_timeout_seconds: float) -> AsyncLock:
        """Set the grant of ``name`` that ``key`` holds to expire
        ``lock_timeout_seconds`` from now (py-ldlm's ``Client.renew``). For a
        lock of this client that is ``lock.renew(seconds)``; for another key
        it returns a Lock describing the renewed grant (not renewed in the
        background). Raises the service's error when it refuses."""
        for lock in list(self._held):
            if lock.name == name and lock.key == key:
                return await lock.renew(lock_timeout_seconds)
        sent_at = time.monotonic()
        body = json.dumps({"key": key, "lock_timeout_seconds": lock_timeout_seconds})
        reply = await self._call(OP_RENEW, name, body)
        err = reply.get("error")
        if err:
            raise error_from_reply(err, name)
        if not reply.get("locked"):
            raise UnexpectedReplyError(f"renew reply without locked=true: {reply!r}", lock_name=name)
        return self._lock_from(reply, name, key, None, lock_timeout_seconds, False, None, sent_at)

    # -- internals --------------------------------------------------------

    def _lock_from(
        self,
        reply: dict,
        name: str,
        key: str,
        size: Optional[int],
        lock_timeout_seconds: Optional[float],
        auto_renew: bool,
        ep: Optional[_Epoch],
        sent_at: float,
    ) -> AsyncLock:
        waited = reply.get("waited_ms")
        if type(waited) not in (int, float) or not waited > 0:
            waited = 0
        return AsyncLock(
            self,
            reply.get("name") or name,
            granted=True,
            key=key,  # the key we chose and sent, which the reply repeats
            token=reply.get("token"),
            size=reply.get("size") or size,
            expires_at=reply.get("expires_at"),
            lock_timeout_seconds=lock_timeout_seconds or None,
            auto_renew=auto_renew,
            epoch=ep,
            instance=reply.get("instance"),
            sent_at=sent_at,
            waited_ms=waited,
        )

    def _no_service(self, name: str, since: float, unavailable: bool) -> Exception:
        """The error for a budget spent waiting for a lock service."""
        took = time.monotonic() - since
        if unavailable:
            return UnavailableError(
                f"the lock service on {self._prefix}.* stayed unavailable (stopping) for {took:.1f}s", lock_name=name
            )
        return NoServiceError(
            f"no lock service answered on {self._prefix}.* for {took:.1f}s: is ldlm running"
            f" (with subject prefix {self._prefix!r})?",
            lock_name=name,
        )

    async def _call(
        self,
        op: str,
        name: str,
        body: str,
        budget: Optional[float] = None,
        encoded: Optional[str] = None,
        first_try: Optional[tuple[float, bool]] = None,
    ) -> dict:
        """Send unlock or renew with the current owner and return the decoded
        reply (the service's error stays in it). While no service answers, or
        it is stopping, it retries within the budget (default: the request
        timeout, or what ``retries`` says), the last try at its end.

        ``first_try``: (when it was sent, whether the service said
        Unavailable) of a first try that a synchronous caller wrote itself
        and that nobody answered: the budget started then, and this goes on
        with the retries."""
        if self._nc is None:
            await self.connect()
        nc = self._nc
        assert nc is not None
        subj = f"{self._prefix}.{op}.{encode_name(name) if encoded is None else encoded}"
        payload = body.encode()
        start = time.monotonic() if first_try is None else first_try[0]
        end = start + (self._no_service_budget if budget is None else budget)
        tries = 0
        unavailable = False
        if first_try is not None:
            unavailable = first_try[1]
            left = end - time.monotonic()
            if left <= 0:
                raise self._no_service(name, start, unavailable)
            await asyncio.sleep(min(_pause(0), left))
            tries = 1
        while True:
            ep = self._current()
            headers = ep.headers if ep is not None else None
            timeout = max(min(self._request_timeout, end - time.monotonic()), _MIN_TIMEOUT)
            try:
                reply = _decode_reply(await self._request(nc, subj, payload, timeout, headers), name)
                err = reply.get("error")
                if not err or err.get("code") != "Unavailable":
                    return reply
                unavailable = True
            except nats.errors.NoRespondersError:
                unavailable = False
            except nats.errors.TimeoutError as e:
                if tries == 0:
                    raise
                # the budget ran out during a try after unanswered ones
                raise self._no_service(name, start, unavailable) from e
            left = end - time.monotonic()
            if left <= 0:
                raise self._no_service(name, start, unavailable)
            await asyncio.sleep(min(_pause(tries), left))
            tries += 1

    async def _acquire(
        self,
        op: str,
        name: str,
        wait_timeout_seconds: Optional[float],
        lock_timeout_seconds: Optional[float],
        size: Optional[int],
        auto_renew: Optional[bool],
        resume: Optional[_Direct] = None,
    ) -> AsyncLock:
        """lock() and try_lock(). With ``resume``, a request a synchronous
        caller sent (see _direct_acquire): its reply (or its error) is the
        outcome of the first try."""
        if self._closed and resume is None:
            raise nats.errors.ConnectionClosedError()
        if self._nc is None or not self._set_up:
            await self.connect()
        nc = self._nc
        assert nc is not None
        if lock_timeout_seconds is None:
            lock_timeout_seconds = self._lock_timeout
        renew = self._auto_renew if auto_renew is None else auto_renew
        is_lock = op == OP_LOCK
        deadline: Optional[float] = None
        if resume is not None:
            deadline = resume.wait_deadline
        elif is_lock and wait_timeout_seconds is not None and wait_timeout_seconds > 0:
            deadline = time.monotonic() + float(wait_timeout_seconds)
        subj = f"{self._prefix}.{op}.{encode_name(name)}"
        tail = _acquire_tail(is_lock, deadline, wait_timeout_seconds, lock_timeout_seconds, size)
        no_service_since: Optional[float] = None  # when nobody started answering
        unavailable = False
        retries = 0  # consecutive retries, for the pause before the next
        # While no service answers, the caller's budget: the wait timeout of
        # a lock, else the no-service budget (the request timeout, or what
        # ``retries`` says) from the first unanswered try.
        silence_bounded = deadline is None

        while True:
            first, resume = resume, None
            if first is None:
                if retries > 1 or no_service_since is not None:
                    pause = _pause(retries - 1)
                    # the last try goes at the end of the budget
                    if deadline is not None:
                        pause = min(pause, max(deadline - time.monotonic(), 0))
                    elif no_service_since is not None:
                        pause = min(pause, max(no_service_since + self._no_service_budget - time.monotonic(), 0))
                    await asyncio.sleep(pause)
                ep = self._current()
                if ep is None:
                    ep = await self._epoch_for(is_lock, deadline, name)
                    if ep is None:
                        return AsyncLock(self, name)  # the wait timed out while disconnected
                # A key of our own: if we give up before the reply, an unlock
                # with it releases a grant that raced in or cancels the wait.
                key = token_hex(16)
                if is_lock:
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left < _MIN_TIMEOUT:
                            if no_service_since is not None:
                                raise self._no_service(name, no_service_since, unavailable)
                            return AsyncLock(self, name)
                        left = max(round(left, 3), _MIN_TIMEOUT)
                        body = '{"key":"%s","wait_timeout_seconds":%r%s' % (key, left, tail)
                        timeout = left + self._wait_margin
                    else:
                        body = '{"key":"%s"%s' % (key, tail)
                        timeout = _UNLIMITED_REQUEST_TIMEOUT
                else:
                    body = '{"key":"%s"%s' % (key, tail)
                    timeout = self._request_timeout
                    if no_service_since is not None:
                        timeout = min(timeout, max(no_service_since + self._no_service_budget - time.monotonic(), _MIN_TIMEOUT))
                sent_at = time.monotonic()
                self._asking.add(key)
                wait: Optional[_Wait] = None
                if is_lock:
                    task = asyncio.current_task()
                    assert task is not None
                    wait = _Wait(task, ep, key)
                    self._waits.add(wait)
                sent_headers = ep.headers
            else:
                # sent by a synchronous caller (its wait, if any, is over;
                # an attach may have moved it to a later epoch: first.ep)
                assert first.key is not None and first.ep is not None
                key, ep, sent_at, wait = first.key, first.ep, first.sent_at, None
                sent_headers = first.headers
            try:
                if first is None:
                    msg = await self._request(nc, subj, body.encode(), timeout, sent_headers)
                else:
                    if first.error is not None:
                        raise first.error
                    msg = first.msg
                    _check_responders(msg)
            except _Interrupted:
                # A direct request's wait that may be parked where no reply
                # will come from: as for an interrupted wait below.
                await _finish(self._withdraw(name, key))
                if self._closed:
                    raise nats.errors.ConnectionClosedError() from None
                retries += 1
                continue
            except asyncio.CancelledError:
                interrupted = wait is not None and wait.interrupted and wait.task is not None and wait.task.uncancel() == 0
                # Cancelled, or the wait may be parked where no reply will
                # come from: give back whatever the service did with our key.
                await _finish(self._withdraw(name, key))
                if interrupted:
                    if self._closed:
                        raise nats.errors.ConnectionClosedError() from None
                    retries += 1
                    continue  # ask again, for the time that is left
                raise
            except nats.errors.NoRespondersError:
                # Nobody received the request: nothing to undo.
                if no_service_since is None:
                    no_service_since = sent_at
                unavailable = False
            except BaseException as e:
                # Timed out locally, interrupted: give back whatever the
                # service may have done with our key.
                await _finish(self._withdraw(name, key))
                if isinstance(e, nats.errors.TimeoutError):
                    # the epoch of the wait (a direct one's, as its reply settled it)
                    wait_ep = wait.epoch if wait is not None else (first.ep if first is not None and is_lock else None)
                    if wait_ep is not None and wait_ep is not self._current():
                        # A wait kept across a cut connection that no attach
                        # took over: no reply could come. As without sessions,
                        # the wait timeout is up (or, before it, ask again).
                        retries += 1
                        continue
                    if no_service_since is not None and silence_bounded:
                        # the budget ran out during a try after unanswered ones
                        raise self._no_service(name, no_service_since, unavailable) from e
                raise
            else:
                if wait is not None:
                    if wait.interrupted and wait.task is not None:
                        wait.task.uncancel()  # the interruption came too late to cancel the request
                    ep = wait.epoch  # an attach may have moved the wait to a later epoch
                lock = self._granted(op, name, key, ep, sent_at, size, lock_timeout_seconds, renew, msg, sent_headers)
                if lock is not None:
                    return lock
                reply = _decode_reply(msg, name)
                err = reply.get("error")
                if not err:
                    if not reply.get("locked"):
                        if is_lock:
                            await _finish(self._withdraw(name, key))
                            raise UnexpectedReplyError(f"lock reply without locked=true: {reply!r}", lock_name=name)
                        return AsyncLock(self, name)
                    lock = self._lock_from(reply, name, key, size, lock_timeout_seconds, renew, ep, sent_at)
                    if lock._expired_on_arrival():
                        # Of no use: give it back (retried in the background
                        # if unanswered), and say so as for any expiry.
                        await _finish(self._release(name, key))
                        raise LockLostError(
                            f"lock {name!r} was lost: its lock timeout ({lock_timeout_seconds}s) passed before the"
                            " grant arrived; use a longer lock timeout",
                            reason="expired",
                            lock_name=name,
                        )
                    refused = self._register(lock, ep)
                    if refused is None:
                        lock._start_watch()
                        return lock
                    # Granted over a connection that is gone (the service
                    # releases it with that connection; unlock anyway in case
                    # it has not seen that yet), by an instance that is gone,
                    # or to a client closed meanwhile.
                    await _finish(self._release(name, lock.key))
                    if refused == "closed":
                        raise nats.errors.ConnectionClosedError()
                    if is_lock:
                        retries += 1
                        continue
                    if refused == "instance":
                        raise LockLostError(
                            "granted by a lock service instance that is gone", reason="instance-gone", lock_name=name
                        )
                    raise ConnectionLostError("the NATS connection changed while the reply came", lock_name=name)
                code = err.get("code")
                if code == "LockWaitTimeout":
                    return AsyncLock(self, name)
                if code == "Unavailable":
                    # The service is stopping: the next instance will answer.
                    if no_service_since is None:
                        no_service_since = sent_at
                    unavailable = True
                else:
                    if code == "OwnerGone":
                        # The service released our session: later requests
                        # use a new one.
                        self._forget_session(sent_headers)
                    if code == "OwnerGone" and is_lock:
                        # The service saw our connection close while we
                        # waited: once we see it too, ask again over the new one.
                        await self._sync_connection()
                        if self._current() is not ep:
                            retries += 1
                            continue
                    raise error_from_reply(err, name)
            finally:
                self._asking.discard(key)
                if wait is not None:
                    self._waits.discard(wait)
            # Nobody answered, or the service is stopping: ask again within
            # the budget.
            assert no_service_since is not None
            retries += 1
            if silence_bounded and time.monotonic() - no_service_since >= self._no_service_budget:
                raise self._no_service(name, no_service_since, unavailable)

    def _granted(
        self,
        op: str,
        name: str,
        key: str,
        ep: _Epoch,
        sent_at: float,
        size: Optional[int],
        lock_timeout_seconds: Optional[float],
        renew: bool,
        msg: Any,
        sent_headers: Optional[dict[str, str]],
    ) -> Optional[AsyncLock]:
        """On the loop: the outcome of a lock or trylock reply in the cases
        that need nothing awaited: a fresh grant (registered), not granted
        (a falsy lock) or the service's error (raised). None for the others
        (nobody answered, the service is stopping, a grant that cannot be
        kept...), which _acquire handles; nothing is changed then."""
        if msg.headers and msg.headers.get(_STATUS_HEADER) == _NO_RESPONDERS_STATUS:
            return None
        reply = _decode_reply(msg, name)
        err = reply.get("error")
        if not err:
            if not reply.get("locked"):
                return None if op == OP_LOCK else AsyncLock(self, name)
            lock = self._lock_from(reply, name, key, size, lock_timeout_seconds, renew, ep, sent_at)
            if lock._expired_on_arrival() or self._register(lock, ep) is not None:
                return None
            lock._start_watch()
            return lock
        code = err.get("code")
        if code == "LockWaitTimeout":
            return AsyncLock(self, name)
        if code == "Unavailable" or (code == "OwnerGone" and op == OP_LOCK):
            return None
        if code == "OwnerGone":
            self._forget_session(sent_headers)  # the service released our session: later requests use a new one
        raise error_from_reply(err, name)

    def _direct_acquire(
        self,
        op: str,
        name: str,
        wait_timeout_seconds: Optional[float],
        lock_timeout_seconds: Optional[float],
        size: Optional[int],
        auto_renew: Optional[bool],
        done: Callable[[Any, Optional[BaseException]], None],
        proceed: Callable[[Any], None],
    ) -> Optional[_Direct]:
        """lock() or try_lock() for a synchronous caller, called on its own
        thread (not the loop's): the request is written on the connection by
        this thread (see _Direct); its reply is settled on the loop. None
        when only _acquire on the loop will do (not connected, a wait timeout
        the service is to judge, the request could not be written...):
        nothing was changed then."""
        replies, nc = self._replies, self._nc
        if replies is None or nc is None or self._closed or not self._set_up:
            return None
        is_lock = op == OP_LOCK
        wait_deadline: Optional[float] = None
        if is_lock and wait_timeout_seconds is not None:
            if type(wait_timeout_seconds) not in (int, float) or not wait_timeout_seconds > 0:
                return None
            wait_deadline = time.monotonic() + float(wait_timeout_seconds)
        ep = self._current()
        if ep is None or ep.writer is None:
            return None
        if lock_timeout_seconds is None:
            lock_timeout_seconds = self._lock_timeout
        renew = self._auto_renew if auto_renew is None else auto_renew
        subj = f"{self._prefix}.{op}.{encode_name(name)}"
        tail = _acquire_tail(is_lock, wait_deadline, wait_timeout_seconds, lock_timeout_seconds, size)
        key = token_hex(16)
        timeout: Optional[float] = self._request_timeout
        if wait_deadline is not None:
            left = max(round(wait_deadline - time.monotonic(), 3), _MIN_TIMEOUT)
            body = '{"key":"%s","wait_timeout_seconds":%r%s' % (key, left, tail)
            timeout = left + self._wait_margin
        else:
            body = '{"key":"%s"%s' % (key, tail)
            if is_lock:
                timeout = None  # waits without limit

        def settle(d: _Direct) -> None:
            if d.wait is not None:
                d.ep = d.wait.epoch  # an attach may have moved the wait to a later epoch
                self._waits.discard(d.wait)
            if d.error is None:
                assert d.ep is not None
                try:
                    lock = self._granted(op, name, key, d.ep, d.sent_at, size, lock_timeout_seconds, renew, d.msg, d.headers)
                except BaseException:
                    self._asking.discard(key)
                    raise
                if lock is not None:
                    self._asking.discard(key)
                    d.on_done(lock, None)
                    return
            d.proceed(self._acquire(op, name, wait_timeout_seconds, lock_timeout_seconds, size, renew, resume=d))

        d = _Direct(replies, settle, done, proceed)
        d.key, d.ep, d.wait_deadline = key, ep, wait_deadline

        def withdraw() -> Awaitable[None]:
            if d.wait is not None:
                self._waits.discard(d.wait)
            return _finish(self._withdraw(name, key))

        d.cleanup = withdraw
        # Ldlm-Owner and Ldlm-Session, as the loop's requests of the epoch
        d.headers, block = ep.wire
        cmd = _pub_command(subj, d.reply_to, body.encode(), block)
        replies.waiting[d.token] = d
        if is_lock:
            # interrupted (on the loop) when the connection changes (unless
            # the session keeps it: the attach after the reconnect settles
            # it) or another instance takes over, like the loop's own waits
            d.wait = _Wait(None, ep, key, d)
            self._waits.add(d.wait)
        self._asking.add(key)
        d.sent_at = time.monotonic()
        if timeout is not None:
            d.deadline = d.sent_at + timeout
        # Sent only while the epoch is still current: after a change after
        # this check, the wait registered above is interrupted, or settled by
        # the attach like the loop's own (kept if listed, else withdrawn and
        # asked again).
        if not (self._current() is ep and ep.writer.send(nc, cmd)) and d.claim():
            replies.waiting.pop(d.token, None)
            self._asking.discard(key)
            if d.wait is not None:
                self._waits.discard(d.wait)
            return None
        # (not sent, but interrupted meanwhile: what continues withdraws the key)
        return d

    async def _withdraw(self, name: str, key: str) -> None:
        """Take back a lock request we gave up on: unlock with its key, which
        releases a grant that raced in or cancels the wait.

        The first unlock is sent at once. When it cannot settle the matter,
        the client keeps trying in the background (see _keep_withdrawing):

        - "unknown key" is ambiguous until the service has read the lock
          request: a service that serves each operation on its own
          subscription can read an unlock before the lock sent just before
          it (WIRE-V2 orders them; older services do not);
        - while the connection is down, nats-py buffers what is published
          and sends it after reconnecting: the request may still reach the
          service then (and, carrying the old connection's owner name, be
          held for a connection that is not ours)."""
        nc = self._nc
        if nc is None or nc.is_closed:
            return  # nothing buffered survives a closed connection
        self._asking.discard(key)
        if self._current() is not None:
            try:
                err = await self._unlock_key(name, key, min(self._request_timeout, self._cleanup_timeout))
            except Exception as e:  # noqa: BLE001
                log.debug("ldlm: withdrawing the request for %r failed: %r", name, e)
                if _unanswered(e):
                    self._pend_release(name, key)
                    return
            else:
                if not _unknown_key(err):
                    return
        self._spawn(self._keep_withdrawing(name, key))

    async def _keep_withdrawing(self, name: str, key: str) -> None:
        reconnect_until = time.monotonic() + _WITHDRAW_RECONNECT_WAIT
        while self._current() is None:
            if self._nc is None or self._nc.is_closed:
                return
            if time.monotonic() > reconnect_until:
                self._pend_release(name, key)  # it waits for the connection
                return
            await self._epoch_change(1.0)  # told by the connection callbacks
            await self._sync_connection()
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
                if _unanswered(e) and time.monotonic() >= end:
                    self._pend_release(name, key)
                    return
            if time.monotonic() >= end:
                return
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.25)

    async def _unlock_key(self, name: str, key: str, budget: float) -> Optional[dict]:
        """Send unlock for key; the reply's error object, or None if unlocked.
        Transport errors are raised."""
        reply = await self._call(OP_UNLOCK, name, '{"key":%s}' % _key_json(key), budget)
        return reply.get("error") or None

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
            if _unanswered(e):
                self._pend_release(name, key)

    # -- releases the service did not confirm -----------------------------

    def _pend_release(self, name: str, key: Optional[str]) -> None:
        """On the loop: an unlock of key got no answer (nobody answered, the
        service kept saying it is stopping, or it timed out), so the service
        may still hold or queue it for our session, for ever without a lock
        timeout. Remember it; _release_pending re-sends it until answered.
        Nothing while closing: closing the connection frees everything."""
        if self._closed or not key or key in self._pending:
            return
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        if len(self._pending) >= _MAX_PENDING_RELEASES:
            oldest = next(iter(self._pending))
            dropped = self._pending.pop(oldest)
            log.warning(
                "ldlm: more than %d releases unconfirmed: no longer retrying the oldest (lock %r)",
                _MAX_PENDING_RELEASES,
                dropped[0],
            )
        self._pending[key] = [name, time.monotonic() + _RETRY_PAUSE, _RETRY_PAUSE]
        log.info("ldlm: the release of lock %r is not confirmed: retrying in the background", name)
        task = self._release_task
        if task is None or task.done():
            self._release_task = asyncio.get_running_loop().create_task(self._release_pending(), name="ldlm-releases")
        elif self._pending_added is not None:
            self._pending_added.set()

    async def _release_pending(self) -> None:
        """The one task that re-sends the unconfirmed releases, each until
        any answer comes (an error other than Unavailable too), with pauses
        doubling from 10 ms up to 5 s; it ends when none is left or the
        client closes."""
        if self._pending_added is None:
            self._pending_added = asyncio.Event()
        while self._pending and not self._closed:
            nc = self._nc
            if nc is None or nc.is_closed:
                self._pending.clear()  # a closed connection ended the session
                return
            if self._current() is None:
                await self._epoch_change(1.0)  # told by the connection callbacks
                await self._sync_connection()
                continue
            now = time.monotonic()
            due = [k for k, entry in self._pending.items() if entry[1] <= now][:_RELEASE_BATCH]
            if not due:
                self._pending_added.clear()
                wake = min(entry[1] for entry in self._pending.values())
                await _wait_event(self._pending_added, max(wake - now, 0.0))
                continue
            await asyncio.gather(*(self._resend_release(nc, key) for key in due))

    async def _resend_release(self, nc: NATS, key: str) -> None:
        """One try of a pending release: forgotten once answered, else
        asked again after a longer pause."""
        entry = self._pending.get(key)
        if entry is None:
            return
        name = entry[0]
        ep = self._current()
        headers = ep.headers if ep is not None else None
        subj = f"{self._prefix}.{OP_UNLOCK}.{encode_name(name)}"
        answered = False
        try:
            msg = await self._request(nc, subj, ('{"key":%s}' % _key_json(key)).encode(), self._request_timeout, headers)
            try:
                err = _decode_reply(msg, name).get("error")
            except UnexpectedReplyError:
                err = None  # an answer all the same
            answered = not (err and err.get("code") == "Unavailable")
        except Exception as e:  # noqa: BLE001 - not answered: ask again later
            log.debug("ldlm: re-sending the release of %r: %r", name, e)
        entry = self._pending.get(key)
        if entry is None:
            return
        if answered:
            del self._pending[key]
            log.info("ldlm: the release of lock %r is confirmed", name)
            return
        entry[1] = time.monotonic() + entry[2]
        entry[2] = min(2 * entry[2], _MAX_RELEASE_PAUSE)


_json_decode = json.JSONDecoder().decode


def _decode_reply(msg: Any, name: str) -> dict:
    data = msg.data
    try:
        reply: Any = _json_decode(data.decode()) if data else {}
    except ValueError:
        if data.strip():
            raise UnexpectedReplyError(f"reply is not JSON: {data[:80]!r}", lock_name=name) from None
        reply = {}
    if type(reply) is not dict:
        raise UnexpectedReplyError(f"reply is not a JSON object: {data[:80]!r}", lock_name=name)
    if not reply.get("error"):
        headers = msg.headers
        code = headers.get(HEADER_ERROR_CODE) if headers else None
        if code:
            reply["error"] = {"code": code, "message": headers.get(HEADER_ERROR, "")}
        elif not reply:
            raise UnexpectedReplyError("empty reply", lock_name=name)
    return reply
