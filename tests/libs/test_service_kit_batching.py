"""MicroBatcher: concurrent submissions share model calls, results go back to the right caller,
failures reach every waiter, and nothing waits when there is nothing to wait for."""

from __future__ import annotations

import threading
import time

import pytest

from service_kit.batching import BatchDeadlineExceeded, BatcherOverloaded, MicroBatcher


class SlowDoubler:
    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds
        self.batches: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        time.sleep(self.seconds)
        return [2 * item for item in items]


def test_a_lone_request_goes_at_once():
    model = SlowDoubler(0.0)
    batcher = MicroBatcher(model)
    started = time.monotonic()
    assert batcher.submit([21], timeout=5) == [42]
    assert time.monotonic() - started < 0.05
    assert model.batches == [[21]]


def test_concurrent_requests_are_answered_by_fewer_larger_calls():
    model = SlowDoubler(0.05)
    sizes: list[int] = []
    batcher = MicroBatcher(model, max_batch_size=16, observe_batch_size=sizes.append)
    answers: dict[int, list[int]] = {}

    def caller(n: int) -> None:
        answers[n] = batcher.submit([n, n + 1000], timeout=10)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {n: [2 * n, 2 * (n + 1000)] for n in range(40)}
    assert sum(sizes) == 80 and max(sizes) <= 16
    assert len(model.batches) < 20, f"{len(model.batches)} calls for 80 items"


def test_a_failed_call_fails_each_of_its_requests_and_the_batcher_recovers():
    calls = []

    def flaky(items):
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("model server hiccup")
        return items

    batcher = MicroBatcher(flaky)
    with pytest.raises(ValueError, match="hiccup"):
        batcher.submit([1, 2], timeout=5)
    assert batcher.submit([3], timeout=5) == [3]


def test_wrong_result_count_is_an_error_not_a_mixup():
    batcher = MicroBatcher(lambda items: items[:-1])
    with pytest.raises(RuntimeError, match="results for"):
        batcher.submit([1, 2], timeout=5)


def test_timeout_when_the_model_never_answers():
    release = threading.Event()
    batcher = MicroBatcher(lambda items: release.wait(10) and items)
    with pytest.raises(BatchDeadlineExceeded):
        batcher.submit([1], timeout=0.1)
    release.set()


def blocked_batcher(max_queued: int = 1024) -> tuple[MicroBatcher, list[list[int]], threading.Event]:
    """A batcher whose first model call waits for `release`: what queues meanwhile stays queued."""
    calls: list[list[int]] = []
    release = threading.Event()

    def run_batch(items: list[int]) -> list[int]:
        calls.append(list(items))
        release.wait(10)
        return items

    batcher = MicroBatcher(run_batch, max_queued=max_queued)
    threading.Thread(target=batcher.submit, args=([1], 10), daemon=True).start()
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    assert calls == [[1]], "the first call is in flight"
    return batcher, calls, release


def test_a_request_that_gave_up_is_never_sent_to_the_model():
    batcher, calls, release = blocked_batcher()
    with pytest.raises(BatchDeadlineExceeded):
        batcher.submit([2, 3], timeout=0.05)  # waits behind the blocked call, then gives up
    release.set()
    assert batcher.submit([4], timeout=5) == [4]
    assert calls == [[1], [4]], "2 and 3 were dropped before the call"


def test_a_full_queue_refuses_at_once_and_keeps_nothing_of_the_refused_request():
    batcher, calls, release = blocked_batcher(max_queued=2)
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(batcher.submit([2, 3], timeout=10)))
    waiter.start()
    deadline = time.monotonic() + 5
    while batcher._queue.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    started = time.monotonic()
    with pytest.raises(BatcherOverloaded):
        batcher.submit([5], timeout=10)
    assert time.monotonic() - started < 0.5, "refused at once, not after waiting"
    release.set()
    waiter.join(5)
    assert answers == [[2, 3]]
    assert 5 not in [item for call in calls for item in call]
