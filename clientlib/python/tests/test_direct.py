"""Requests that a Client's calling threads write on the connection
themselves (ldlm/sync.py; _Direct in ldlm/aio.py): when no reply comes, they
time out like the loop's own requests and withdraw what they asked for, both
from the thread that runs the event loop and from threads that wait while
another one runs it."""

from __future__ import annotations

import asyncio
import json
import threading

import nats
import nats.errors
import pytest

import ldlm
from conftest import deadline_poll, synced
from test_threads import run_threads


class SilentService:
    """Receives the requests of a subject prefix on a connection of its own
    and never answers; records (operation, key) of each."""

    def __init__(self, url: str, prefix: str):
        self.seen: list[tuple[str, str]] = []
        self.mu = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> None:
            self.nc = await nats.connect(url)

            async def record(msg) -> None:
                with self.mu:
                    self.seen.append((msg.subject.split(".")[1], json.loads(msg.data)["key"]))

            await self.nc.subscribe(f"{prefix}.>", cb=record)
            await synced(self.nc)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def keys(self, op: str) -> set[str]:
        with self.mu:
            return {key for o, key in self.seen if o == op}

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.mark.parametrize(
    "op, threads",
    [("trylock", 1), ("trylock", 3), ("lock", 1), ("lock", 3)],
)
def test_unanswered_requests_time_out_and_are_withdrawn(url, name, op, threads):
    prefix = "silent-" + name.replace(".", "-")
    service = SilentService(url, prefix)
    client = ldlm.Client(
        url,
        subject_prefix=prefix,
        request_timeout_seconds=0.5,
        wait_margin_seconds=0.3,
        cleanup_timeout_seconds=0.5,
    )
    try:
        # a plain TCP connection: calls are written by their own threads
        assert client.async_client._epoch.writer is not None
        outcomes: list[BaseException] = []

        def call(i: int) -> None:
            try:
                if op == "trylock":
                    client.try_lock(f"{name}-{i}")
                else:
                    client.lock(f"{name}-{i}", wait_timeout_seconds=0.2)
            except nats.errors.TimeoutError as e:
                outcomes.append(e)

        run_threads(call, threads, timeout=60)
        assert len(outcomes) == threads
        asked = service.keys(op)
        assert len(asked) == threads
        deadline_poll(lambda: asked <= service.keys("unlock"), 10, what="the withdrawals of the unanswered requests")
    finally:
        client.close()
        service.close()


def test_close_while_a_request_waits_for_its_reply(url, name):
    """A caller whose request waits for a reply that will not come (running
    the event loop meanwhile, as the only caller) still gets its outcome, the
    request's timeout, when the client is closed meanwhile; close() returns."""
    prefix = "silent-" + name.replace(".", "-")
    service = SilentService(url, prefix)
    client = ldlm.Client(url, subject_prefix=prefix, request_timeout_seconds=1.0, cleanup_timeout_seconds=0.5)
    outcomes: list[BaseException] = []

    def call(_: int) -> None:
        try:
            client.try_lock(name)
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as e:
            outcomes.append(e)

    try:
        caller = threading.Thread(target=call, args=(0,))
        caller.start()
        deadline_poll(lambda: service.keys("trylock"), 10, what="the request")
        client.close()
        caller.join(30)
        assert not caller.is_alive(), "the caller got no outcome"
        assert len(outcomes) == 1
    finally:
        client.close()
        service.close()
