"""Coalescing concurrent requests of one worker into one model call.

A gevent worker holds hundreds of requests at once; sending each as its own Predict costs a gRPC
round trip and a model-server dispatch per sentence. Here each request hands its examples to a
queue and waits; a batcher loop takes everything queued (up to `max_batch_size`), makes ONE call,
and hands each request its rows. Nothing waits on purpose: a lone request goes out at once, and
requests that arrive while a call is in flight go together in the next one.

Limits: the queue holds at most `max_queued` items; past that a request is refused at once
(`BatcherOverloaded`, a 503 with Retry-After) instead of queueing work nobody will wait for. A
request that gives up waiting (`BatchDeadlineExceeded`, a 504) leaves its items behind marked
abandoned, and the loop drops them before the model call.

It uses `threading` and `queue`, which gevent's monkey-patching turns into greenlet primitives in
the API workers; without gevent (unit tests, scripts) it runs on real threads.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class BatcherOverloaded(Exception):
    """The queue is full: more work is waiting than the model can take before it expires."""


class BatchDeadlineExceeded(Exception):
    """The request's deadline passed before its batch was answered."""


class _Pending(Generic[Item, Result]):
    __slots__ = ("abandoned", "done", "error", "item", "result")

    def __init__(self, item: Item):
        self.item = item
        self.done = threading.Event()
        self.abandoned = False  # its caller stopped waiting: not worth a model call
        self.result: Result | None = None
        self.error: BaseException | None = None


class MicroBatcher(Generic[Item, Result]):
    """`submit(items)` returns `run_batch`'s results for those items, computed together with
    whatever other requests of this process queued at the same time."""

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch_size: int = 64,
                 concurrent_batches: int = 1, observe_batch_size: Callable[[int], None] | None = None,
                 max_queued: int = 1024, clock: Callable[[], float] = time.monotonic):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.concurrent_batches = concurrent_batches
        self.observe_batch_size = observe_batch_size
        self.clock = clock
        self._queue: queue.Queue[_Pending] = queue.Queue(maxsize=max_queued)
        self._started_in: int | None = None
        self._start_lock = threading.Lock()

    def submit(self, items: Sequence[Item], timeout: float) -> list[Result]:
        """The results for `items`, or BatcherOverloaded at once, or BatchDeadlineExceeded after
        `timeout` seconds."""
        self._ensure_loops()
        deadline = self.clock() + timeout
        pending = [_Pending(item) for item in items]
        try:
            for entry in pending:
                self._queue.put_nowait(entry)
        except queue.Full:
            self._abandon(pending)
            raise BatcherOverloaded(f"{self._queue.maxsize} examples already wait for the model") from None
        results = []
        for entry in pending:
            if not entry.done.wait(max(0.0, deadline - self.clock())):
                self._abandon(pending)
                raise BatchDeadlineExceeded(f"no answer from the model within {timeout:g} s")
            if entry.error is not None:
                raise entry.error
            results.append(entry.result)
        return results

    @staticmethod
    def _abandon(pending: list[_Pending]) -> None:
        for entry in pending:
            entry.abandoned = True

    def _ensure_loops(self) -> None:
        """Loops are started lazily in the process that uses them (gunicorn forks workers)."""
        if self._started_in == os.getpid():
            return
        with self._start_lock:
            if self._started_in != os.getpid():
                for index in range(self.concurrent_batches):
                    threading.Thread(target=self._loop, name=f"micro-batcher-{index}", daemon=True).start()
                self._started_in = os.getpid()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [entry for entry in batch if not entry.abandoned]
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Pending]) -> None:
        if self.observe_batch_size is not None:
            self.observe_batch_size(len(batch))
        try:
            results = self.run_batch([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except BaseException as error:  # noqa: BLE001 - every waiter gets the failure, the loop lives on
            for entry in batch:
                entry.error = error
                entry.done.set()
            return
        for entry, result in zip(batch, results):
            entry.result = result
            entry.done.set()
