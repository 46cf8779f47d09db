"""The shared batch scheduler: fewer, larger model calls with TF Serving's semantics."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from model_preprocessing.text import pad_batch, segment
from model_server.batching import BatchScheduler
from model_server.config import BatchingParameters
from model_server.core import ServerCore
from model_server.errors import ServingError
from model_server.monitoring import METRICS
from model_server.servable import Servable
from model_server.tensors import MAX_REQUEST_BYTES, decoded_bytes
from tests.conftest import MODEL_REPOSITORY, wait_until


class RecordingModel:
    """Doubles its input and remembers each call's batch size; slow enough for queues to form."""

    def __init__(self, delay: float = 0.02):
        self.delay = delay
        self.calls: list[int] = []
        self.seen: list[dict[str, np.ndarray]] = []

    def __call__(self, inputs):
        self.calls.append(len(inputs["x"]))
        self.seen.append(inputs)
        time.sleep(self.delay)
        return {"y": inputs["x"] * 2}


def submit_concurrently(scheduler, model, values: list[np.ndarray]) -> list[np.ndarray]:
    with ThreadPoolExecutor(len(values)) as pool:
        futures = list(pool.map(lambda v: scheduler.submit("m", model, {"x": v}), values))
        return [f.result(timeout=10)["y"] for f in futures]


def test_concurrent_requests_share_model_calls():
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=16, batch_timeout_micros=5000, num_batch_threads=1))
    model = RecordingModel()
    try:
        values = [np.array([[i, i + 1]], dtype=np.float32) for i in range(48)]
        results = submit_concurrently(scheduler, model, values)
    finally:
        scheduler.stop()
    for value, result in zip(values, results):
        np.testing.assert_array_equal(result, value * 2)  # each caller gets its own rows back
    assert sum(model.calls) == 48
    assert len(model.calls) <= 12, model.calls  # 48 requests, far fewer model calls
    assert max(model.calls) <= 16


def test_task_larger_than_max_batch_is_invalid_argument():
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=4))
    try:
        with pytest.raises(ServingError) as caught:
            scheduler.submit("m", RecordingModel(), {"x": np.zeros((5, 1))})
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        scheduler.stop()


def test_full_queue_is_unavailable_at_once():
    release = threading.Event()

    def blocked(inputs):
        release.wait(10)
        return {"y": inputs["x"]}

    scheduler = BatchScheduler(BatchingParameters(max_batch_size=1, max_enqueued_batches=2, num_batch_threads=1))
    try:
        first = scheduler.submit("m", blocked, {"x": np.zeros((1, 1))})
        time.sleep(0.1)  # the thread has taken the first batch and is stuck in it
        queued = [scheduler.submit("m", blocked, {"x": np.zeros((1, 1))}) for _ in range(2)]
        started = time.monotonic()
        with pytest.raises(ServingError) as caught:
            scheduler.submit("m", blocked, {"x": np.zeros((1, 1))})
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 0.5
        release.set()
        for future in [first, *queued]:
            future.result(timeout=10)
    finally:
        release.set()
        scheduler.stop()


def test_variable_length_inputs_are_padded_with_the_first_element():
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=50000,
                                                  pad_variable_length_inputs=True))
    model = RecordingModel(delay=0)
    try:
        short, long = np.array([[b"a"]], dtype=object), np.array([[b"b", b"c", b"d"]], dtype=object)
        results = submit_concurrently(scheduler, model, [short, long])
    finally:
        scheduler.stop()
    merged = model.seen[0]["x"]
    assert merged.shape == (2, 3)
    assert list(merged[0]) == [b"a", b"a", b"a"]
    assert results[1].tolist() == [[b"bb", b"cc", b"dd"]]


def test_a_batch_never_grows_past_the_request_limit_once_padded():
    """Issue 33: one long text padded its 63 short batch-mates to its length, a merged batch over
    MAX_REQUEST_BYTES though each request was under it. The long one now starts a batch of its own."""
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=64, batch_timeout_micros=100_000,
                                                  pad_variable_length_inputs=True, num_batch_threads=1))
    model = RecordingModel(delay=0)
    short = np.array([[b"a", b"b"]], dtype=object)
    long = np.full((1, 20_000), b"x", dtype=object)  # 0.7 MB decoded; 64 rows of it would be 42 MB
    assert decoded_bytes(long) < MAX_REQUEST_BYTES < 64 * decoded_bytes(long)
    try:
        futures = [scheduler.submit("m", model, {"x": value}) for value in [short] * 32 + [long] + [short] * 31]
        results = [future.result(timeout=10)["y"] for future in futures]
    finally:
        scheduler.stop()
    assert results[32].shape == (1, 20_000) and all(r[0, :2].tolist() == [b"aa", b"bb"] for r in results[:32])
    assert sum(model.calls) == 64 and len(model.calls) > 1
    assert max(decoded_bytes(seen["x"]) for seen in model.seen) <= MAX_REQUEST_BYTES


def test_variable_length_inputs_without_padding_fail_clearly():
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=50000))
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = list(pool.map(lambda v: scheduler.submit("m", RecordingModel(0), {"x": v}),
                                    [np.zeros((1, 1)), np.zeros((1, 3))]))
        with pytest.raises(ServingError, match="padding is turned off"):
            for future in futures:
                future.result(timeout=10)
    finally:
        scheduler.stop()


def test_allowed_batch_sizes_pad_the_batch_and_trim_the_answer():
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, allowed_batch_sizes=(4, 8)))
    model = RecordingModel(delay=0)
    try:
        result = scheduler.submit("m", model, {"x": np.ones((3, 2))}).result(timeout=10)
    finally:
        scheduler.stop()
    assert model.calls == [4]
    assert result["y"].shape == (3, 2)


def test_batched_lstm_answers_equal_unbatched_ones():
    """Through the real SavedModel: merging and padding sentences of different lengths
    changes no answer."""
    servable = Servable("lstm", 1, MODEL_REPOSITORY / "lstm" / "1")
    sentences = ["这本书写得太好了，强烈推荐", "房间很脏", "服务态度差，再也不来了", "好", "物流快，包装完整，很满意"]
    alone = [servable.run("", dict(zip(("words", "nwords"), pad_batch([segment(s)])))) for s in sentences]
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=50000,
                                                  pad_variable_length_inputs=True))
    try:
        with ThreadPoolExecutor(len(sentences)) as pool:
            futures = list(pool.map(
                lambda s: scheduler.submit("lstm", lambda b: servable.run("", b),
                                           dict(zip(("words", "nwords"), pad_batch([segment(s)])))),
                sentences,
            ))
            batched = [f.result(timeout=30) for f in futures]
    finally:
        scheduler.stop()
    assert sum(scheduler.batch_size_counts.values()) < len(sentences)
    for single, together in zip(alone, batched):
        assert single["labels"].tolist() == together["labels"].tolist()
        np.testing.assert_allclose(single["softmax"], together["softmax"], atol=1e-5)


def expired_count(model: str) -> float:
    text = METRICS.exposition()
    found = re.search(rf'model_server_batching_expired_tasks_total{{model_name="{model}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


class BlockedModel(RecordingModel):
    """Holds the batch thread in its first call until released."""

    def __init__(self):
        super().__init__(delay=0)
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, inputs):
        self.entered.set()
        self.release.wait(10)
        return super().__call__(inputs)


@pytest.mark.parametrize("give_up", ["deadline", "cancel"])
def test_a_task_whose_caller_gave_up_is_dropped_not_run(give_up):
    """Its caller already answered DEADLINE_EXCEEDED: running it would only delay the others."""
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=1, num_batch_threads=1))
    model, name = BlockedModel(), f"expiring-{give_up}"
    try:
        first = scheduler.submit("m", model, {"x": np.zeros((1, 1))}, model=name)
        assert model.entered.wait(10)  # the only thread is busy with the first task
        deadline = time.monotonic() + 0.05 if give_up == "deadline" else None
        abandoned = scheduler.submit("m", model, {"x": np.ones((1, 1))}, deadline=deadline, model=name)
        waiting = scheduler.submit("m", model, {"x": np.full((1, 1), 2.0)}, model=name)
        if give_up == "cancel":
            assert abandoned.cancel()
        time.sleep(0.1)
        model.release.set()
        first.result(timeout=10)
        assert waiting.result(timeout=10)["y"].tolist() == [[4.0]]
        assert abandoned.cancelled()
    finally:
        model.release.set()
        scheduler.stop()
    assert model.calls == [1, 1], "the abandoned task was run"
    assert expired_count(name) == 1


def test_the_core_gives_up_a_queued_task_when_its_caller_times_out():
    core = ServerCore(batching=BatchingParameters(max_batch_size=1, num_batch_threads=1))
    model = BlockedModel()

    class FakeServable:
        name = "core-expiry"
        batching = None  # the server's parameters

        def run(self, signature_name, inputs):
            return model(inputs)

    servable = FakeServable()
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(core._run, servable, "", {"x": np.zeros((1, 1))}, None)
            assert model.entered.wait(10)
            with pytest.raises(ServingError) as caught:
                core._run(servable, "", {"x": np.ones((1, 1))}, 0.05)
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            model.release.set()
            first.result(timeout=10)
        wait_until(lambda: expired_count("core-expiry") == 1, 5, "the abandoned task to be dropped")
    finally:
        model.release.set()
        core.stop()
    assert model.calls == [1]
