"""Lock+unlock cycles per second of this client against plain nats-py
requests, on the same lock server, in alternating rounds.

    python bench/bench.py --url nats://127.0.0.1:4222          # a running ldlm
    python bench/bench.py --binary ./ldlm                      # starts one

Workloads (each a number of rounds of --seconds; plain and client rounds
alternate, so that a machine that gets slower or faster during the run
affects both alike):

- ``plain``: nats-py alone sends ``trylock`` (contended: ``lock``) and
  ``unlock`` requests (the owner header, a key of its own, no checks): the
  floor any client has to add its work to. nats-py has no blocking API, so
  the threads' floor is the same requests from as many asyncio tasks;
- ``aio``: ``AsyncClient.try_lock`` + ``lock.unlock()``;
- ``sync``: ``Client.try_lock`` + ``lock.unlock()`` from threads;
- ``aio-contended`` / ``sync-contended``: every worker ``lock()``s the same
  name, so each cycle waits for the previous holder.

Uncontended workers use a lock name each. The figures are cycles per second
(and the client process's CPU microseconds per cycle); the ratio is the
client's rate over plain's in the same run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional

import nats

import ldlm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDLM_")}
    env["LDLM_EMBEDDED_LISTEN"] = f"127.0.0.1:{port}"
    env["LDLM_LOG_LEVEL"] = "warn"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while True:
        try:
            with ldlm.Client(url, request_timeout_seconds=1) as c:
                c.try_lock("bench-probe").unlock()
            return proc, url
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > end:
                proc.kill()
                raise SystemExit("ldlm did not start")
            time.sleep(0.1)


class Round:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cycles = 0

    def measure(self, run: Callable[[], None]) -> tuple[float, float]:
        cpu0, t0 = time.process_time(), time.monotonic()
        run()
        cpu, took = time.process_time() - cpu0, time.monotonic() - t0
        return self.cycles / took, cpu / max(self.cycles, 1) * 1e6


# -- asyncio workloads ------------------------------------------------------


async def plain_worker(nc: Any, name: str, stop: float, r: Round, contended: bool) -> None:
    headers = {"Ldlm-Owner": f"{nc._server_info['server_id']}:{nc.client_id}"}
    op = "lock" if contended else "trylock"
    lock_subj, unlock_subj = f"ldlm.{op}.{name}", f"ldlm.unlock.{name}"
    while time.monotonic() < stop:
        key = secrets.token_hex(16)
        reply = json.loads((await nc.request(lock_subj, b'{"key":"%s"}' % key.encode(), 60, headers=headers)).data)
        if not reply.get("locked"):
            raise RuntimeError(f"plain trylock: {reply}")
        reply = json.loads((await nc.request(unlock_subj, b'{"key":"%s"}' % key.encode(), 5, headers=headers)).data)
        if not reply.get("unlocked"):
            raise RuntimeError(f"plain unlock: {reply}")
        r.cycles += 1


async def aio_worker(client: ldlm.AsyncClient, name: str, stop: float, r: Round, contended: bool) -> None:
    while time.monotonic() < stop:
        lock = await (client.lock(name) if contended else client.try_lock(name))
        if not lock:
            raise RuntimeError("aio trylock: not obtained")
        await lock.unlock()
        r.cycles += 1


def run_async(url: str, kind: str, workers: int, seconds: float) -> tuple[float, float]:
    r = Round(seconds)
    tag = secrets.token_hex(4)

    async def main() -> None:
        if kind.startswith("plain"):
            contended = kind == "plain-contended"
            nc = await nats.connect(url)
            stop = time.monotonic() + seconds
            names = [f"b-{tag}" if contended else f"b-{tag}-{i}" for i in range(workers)]
            await asyncio.gather(*(plain_worker(nc, n, stop, r, contended) for n in names))
            await nc.close()
        else:
            async with ldlm.AsyncClient(url) as client:
                contended = kind == "aio-contended"
                stop = time.monotonic() + seconds
                names = [f"b-{tag}" if contended else f"b-{tag}-{i}" for i in range(workers)]
                await asyncio.gather(*(aio_worker(client, n, stop, r, contended) for n in names))

    return r.measure(lambda: asyncio.run(main()))


# -- threads ----------------------------------------------------------------


def run_threads(url: str, kind: str, workers: int, seconds: float) -> tuple[float, float]:
    r = Round(seconds)
    tag = secrets.token_hex(4)
    mu = threading.Lock()
    contended = kind == "sync-contended"
    errors: list[BaseException] = []

    with ldlm.Client(url) as client:

        def worker(name: str, stop: float) -> None:
            n = 0
            try:
                while time.monotonic() < stop:
                    lock = client.lock(name) if contended else client.try_lock(name)
                    if not lock:
                        raise RuntimeError("sync trylock: not obtained")
                    lock.unlock()
                    n += 1
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            with mu:
                r.cycles += n

        def go() -> None:
            stop = time.monotonic() + seconds
            threads = [
                threading.Thread(target=worker, args=(f"b-{tag}" if contended else f"b-{tag}-{i}", stop))
                for i in range(workers)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        result = r.measure(go)
    if errors:
        raise errors[0]
    return result


WORKLOADS: dict[str, tuple[str, int]] = {
    "aio-1": ("aio", 1),
    "aio-64": ("aio", 64),
    "aio-contended-8": ("aio-contended", 8),
    "sync-1": ("sync", 1),
    "sync-8": ("sync", 8),
    "sync-contended-8": ("sync-contended", 8),
}


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running lock server")
    ap.add_argument("--binary", help="start this ldlm binary (embedded NATS) on a free port")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of a round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated workloads (default: all): " + ", ".join(WORKLOADS))
    args = ap.parse_args(argv)
    proc = None
    url = args.url
    if not url:
        if not args.binary:
            ap.error("give --url or --binary")
        proc, url = start_server(args.binary)
    try:
        chosen = [w for w in WORKLOADS if not args.only or w in args.only.split(",")]
        print(f"python {sys.version.split()[0]}, nats-py {importlib.metadata.version('nats-py')}, {args.rounds} rounds of {args.seconds}s")
        print(f"{'workload':18} {'plain/s':>9} {'client/s':>9} {'ratio':>6} {'plain µs CPU':>13} {'client µs CPU':>14}")
        for w in chosen:
            kind, workers = WORKLOADS[w]
            plain, client = [], []
            for _ in range(args.rounds):
                # nats-py has no blocking API: the floor for threads is the
                # same requests from asyncio tasks, one per thread
                plain.append(run_async(url, "plain-contended" if "contended" in kind else "plain", workers, args.seconds))
                if kind.startswith("sync"):
                    client.append(run_threads(url, kind, workers, args.seconds))
                else:
                    client.append(run_async(url, kind, workers, args.seconds))
            p = statistics.median(x[0] for x in plain)
            c = statistics.median(x[0] for x in client)
            pc = statistics.median(x[1] for x in plain)
            cc = statistics.median(x[1] for x in client)
            rounds = " ".join(f"{b[0] / a[0]:.2f}" for a, b in zip(plain, client))
            print(f"{w:18} {p:9.0f} {c:9.0f} {c / p:6.2f} {pc:13.0f} {cc:14.0f}   rounds: {rounds}", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
