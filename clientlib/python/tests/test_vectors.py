"""The shared wire vectors (subjects/testdata/wire-vectors.json), which the Go
and TypeScript suites run too:

- requests, names, subject tails and owner headers are sent to the real
  lock service, which must answer as the vectors say;
- replies and notices are played to this client by a scripted responder on
  a prefix of its own (on the same NATS server), and the client must do
  what the vectors say: return a lock, a falsy lock, raise the named error,
  ask again, keep or lose a held lock.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import nats
import pytest

import ldlm
from ldlm import encode_name

from conftest import REPO_ROOT, synced

VECTORS = json.loads((REPO_ROOT / "subjects" / "testdata" / "wire-vectors.json").read_text())
assert VECTORS["version"] == 1


def run(coro, timeout: float = 120):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def ids(cases: list[dict]) -> list[str]:
    return [c["name"] for c in cases]


def body_of(case: dict) -> bytes:
    body = case["body"]
    pad = case.get("pad")
    if pad:
        body += pad["char"] * pad["count"]
    return body.encode()


def error_code(msg: Any) -> Optional[str]:
    reply = json.loads(msg.data)
    return (reply.get("error") or {}).get("code")


def test_error_names_follow_the_rule():
    for code, names in VECTORS["error_codes"].items():
        assert names["python"] == code + "Error"
        cls = getattr(ldlm, names["python"])
        assert cls.CODE == code
        assert ldlm.ERRORS_BY_CODE[code] is cls
    assert set(VECTORS["error_codes"]) == set(ldlm.ERRORS_BY_CODE)


# -- against the service ------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["requests"], ids=ids(VECTORS["requests"]))
def test_request(url, case):
    if case.get("pending"):
        pytest.skip("pending: " + case["pending"])
    want = case["expect"]

    async def main():
        nc = await nats.connect(url)
        try:
            name = f"vec-{uuid.uuid4().hex}"
            msg = await nc.request(f"ldlm.{case['op']}.{name}", body_of(case), timeout=10)
            reply = json.loads(msg.data)
            code = (reply.get("error") or {}).get("code")
            if "error" in want:
                assert code == want["error"], reply
                return
            if case["op"] in ("unlock", "renew"):
                assert code == want.get("on_free_lock"), reply
                return
            assert code is None and reply["locked"], reply
            req = want["request"]
            assert reply["size"] == req.get("size", 1)
            if req.get("lock_timeout_seconds"):
                assert "expires_at" in reply
            if req.get("key"):
                assert reply["key"] == req["key"]
            unlocked = await nc.request(f"ldlm.unlock.{name}", json.dumps({"key": reply["key"]}).encode(), timeout=10)
            body = json.loads(unlocked.data)
            if req.get("lock_timeout_seconds", 60) >= 1:
                assert body["unlocked"], body
            else:  # a lock of a few milliseconds may expire before the unlock arrives
                assert body["unlocked"] or body["error"]["code"] in ("InvalidLockKey", "LockDoesNotExist"), body
        finally:
            await nc.close()

    run(main())


@pytest.mark.parametrize("case", VECTORS["names"], ids=ids(VECTORS["names"]))
def test_name(url, case):
    want = case["expect"]
    assert encode_name(case["lock_name"]) == want["token"]
    assert f"ldlm.lock.{encode_name(case['lock_name'])}" == want["subject"]

    async def main():
        async with ldlm.AsyncClient(url) as c:
            if want.get("service_error"):
                with pytest.raises(ldlm.ERRORS_BY_CODE[want["service_error"]]):
                    await c.try_lock(case["lock_name"])
                return
            lock = await c.try_lock(case["lock_name"])
            assert lock and lock.name == case["lock_name"]
            await lock.unlock()

    run(main())


@pytest.mark.parametrize("case", VECTORS["subject_tails"], ids=ids(VECTORS["subject_tails"]))
def test_subject_tail(url, case):
    want = case["expect"]

    async def main():
        nc = await nats.connect(url)
        try:
            msg = await nc.request(f"ldlm.trylock.{case['tail']}", b"", timeout=10)
            reply = json.loads(msg.data)
            if "error" in want:
                assert (reply.get("error") or {}).get("code") == want["error"], reply
                return
            assert reply["locked"] and reply["name"] == want["lock_name"], reply
            await nc.request(f"ldlm.unlock.{case['tail']}", json.dumps({"key": reply["key"]}).encode(), timeout=10)
        finally:
            await nc.close()

    run(main())


@pytest.mark.parametrize("case", VECTORS["owners"], ids=ids(VECTORS["owners"]))
def test_owner(case):
    owner = ldlm.format_owner(case["server_id"], case["client_id"])
    assert owner == case["expect"]["header"]
    assert f"{case['prefix']}.lost.{encode_name(owner)}" == case["expect"]["lost_subject"]


def test_owner_of_the_connection(client):
    nc = client.nc
    assert client.owner() == ldlm.format_owner(nc._server_info['server_id'], nc.client_id)


@pytest.mark.parametrize("case", VECTORS["owner_headers"], ids=ids(VECTORS["owner_headers"]))
def test_owner_header(url, case):
    if case.get("pending"):
        pytest.skip("pending: " + case["pending"])
    if "error" not in case["expect"]:
        # A valid header names a connection that does not exist: the service
        # would keep (and later sweep) a lock for it. Only refusals are sent.
        pytest.skip("only refused headers are sent to the service")

    async def main():
        nc = await nats.connect(url)
        try:
            msg = await nc.request(
                f"ldlm.trylock.vec-{uuid.uuid4().hex}", b"", timeout=10, headers={"Ldlm-Owner": case["header"]}
            )
            assert error_code(msg) == case["expect"]["error"]
        finally:
            await nc.close()

    run(main())


# -- replies and notices, played by a scripted responder ----------------------


class Responder:
    """Answers the requests of one client on a prefix of its own. ``script``
    maps an operation to the bodies of its successive replies (the last one
    repeats); before_reply, when set, runs before the first reply of an op."""

    def __init__(self, nc: Any, prefix: str, script: dict[str, list[str]]):
        self.nc = nc
        self.prefix = prefix
        self.script = script
        self.requests: list[tuple[str, dict]] = []
        self.before_reply: dict[str, Callable[[], Any]] = {}

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.>", cb=self.on_request)
        await synced(self.nc)

    async def on_request(self, msg: Any) -> None:
        op = msg.subject.split(".")[1]
        if op not in ("lock", "trylock", "unlock", "renew"):
            return
        body = json.loads(msg.data) if msg.data else {}
        seen = sum(1 for o, _ in self.requests if o == op)
        self.requests.append((op, body))
        replies = self.script.get(op) or []
        if not replies:
            return
        hook = self.before_reply.pop(op, None)
        if hook is not None:
            await hook()
        await msg.respond(replies[min(seen, len(replies) - 1)].encode())


def granted(name: str, token: int, instance: str = "I1") -> str:
    return json.dumps({"locked": True, "name": name, "key": "k-" + name, "token": token, "size": 1, "instance": instance})


async def scripted(url: str, script: dict[str, list[str]], listen: bool = True, **options: Any):
    prefix = f"vec{uuid.uuid4().hex[:12]}"
    server_nc = await nats.connect(url)
    responder = Responder(server_nc, prefix, script)
    if listen:
        await responder.start()
    client = ldlm.AsyncClient(url, subject_prefix=prefix, **options)
    await client.connect()
    return responder, client


def check_fields(lock: ldlm.AsyncLock, fields: dict) -> None:
    from datetime import datetime

    assert lock.name == fields["name"]
    # not "key": the client keeps the key it chose (as the Go client does)
    for attr in ("token", "size", "instance"):
        if attr in fields:
            assert getattr(lock, attr) == fields[attr], attr
    if "expires_at" in fields:
        want = datetime.fromisoformat(fields["expires_at"].replace("Z", "+00:00"))
        assert lock.expires_at == want
    if "locked" in fields and "unlocked" not in fields:
        # absent means 0 (a grant without a wait, or a renew's reply)
        assert lock.waited_ms == fields.get("waited_ms", 0), "waited_ms"


def error_class(name: str) -> type:
    return getattr(ldlm, name)


@pytest.mark.parametrize("case", VECTORS["replies"], ids=ids(VECTORS["replies"]))
def test_reply(url, case):
    want = case["expect"]
    client_want = want["client"]
    op, outcome = case["op"], client_want["outcome"]

    async def main():
        script: dict[str, list[str]] = {}
        if op in ("lock", "trylock"):
            script[op] = [case["body"]]
            if outcome == "retry":
                script[op].append(granted("job", 9))
        else:
            # a held lock first, then the case's reply to unlock or renew
            script["trylock"] = [granted("job", 17)]
            script[op] = [case["body"]]
            if outcome == "retry":
                script[op].append('{"unlocked":true,"name":"job"}')
        responder, client = await scripted(url, script)
        try:
            if op in ("lock", "trylock"):
                call = (lambda: client.lock("job")) if op == "lock" else (lambda: client.try_lock("job"))
            else:
                held = await client.try_lock("job")
                assert held
                call = held.unlock if op == "unlock" else (lambda: held.renew(30))

            if outcome in ("error", "lost"):
                with pytest.raises(ldlm.LDLMError) as info:
                    await call()
                assert type(info.value).__name__ == client_want["error_names"]["python"], info.value
                if outcome == "lost":
                    cause = client_want["cause"]
                    assert type(info.value.cause).__name__ == cause["python"]
                    assert info.value.reason == cause["reason"]
                    assert not held
                return
            result = await call()
            if outcome == "not_obtained":
                assert not result
            elif outcome in ("granted", "renewed"):
                assert result
                check_fields(result, want["fields"])
            elif outcome == "unlocked":
                assert result is True
            elif outcome == "retry":
                assert result
                assert sum(1 for o, _ in responder.requests if o == op) >= 2
            else:
                raise AssertionError(f"unknown outcome {outcome}")
        finally:
            await client.close()
            await responder.nc.close()

    run(main())


@pytest.mark.parametrize("case", VECTORS["notices"], ids=ids(VECTORS["notices"]))
def test_notice(url, case):
    held, event, want = case["held"], case["event"], case["expect"]

    async def main():
        sentinel = "sentinel-lock"
        script = {
            "trylock": [granted(held["name"], held["token"], held["instance"]), granted(sentinel, 999, held["instance"])]
        }
        responder, client = await scripted(url, script)
        owner = client.owner()

        def subject_of(ev: dict) -> str:
            tail = ev["subject"].split(".", 1)[1]
            if tail.startswith("lost."):
                tail = "lost." + encode_name(owner)
            return f"{responder.prefix}.{tail}"

        async def publish_event() -> None:
            await responder.nc.publish(subject_of(event), event["body"].encode())
            await responder.nc.flush()

        try:
            if case["timing"] == "before_reply":
                responder.before_reply["trylock"] = publish_event
            lock = await client.try_lock(held["name"])
            if case["timing"] == "before_reply":
                check_outcome(lock, want)
                return
            assert lock
            other = await client.try_lock(sentinel)
            assert other
            if event["kind"] == "reply":
                responder.script["trylock"] = [event["body"]]
                assert await client.try_lock("other")
            else:
                await publish_event()
            # A notice that ends the sentinel, sent after the event on the
            # lost subject: once it is handled, so is the event.
            notice = json.dumps({"name": sentinel, "token": 999, "reason": "force-released"})
            await responder.nc.publish(f"{responder.prefix}.lost.{encode_name(owner)}", notice.encode())
            await responder.nc.flush()
            for _ in range(2000):
                if not other and (want["action"] == "keep" or not lock):
                    break
                await asyncio.sleep(0.005)
            check_outcome(lock, want)
        finally:
            await client.close()
            await responder.nc.close()

    run(main())


def check_outcome(lock: ldlm.AsyncLock, want: dict) -> None:
    if want["action"] == "keep":
        assert lock, lock.lost_error
    else:
        assert not lock
        assert lock.lost_error is not None and lock.lost_error.reason == want["python"], lock.lost_error


def test_vectors_file_is_where_go_reads_it():
    assert (Path(REPO_ROOT) / "subjects" / "vectors_test.go").exists()


@pytest.mark.parametrize("case", VECTORS["no_service"], ids=ids(VECTORS["no_service"]))
def test_no_service(url, case):
    want = case["expect"]["client"]
    op = case["op"]

    async def main():
        script = {op: [case["every_reply"]]} if case["every_reply"] is not None else {}
        if op in ("unlock", "renew") or "answers_after_seconds" in case:
            # a held lock first, or a service that starts answering later
            script.setdefault("trylock", [granted("job", 17)])
            script.setdefault("lock", [granted("job", 17)])
            script.setdefault("unlock", ['{"unlocked":true,"name":"job"}'])
            script.setdefault("renew", [granted("job", 17)])
        # nobody answers: no subscriber at all, so NATS says "no responders"
        responder, client = await scripted(
            url, script, listen=False, request_timeout_seconds=case.get("request_timeout_seconds", 0.5)
        )
        subs = []

        async def listen():
            subs.append(await responder.nc.subscribe(f"{responder.prefix}.>", cb=responder.on_request))
            await synced(responder.nc)

        later = None
        try:
            held = None
            if op in ("unlock", "renew"):
                await listen()
                held = await client.try_lock("job", lock_timeout_seconds=60, auto_renew=False)
                assert held, "the lock held first"
                await subs.pop().unsubscribe()
                await synced(responder.nc)  # nobody answers from here on
            if case["every_reply"] is not None:
                await listen()
            if "answers_after_seconds" in case:
                later = asyncio.get_running_loop().call_later(
                    case["answers_after_seconds"], lambda: asyncio.ensure_future(listen())
                )

            async def act():
                if op == "lock":
                    return await client.lock("job", case.get("wait_timeout_seconds"))
                if op == "trylock":
                    return await client.try_lock("job")
                if op == "unlock":
                    return await held.unlock()
                return await held.renew(60)

            if want["outcome"] == "error":
                with pytest.raises(ldlm.LDLMError) as info:
                    await act()
                assert type(info.value).__name__ == want["error_names"]["python"], info.value
                if case["every_reply"] is not None:
                    assert sum(1 for o, _ in responder.requests if o == op) >= 2, "it did not ask again"
            elif want["outcome"] == "granted":
                assert await act(), "not granted once the service answered"
            elif want["outcome"] in ("unlocked", "renewed"):
                assert await act(), f"not {want['outcome']} once the service answered"
            else:
                pytest.fail(f"unknown outcome {want['outcome']}")
        finally:
            if later is not None:
                later.cancel()
            await client.close()
            await responder.nc.close()

    run(main())


# -- sessions ------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["session_headers"], ids=ids(VECTORS["session_headers"]))
def test_session_header(url, case):
    """The client's rule for a session id agrees with the service's, and the
    service answers each header as the vector says (sent with the owner of
    the sending connection, as the clients do)."""
    from ldlm.aio import HEADER_OWNER, HEADER_SESSION, is_session_id, owner_of

    valid = "error" not in case["expect"]
    assert is_session_id(case["header"]) == valid
    if valid:
        assert case["expect"]["session"] == case["header"]

    async def main():
        nc = await nats.connect(url)
        try:
            headers = {HEADER_OWNER: owner_of(nc._server_info), HEADER_SESSION: case["header"]}
            subject = f"ldlm.trylock.vec-{uuid.uuid4().hex}"
            msg = await nc.request(subject, b"", timeout=10, headers=headers)
            assert error_code(msg) == case["expect"].get("error"), msg.data
            if valid:
                reply = json.loads(msg.data)
                assert reply["locked"], reply
                unlock = subject.replace(".trylock.", ".unlock.", 1)
                body = json.dumps({"key": reply["key"]}).encode()
                msg = await nc.request(unlock, body, timeout=10, headers=headers)
                assert json.loads(msg.data).get("unlocked"), msg.data
        finally:
            await nc.close()

    run(main())


def test_client_session_ids_are_valid():
    from ldlm.aio import is_session_id, new_session_id

    ids_made = {new_session_id() for _ in range(100)}
    assert len(ids_made) == 100
    for s in ids_made:
        assert is_session_id(s) and len(s) == 32 and s == s.lower() and int(s, 16) >= 0


@pytest.mark.parametrize("case", VECTORS["attach_replies"], ids=ids(VECTORS["attach_replies"]))
def test_attach_reply_decoded(case):
    from ldlm.aio import parse_attach_reply

    reply = parse_attach_reply(case["body"].encode())
    want = case["expect"]
    assert (reply["error"] or {}).get("code") == want.get("error")
    if "fields" in want:
        for field, value in want["fields"].items():
            assert reply[field] == value, field


@pytest.mark.parametrize("api", ["async", "sync"])
@pytest.mark.parametrize("case", VECTORS["attach_replies"], ids=ids(VECTORS["attach_replies"]))
def test_attach_reply_played(bare_cluster, case, api):
    """After its server shut down, the client (reconnected to the other
    member of a cluster) gets the vector's attach reply from a scripted
    service, with the vector's keys standing for the client's own: a held
    lock it lists stays held, a wait it lists keeps waiting for the reply
    to the request already sent; the others are lost, or withdrawn and
    asked again; resumed=false makes a new session id; an error reply is
    as no reply (as before sessions). With api "sync", the synchronous
    client's threads write the trylock and the lock request on the socket
    themselves (ldlm/sync.py): the attach settles them the same way, and a
    request written after it carries the session then current."""
    from test_sessions import Service, attached_anew, until

    want = case["expect"]
    fields = want.get("fields") or {}
    ok = "error" not in want and fields.get("attached")
    vector = json.loads(case["body"])
    kept_names = {h["name"] for h in fields.get("held") or []} if ok else set()
    waiting_names = {w["name"] for w in fields.get("waiting") or []} if ok else set()

    async def main():
        cluster = bare_cluster
        prefix = f"vec{uuid.uuid4().hex[:12]}"
        svc = Service(await nats.connect(cluster.members[0].url), prefix)
        await svc.start()
        sync_client: Any = None
        if api == "sync":
            sync_client = await asyncio.to_thread(ldlm.Client, cluster.members[1].url, subject_prefix=prefix)
            client = sync_client.async_client
            assert client._epoch.writer is not None, "a plain TCP connection: callers write their requests"
        else:
            client = ldlm.AsyncClient(cluster.members[1].url, subject_prefix=prefix)
        try:
            if sync_client is None:
                await client.connect()
            await until(lambda: client.nc.discovered_servers, "the client learnt member 0")
            if sync_client is not None:
                held = await asyncio.to_thread(sync_client.try_lock, "job")
                queue = asyncio.ensure_future(asyncio.to_thread(sync_client.lock, "queue"))
            else:
                held = await client.try_lock("job")
                queue = asyncio.ensure_future(client.lock("queue"))
            assert held
            await until(lambda: svc.parked, "the lock request parked")
            keys = {"job": held.key, "queue": svc.parked[0][1]["key"]}

            def answer(svc: Service) -> str:
                body = json.loads(case["body"])
                for entry in (body.get("held") or []) + (body.get("waiting") or []):
                    entry["key"] = keys[entry["name"]]
                return json.dumps(body)

            svc.attach_body = answer
            session, before = client._session, client.owner()
            cluster.stop_member(1)
            await until(lambda: attached_anew(client, before), "the client reconnected and attached")

            attach = svc.ops("attach")
            assert len(attach) == 1 and attach[0][0] == {}, attach
            assert attach[0][1].get("Ldlm-Session") == session
            assert attach[0][1].get("Ldlm-Owner") == client.owner() != before

            if "job" in kept_names:
                assert held and held.token == 1
            else:
                assert not held
                assert held.lost_error.reason == "connection-lost"
                if ok:
                    assert "released while disconnected" in held.lost_error.message

            if "queue" in waiting_names:
                assert len(svc.ops("lock")) == 1, "a listed wait was asked again"
                msg, body = svc.parked[0]
                await msg.respond(json.dumps({"locked": True, "name": "queue", "key": body["key"], "token": 7}).encode())
                got = await asyncio.wait_for(queue, 30)
                assert got and got.token == 7 and got.key == keys["queue"]
            else:
                await until(lambda: len(svc.ops("lock")) == 2, "the wait withdrawn and asked again")
                assert any(b.get("key") == keys["queue"] for b, _ in svc.ops("unlock")), "not withdrawn"
                if sync_client is not None:
                    # a thread cannot be cancelled: grant the request asked again
                    msg, body = svc.parked[-1]
                    await msg.respond(json.dumps({"locked": True, "name": "queue", "key": body["key"], "token": 8}).encode())
                    got = await asyncio.wait_for(queue, 30)
                    assert got and got.token == 8 and got.key != keys["queue"]
                else:
                    queue.cancel()
                    await asyncio.gather(queue, return_exceptions=True)

            resumed = ok and vector.get("resumed")
            if ok and not resumed:
                assert client._session != session and len(client._session) == 32
            else:
                assert client._session == session
            later = svc.ops("lock")[-1][1].get("Ldlm-Session")
            assert later == client._session
            if sync_client is not None:
                assert await asyncio.to_thread(sync_client.try_lock, "after")
                after = svc.ops("trylock")[-1][1]
                assert after.get("Ldlm-Session") == client._session
                assert after.get("Ldlm-Owner") == client.owner()
        finally:
            if sync_client is not None:
                await asyncio.to_thread(sync_client.close)
            else:
                await client.close()
            await svc.nc.close()

    run(main())
