"""One ldlm.Client shared by many threads."""

from __future__ import annotations

import threading
import time

import ldlm

THREADS = 8
ROUNDS = 15


def run_threads(target, n: int = THREADS, timeout: float = 240) -> None:
    errors: list[BaseException] = []

    def wrapped(i):
        try:
            target(i)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads did not finish in time"
    if errors:
        raise errors[0]


def test_mutual_exclusion_across_threads(client, name):
    state = {"inside": 0, "max_inside": 0, "count": 0}
    mu = threading.Lock()

    def worker(_):
        for _ in range(ROUNDS):
            lock = client.lock(name, wait_timeout_seconds=120)
            assert lock, "wait timed out"
            with mu:
                state["inside"] += 1
                state["max_inside"] = max(state["max_inside"], state["inside"])
            # an unprotected read-modify-write, protected by the LDLM lock
            n = state["count"]
            time.sleep(0.001)
            state["count"] = n + 1
            with mu:
                state["inside"] -= 1
            assert lock.unlock()

    run_threads(worker)
    assert state["max_inside"] == 1
    assert state["count"] == THREADS * ROUNDS


def test_semaphore_across_threads(client, name):
    size = 3
    state = {"inside": 0, "max_inside": 0}
    mu = threading.Lock()

    def worker(_):
        for _ in range(5):
            with client.lock_context(name, size=size, wait_timeout_seconds=120) as lock:
                assert lock
                with mu:
                    state["inside"] += 1
                    state["max_inside"] = max(state["max_inside"], state["inside"])
                time.sleep(0.005)
                with mu:
                    state["inside"] -= 1

    run_threads(worker)
    assert 1 <= state["max_inside"] <= size


def test_only_one_try_lock_wins(client, name):
    barrier = threading.Barrier(THREADS)
    wins: list[ldlm.Lock] = []
    mu = threading.Lock()

    def worker(_):
        barrier.wait(60)
        lock = client.try_lock(name)
        if lock:
            with mu:
                wins.append(lock)

    run_threads(worker)
    assert len(wins) == 1
    wins[0].unlock()


def test_auto_renew_while_threads_work(client, name):
    # renewals run on the client's loop thread while others keep it busy
    lock = client.lock(name, lock_timeout_seconds=1)
    other_names = [f"{name}-{i}" for i in range(THREADS)]

    def worker(i):
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            assert client.try_lock(other_names[i]).unlock()

    run_threads(worker)
    assert lock
    assert lock.unlock() is True
