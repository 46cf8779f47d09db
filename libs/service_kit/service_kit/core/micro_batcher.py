"""Coalescing the concurrent requests of one worker into model calls, within each request's deadline.

A gevent worker holds hundreds of requests at once; sending each as its own Predict costs a gRPC
round trip and a model-server dispatch per example. Here each request hands its examples, with its
deadline, to a queue and waits; a loop sends what is queued as ONE call and hands each request its
rows. When a batch leaves, and what is refused, the rules decide (service_kit.core.batch_rules); a
caller whose deadline passes stops waiting (DeadlineExceeded: no answer after the deadline), and a
member whose caller is gone (`abandoned()`: its client closed the connection) is dropped as its
batch leaves, unsent (`client_gone`).

It uses `threading`, which gevent's monkey-patching turns into greenlet primitives in the API
workers; without gevent (unit tests, scripts) it runs on real threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, Protocol

from service_kit.core.batch_rules import SPARE_SLOTS, BatchQueue, Item, Pending, Release, Result
from service_kit.core.refusals import DeadlineExceeded, Shed

log = logging.getLogger("service_kit.core.micro_batcher")


class BatchObserver(Protocol):
    """What the batcher reports, for metrics."""

    def released(self, reason: str, size: int, max_size: int) -> None: ...

    def waited(self, seconds: float) -> None: ...

    def shed(self, reason: str, requests: int) -> None: ...


class MicroBatcher(Generic[Item, Result]):
    """`submit(items, deadline)` returns `run_batch`'s results for those items, computed together
    with whatever other requests of this process queued at the same time."""

    def __init__(self, run_batch: Callable[[list[Item], float], Sequence[Result]], rules: BatchQueue | None = None,
                 observer: BatchObserver | None = None, clock: Callable[[], float] = time.monotonic,
                 group_of: Callable[[Item], Hashable] | None = None):
        self.run_batch = run_batch  # (items, the latest deadline among them) -> results
        self.rules = rules or BatchQueue()
        self.group_of = group_of  # item -> its group; only items of one group share a batch (None: all do)
        self.observer = observer
        self.clock = clock
        self.observer_failures = 0  # calls to the observer that raised (the first is logged)
        self._changed = threading.Condition()
        self._started_in: int | None = None
        self._loops: list[threading.Thread] = []

    @property
    def max_batch_size(self) -> int:
        return self.rules.max_batch_size

    def alive(self) -> bool:
        """False once a loop this process started has stopped: nothing queued would be answered
        again (service_kit.http.app's /healthz says so, for the orchestrator to replace the worker)."""
        return self._started_in != os.getpid() or all(loop.is_alive() for loop in self._loops)

    def submit(self, items: Sequence[Item], deadline: float,
               abandoned: Callable[[], bool] | None = None) -> list[Result]:
        """The results for `items`; Shed at once; DeadlineExceeded when `deadline`
        (on this batcher's clock) passes first; Shed (client_gone) if `abandoned()`
        says, as their batch leaves, that the caller is gone."""
        return self.submit_timed(items, deadline, abandoned)[0]

    def submit_timed(self, items: Sequence[Item], deadline: float,
                     abandoned: Callable[[], bool] | None = None) -> tuple[list[Result], float]:
        """`submit`, and when the items left the queue for the model."""
        self._ensure_loops()
        now = self.clock()
        request = object()
        group_of = self.group_of
        pending = [Pending(item, deadline, now, request, abandoned, group_of(item) if group_of else None)
                   for item in items]
        with self._changed:
            try:
                self.rules.admit(pending, now)
            except Shed as refused:
                self._report_shed(refused.reason, 1)
                raise
            self._changed.notify_all()
        results = []
        for entry in pending:
            answered = entry.done.wait(max(0.0, deadline - self.clock()))
            if not answered or self.clock() > deadline:
                self._forget(pending)
                raise DeadlineExceeded("no answer from the model by the request's deadline")
            if entry.error is not None:
                self._forget(pending)
                # Raised from here, the error's traceback holds this frame: nothing this frame
                # holds may refer to it, or the frame (and the request's inputs) lives on in a
                # reference cycle until a full garbage collection.
                error, entry.error = entry.error, None
                try:
                    raise error
                finally:
                    del error
            results.append(entry.result)
        return results, max(entry.dispatched_at for entry in pending)

    def predicted_finish(self, count: int, now: float) -> float:
        """When `count` examples queued now would be answered."""
        with self._changed:
            return self.rules.predicted_finish(count, now)

    def check_in_time(self, count: int, deadline: float) -> None:
        """Raise Shed now if `count` examples queued now would be answered late."""
        with self._changed:
            try:
                self.rules.check_in_time(count, deadline, self.clock())
            except Shed as refused:
                self._report_shed(refused.reason, 1)
                raise

    def _forget(self, pending: list[Pending]) -> None:
        """A caller gave up: its entries still queued are removed, unsent."""
        with self._changed:
            self.rules.forget(pending)

    def _report_shed(self, reason: str, requests: int) -> None:
        if requests:
            self._observe("shed", reason, requests)

    def _observe(self, what: str, *args: object) -> None:
        """Tell the observer; its failure is counted (the first logged) and never stops the loop:
        a batcher that stopped for a metric would leave every later request unanswered."""
        if self.observer is None:
            return
        try:
            getattr(self.observer, what)(*args)
        except Exception:  # noqa: BLE001 - metrics must not take the batcher down
            self.observer_failures += 1
            if self.observer_failures == 1:
                log.exception("the batcher's observer failed (%s); further failures are only counted", what)

    def _ensure_loops(self) -> None:
        """Loops are started lazily in the process that uses them (gunicorn forks workers)."""
        if self._started_in == os.getpid():
            return
        with self._changed:
            if self._started_in != os.getpid():
                self._loops = [threading.Thread(target=self._loop, name=f"micro-batcher-{index}", daemon=True)
                               for index in range(self.rules.concurrent_batches + SPARE_SLOTS)]
                for loop in self._loops:
                    loop.start()
                self._started_in = os.getpid()

    def _loop(self) -> None:
        try:
            while True:
                self._send_next()
        except BaseException:
            log.critical("a batcher loop stopped: queued requests will not be answered", exc_info=True)
            raise

    def _send_next(self) -> None:
        """Wait for the next batch and send it. One call per batch, so that nothing of a batch
        (its inputs, a 20 MB image each) stays referenced by the loop while it waits for the next."""
        with self._changed:
            while True:
                now = self.clock()
                decision = self.rules.decide(now)
                for entry in decision.shed:
                    entry.fail(Shed("expired", "the request's deadline would pass before the model "
                                                 "could answer it"))
                self._report_shed("expired", len({id(entry.request) for entry in decision.shed}))
                if decision.release is not None:
                    self._drop_abandoned(decision.release)
                    if decision.release.entries:
                        break
                    continue
                timeout = None if decision.wake_at is None else max(0.0, decision.wake_at - now)
                self._changed.wait(timeout)
            release = decision.release
            predicted_end = self.rules.started(release, now)
        answered = self._run(release, now)
        with self._changed:
            ended = self.clock()
            self.rules.finished(predicted_end, len(release.entries), ended - now, ended, answered)
            self._changed.notify_all()

    def _drop_abandoned(self, release: Release) -> None:
        """Take out of a leaving batch the requests whose caller is gone (asked once per request):
        nginx closes its connection to us when its client goes away, and the model's time is
        better spent on requests someone still waits for."""
        gone: dict[int, bool] = {}
        kept = []
        for entry in release.entries:
            key = id(entry.request)
            if key not in gone:
                gone[key] = entry.abandoned is not None and entry.abandoned()
            if gone[key]:
                entry.fail(Shed("client_gone", "the client closed its connection before the model "
                                             "was asked"))
            else:
                kept.append(entry)
        release.entries = kept
        self._report_shed("client_gone", sum(gone.values()))

    def _run(self, release: Release, started: float) -> bool:
        """The batch's call; whether the model answered it."""
        batch = release.entries
        self._observe("released", release.reason, len(batch), self.rules.max_batch_size)
        for entry in batch:
            self._observe("waited", started - entry.enqueued_at)
        try:
            results = self.run_batch([entry.item for entry in batch], max(entry.deadline for entry in batch))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except BaseException as error:  # noqa: BLE001 - every waiter gets the failure, the loop lives on
            where = _where(error)
            for entry in batch:
                entry.fail(_own_copy(error, where))
            return False
        for entry, result in zip(batch, results):
            entry.result = result
            entry.done.set()
        return True


def _own_copy(error: BaseException, where: str) -> BaseException:
    """A fresh instance of `error` for one waiter: its type, arguments and attributes, without the
    original's traceback (which holds the batch's inputs), cause or context. One instance raised by
    every waiter would grow its traceback with each raise and tie each waiter's frame, and inputs
    (a 20 MB image), into a reference cycle that only a full garbage collection frees."""
    try:
        fresh = type(error).__new__(type(error), *error.args)
    except Exception:  # noqa: BLE001 - a type that cannot be re-made: its name and message, then
        fresh = RuntimeError(f"{type(error).__name__}: {error}")
    fresh.__dict__.update(vars(error))
    fresh.__notes__ = [*getattr(error, "__notes__", ()), where]  # a list of its own: add_note appends
    return fresh


def _where(error: BaseException) -> str:
    """Where `error` was raised, as a line for the log (its traceback is not passed on)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "raised in the batcher's model call"
    code = tb.tb_frame.f_code
    return f"raised in the batcher's model call, at {code.co_filename}:{tb.tb_lineno} in {code.co_name}"
