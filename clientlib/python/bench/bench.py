"""Lock+unlock cycles per second of this client, side by side with plain
nats-py requests on the same ldlm and (optionally) py-ldlm, the original
LDLM's gRPC client, on go-ldlm, the original server; in interleaved rounds.

    python bench/bench.py --url nats://127.0.0.1:4222          # a running ldlm
    python bench/bench.py --binary ./ldlm                      # starts one
    python bench/bench.py --url ... --pyldlm-address 127.0.0.1:3144 \\
        --pyldlm-python /path/to/venv-with-py-ldlm/bin/python

Every round of every column runs in a process of its own (py-ldlm's package
is also called ``ldlm``, so it lives in another environment: give the Python
that has it with ``--pyldlm-python``). A round starts the client, then
measures ``--seconds`` of cycles and the CPU time the process spent on them
(all its threads: the sync client's loop thread, gRPC's threads). The
columns of one round run one after the other, in an order that rotates from
round to round, so that a machine that gets slower or faster during the run
affects all alike. The figure of a column is the median of its rounds; the
ratios are taken between the medians of the same run.

Workloads:

- ``sync-1``, ``sync-8``: ``Client.try_lock`` + ``lock.unlock()`` from 1 or 8
  threads, a lock name each; ``sync-contended-8``: 8 threads ``lock()`` one
  name, so each cycle waits for the previous holder;
- ``aio-1``, ``aio-64``: ``AsyncClient.try_lock`` + ``unlock`` from 1 or 64
  tasks; ``aio-contended-8``: 8 tasks ``lock()`` one name.

The ``plain`` column is nats-py alone sending ``trylock`` (contended:
``lock``) and ``unlock`` requests (the owner header, a key of its own, no
checks): the floor any client adds its work to. nats-py has no blocking
API, so for the threads' workloads the floor is the same requests from as
many asyncio tasks. py-ldlm runs the same workload with its own ``Client``
(threads) or ``AsyncClient`` (tasks).
"""

from __future__ import annotations

import argparse
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary: str) -> tuple[subprocess.Popen, str]:
    import ldlm

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


# -- one round, in a process of its own -------------------------------------


class Round:
    """Counts cycles; measure() times the part after the clients are set up."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cycles = 0
        self.cpu0 = self.t0 = 0.0

    def start(self) -> float:
        """Start the clock; returns when the workers stop."""
        self.cpu0, self.t0 = time.process_time(), time.monotonic()
        return self.t0 + self.seconds

    def result(self) -> dict:
        cpu, took = time.process_time() - self.cpu0, time.monotonic() - self.t0
        return {"rate": self.cycles / took, "cpu_us": cpu / max(self.cycles, 1) * 1e6}


def import_ldlm(column: str) -> Any:
    """This client, or py-ldlm's package of the same name."""
    import importlib.metadata

    import ldlm

    try:
        importlib.metadata.version("py-ldlm")
        is_pyldlm = ldlm.Client.__module__ == "ldlm.client"
    except importlib.metadata.PackageNotFoundError:
        is_pyldlm = False
    if is_pyldlm != (column == "py-ldlm"):
        raise SystemExit(f"bench: the {column} column imported the wrong ldlm package ({ldlm.__file__})")
    return ldlm


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


async def aio_worker(client: Any, name: str, stop: float, r: Round, contended: bool) -> None:
    # the same calls for this client and py-ldlm: lock(name), try_lock(name), unlock()
    while time.monotonic() < stop:
        lock = await (client.lock(name) if contended else client.try_lock(name))
        if not lock:
            raise RuntimeError("aio trylock: not obtained")
        await lock.unlock()
        r.cycles += 1


def run_async(column: str, address: str, workers: int, contended: bool, seconds: float) -> dict:
    r = Round(seconds)
    tag = secrets.token_hex(4)
    names = [f"b-{tag}" if contended else f"b-{tag}-{i}" for i in range(workers)]

    async def main() -> None:
        if column == "plain":
            import nats

            nc = await nats.connect(address)
            stop = r.start()
            await asyncio.gather(*(plain_worker(nc, n, stop, r, contended) for n in names))
            await nc.close()
            return
        ldlm = import_ldlm(column)
        client = ldlm.AsyncClient(address)
        if column == "client":
            await client.connect()
        else:  # py-ldlm: connects on first use; do that before the clock starts
            await (await client.try_lock(f"b-{tag}-probe")).unlock()
        stop = r.start()
        await asyncio.gather(*(aio_worker(client, n, stop, r, contended) for n in names))
        await client.close()

    asyncio.run(main())
    return r.result()


def run_threads(column: str, address: str, workers: int, contended: bool, seconds: float) -> dict:
    if column == "plain":  # nats-py has no blocking API: the same requests from tasks
        return run_async(column, address, workers, contended, seconds)
    ldlm = import_ldlm(column)

    r = Round(seconds)
    tag = secrets.token_hex(4)
    mu = threading.Lock()
    errors: list[BaseException] = []
    client = ldlm.Client(address)
    client.try_lock(f"b-{tag}-probe").unlock()  # connected before the clock starts
    ready = threading.Barrier(workers + 1)
    stop = 0.0

    def worker(name: str) -> None:
        n = 0
        try:
            ready.wait()
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

    threads = [threading.Thread(target=worker, args=(f"b-{tag}" if contended else f"b-{tag}-{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    stop = r.start()
    ready.wait()
    for t in threads:
        t.join()
    result = r.result()
    client.close()
    if errors:
        raise errors[0]
    return result


WORKLOADS: dict[str, tuple[str, int, bool]] = {
    "sync-1": ("sync", 1, False),
    "sync-8": ("sync", 8, False),
    "sync-contended-8": ("sync", 8, True),
    "aio-64": ("aio", 64, False),
    "aio-1": ("aio", 1, False),
    "aio-contended-8": ("aio", 8, True),
}


def worker_main(column: str, address: str, workload: str, seconds: float) -> None:
    kind, workers, contended = WORKLOADS[workload]
    run = run_threads if kind == "sync" else run_async
    print(json.dumps(run(column, address, workers, contended, seconds)), flush=True)


# -- the run ------------------------------------------------------------------


def one_round(python: str, column: str, address: str, workload: str, seconds: float) -> dict:
    env = dict(os.environ)
    if column == "py-ldlm":
        env.pop("PYTHONPATH", None)  # py-ldlm's "ldlm", not this one
    out = subprocess.run(
        [python, os.path.abspath(__file__), "--worker", column, "--address", address, "--only", workload, "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        check=True,
        timeout=seconds + 120,
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running ldlm")
    ap.add_argument("--binary", help="start this ldlm binary (embedded NATS) on a free port")
    ap.add_argument("--pyldlm-address", help="host:port of a running go-ldlm server: adds the py-ldlm column")
    ap.add_argument("--pyldlm-python", default=sys.executable, help="a Python with py-ldlm installed (default: this one)")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of a round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated workloads (default: all): " + ", ".join(WORKLOADS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.address, args.only, args.seconds)
        return
    proc = None
    url = args.url
    if not url:
        if not args.binary:
            ap.error("give --url or --binary")
        proc, url = start_server(args.binary)
    import importlib.metadata

    columns = [("client", sys.executable, url), ("plain", sys.executable, url)]
    if args.pyldlm_address:
        columns.append(("py-ldlm", args.pyldlm_python, args.pyldlm_address))
    try:
        chosen = [w for w in WORKLOADS if not args.only or w in args.only.split(",")]
        print(
            f"python {sys.version.split()[0]}, nats-py {importlib.metadata.version('nats-py')}, "
            f"{args.rounds} interleaved rounds of {args.seconds}s; cycles/s (median), ratios of medians, CPU µs per cycle"
        )
        head = f"{'workload':17} {'client/s':>9} {'plain/s':>9}"
        if args.pyldlm_address:
            head += f" {'py-ldlm/s':>9} {'vs py-ldlm':>10}"
        head += f" {'vs plain':>8} {'client µs':>9} {'plain µs':>8}"
        if args.pyldlm_address:
            head += f" {'py-ldlm µs':>10}"
        print(head, flush=True)
        for w in chosen:
            results: dict[str, list[dict]] = {c[0]: [] for c in columns}
            for i in range(args.rounds):
                order = columns[i % len(columns):] + columns[: i % len(columns)]
                for column, python, address in order:
                    results[column].append(one_round(python, column, address, w, args.seconds))
            med = {c: statistics.median(x["rate"] for x in rs) for c, rs in results.items()}
            cpu = {c: statistics.median(x["cpu_us"] for x in rs) for c, rs in results.items()}
            line = f"{w:17} {med['client']:9.0f} {med['plain']:9.0f}"
            if args.pyldlm_address:
                line += f" {med['py-ldlm']:9.0f} {med['client'] / med['py-ldlm']:9.2f}×"
            line += f" {med['client'] / med['plain']:7.2f}× {cpu['client']:9.0f} {cpu['plain']:8.0f}"
            if args.pyldlm_address:
                line += f" {cpu['py-ldlm']:10.0f}"
            print(line, flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
