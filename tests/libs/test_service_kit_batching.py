"""MicroBatcher: concurrent submissions share model calls, results go back to the right caller,
failures reach every waiter, and nothing waits when there is nothing to wait for."""

from __future__ import annotations

import threading
import time

import pytest

from service_kit.batching import MicroBatcher


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
    with pytest.raises(TimeoutError):
        batcher.submit([1], timeout=0.1)
    release.set()
