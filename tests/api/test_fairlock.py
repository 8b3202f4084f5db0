"""The worker's first-come, first-served lock: waiters get it in the order they asked."""

from __future__ import annotations

import threading
import time

import pytest

from immunostrat.api.fairlock import FairLock


def test_waiters_acquire_in_the_order_they_asked() -> None:
    lock = FairLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for i in range(8):
        t = threading.Thread(target=lambda i=i: _take(lock, order, i))
        t.start()
        threads.append(t)
        time.sleep(0.02)  # let each one queue before the next asks
    lock.release()
    for t in threads:
        t.join(5)
    assert order == list(range(8))


def test_one_holder_at_a_time_and_an_unheld_release_is_an_error() -> None:
    lock = FairLock()
    inside = 0
    most = 0

    def work() -> None:
        nonlocal inside, most
        for _ in range(200):
            with lock:
                inside += 1
                most = max(most, inside)
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == 1
    with pytest.raises(RuntimeError, match="unheld"):
        lock.release()


def _take(lock: FairLock, order: list[int], i: int) -> None:
    with lock:
        order.append(i)
