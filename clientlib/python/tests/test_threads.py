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



def test_a_thread_away_from_the_loop_holds_up_nobody(client, make_client, name):
    """A thread whose call ends while it runs the loop lets the loop go
    (to a waiting caller, or to nobody until the next call: either way).
    While it stays away, a grant for another thread's waiting lock(), a call
    from a thread that cannot run the loop (it runs an asyncio loop of its
    own) and a lock's renewals are still handled promptly."""
    import asyncio

    holder = make_client()
    held_a = holder.lock(name)
    held_b = holder.lock(name + "-b")
    got: dict[str, float] = {}

    def waiter():
        lock = client.lock(name + "-b", wait_timeout_seconds=30)
        got["b"] = time.monotonic()
        assert lock
        assert lock.unlock()

    t = threading.Thread(target=waiter)
    threading.Timer(0.3, t.start).start()  # while this thread runs the loop in lock()
    threading.Timer(0.8, held_a.unlock).start()
    renewed = client.lock(name, lock_timeout_seconds=1, wait_timeout_seconds=30)
    assert renewed
    released = time.monotonic()
    held_b.unlock()  # the grant for the other thread comes while this one is away
    t.join(10)
    assert not t.is_alive()
    assert got["b"] - released < 1.0, f"the waiting thread's grant came {got['b'] - released:.3f}s late"

    async def from_a_loop():
        return client.try_lock(name + "-c")

    start = time.monotonic()
    lock = asyncio.run(from_a_loop())  # cannot run the client's loop itself
    assert lock
    assert time.monotonic() - start < 1.0
    assert lock.unlock()

    time.sleep(2.5)  # nobody inside: the 1 s lock is renewed meanwhile
    assert renewed.unlock() is True
