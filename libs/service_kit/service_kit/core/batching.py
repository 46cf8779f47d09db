"""Coalescing the concurrent requests of one worker into model calls, within each request's deadline.

A gevent worker holds hundreds of requests at once; sending each as its own Predict costs a gRPC
round trip and a model-server dispatch per example. Here each request hands its examples, with its
deadline, to a queue and waits; a loop sends what is queued as ONE call and hands each request
its rows.

The rules (`BatchQueue`, a plain object that takes the time as an argument, so tests drive it with
a made-up clock):
- admission: a request is refused at once, before any model work, when the queue is full
  (`queue_full`) or when the queue ahead of it and the model's recent latency say it would be
  answered after its deadline (`predicted_late`);
- release: a batch leaves when it is `full`; when waiting longer would make its most urgent
  member miss its deadline (`deadline`); when its oldest member has waited the window (`window`);
  or at once when no other request is expected within the window (`idle`: a lone request never
  waits);
- the window adapts: it is the fixed part of a model call's recent latency (what one more request
  in the batch saves), capped by `max_window`. On a busy machine calls slow down, the window grows
  and batches with it, so the model costs less CPU per request (the lstm model takes ~1 ms for one
  sentence and ~3 ms for 128); on a quiet one it is a few ms, or nothing (`idle`). Requests that
  arrive while a call is in flight go together in the next one, as before;
- a member that can no longer make its deadline is dropped before the call (`expired`), and a
  caller whose deadline passes stops waiting (`BatchDeadlineExceeded`): no answer after the deadline;
- a member whose caller is gone (`abandoned()`: its client closed the connection) is dropped as its
  batch leaves, unsent (`client_gone`);
- a batch holds examples of one group only (`group_of`, the service's `batch_group`: text-api's is a
  length class), taken in arrival order from the oldest example's group: a model's input is padded to
  its longest member, and one text of 1,500 words in a batch of 64 short reviews made each of them cost
  what that text costs.

The model's latency is learnt from the calls themselves (`LatencyModel`: seconds ~ fixed +
per_example x batch size, recent calls weighing most), as BentoML's adaptive batching does.

`coalesce_only` keeps the older behaviour (no deadline rules, no window: whatever queued goes
at once) for side-by-side benchmarks.

It uses `threading`, which gevent's monkey-patching turns into greenlet primitives in the API
workers; without gevent (unit tests, scripts) it runs on real threads.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, Protocol, TypeVar

from service_kit.core.deadlines import fade

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger("service_kit.core.batching")

_EPSILON = 1e-9  # seconds: rounding, not time

RELEASE_REASONS = ("full", "window", "deadline", "idle")
# model_requests_shed_total's reasons; late_arrival (service_kit.http.app, in front of Flask) and busy
# (a service's Busy) are counted outside the batcher.
SHED_REASONS = ("late_arrival", "queue_full", "predicted_late", "expired", "client_gone", "busy")


class BatcherOverloaded(Exception):
    """Refused before any model work: the queue is full, or the request could not be answered in time."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # one of SHED_REASONS


def _late_message(finish: float, deadline: float, now: float) -> str:
    return (f"the model would answer in about {1000 * (finish - now):.0f} ms, after the request's deadline "
            f"({1000 * (deadline - now):.0f} ms from now)")


class BatchDeadlineExceeded(Exception):
    """The request's deadline passed before its batch was answered."""


class BatchObserver(Protocol):
    """What the batcher reports, for metrics."""

    def released(self, reason: str, size: int, max_size: int) -> None: ...

    def waited(self, seconds: float) -> None: ...

    def shed(self, reason: str, requests: int) -> None: ...


class LatencyModel:
    """Seconds of a model call as fixed + per_example x size, fitted by least squares over recent
    calls (each older call weighs `decay` times less: a few calls follow a change), plus four
    times the recent mean error of that fit: when calls vary (a busy machine), predictions leave
    room for it, as TCP's retransmission timer does."""

    def __init__(self, decay: float = 0.8, initial_seconds: float = 0.005):
        self.decay = decay
        self._sums = [0.0] * 5  # weight, weight*n, weight*n*n, weight*y, weight*n*y
        self.fixed, self.per_example = initial_seconds, 0.0
        self.error = 0.0
        self._observed_at: float | None = None  # the initial guess does not fade

    def observe(self, size: int, seconds: float, now: float = 0.0) -> None:
        self._observed_at = now
        if self._sums[0]:
            self.error += 0.25 * (abs(seconds - self.fit(size)) - self.error)
        w, wn, wnn, wy, wny = (s * self.decay for s in self._sums)
        self._sums = [w + 1, wn + size, wnn + size * size, wy + seconds, wny + size * seconds]
        w, wn, wnn, wy, wny = self._sums
        spread = w * wnn - wn * wn
        if spread > 1e-9 * w * w:  # sizes varied: fixed and per-example parts can be told apart
            per_example = max(0.0, (w * wny - wn * wy) / spread)
            self.fixed, self.per_example = max(0.0, (wy - per_example * wn) / w), per_example
        else:
            self.fixed, self.per_example = max(0.0, wy / w - self.per_example * wn / w), self.per_example

    def fit(self, size: int) -> float:
        return self.fixed + self.per_example * size

    def estimate(self, size: int, now: float | None = None) -> float:
        """The fit and its error margin; given `now`, the margin fades when no call has renewed it
        (deadlines.fade): a burst of uneven calls must not keep every request out for ever."""
        margin = 4 * self.error
        if now is not None and self._observed_at is not None:
            margin *= fade(now - self._observed_at)
        return self.fit(size) + margin


class _Pending(Generic[Item, Result]):
    __slots__ = ("abandoned", "deadline", "dispatched_at", "done", "enqueued_at", "error", "group", "item",
                 "request", "result")

    def __init__(self, item: Item, deadline: float, now: float, request: object = None,
                 abandoned: Callable[[], bool] | None = None, group: Hashable = None):
        self.item = item
        self.group = group  # only examples of one group share a batch
        self.request = request  # the examples of one request share it
        self.abandoned = abandoned  # () -> whether the caller is gone (the request's, shared too)
        self.deadline = deadline
        self.enqueued_at = now
        self.dispatched_at: float | None = None
        self.done = threading.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


@dataclasses.dataclass
class Release:
    entries: list[_Pending]
    reason: str  # one of RELEASE_REASONS


@dataclasses.dataclass
class Decision:
    """What the loop does now: run `release` (if any), fail `shed`, and look again at `wake_at`
    (None: when something changes)."""

    release: Release | None = None
    shed: list[_Pending] = dataclasses.field(default_factory=list)
    wake_at: float | None = None


class BatchQueue:
    """The batcher's rules, without threads or a clock of their own; the caller holds the lock."""

    def __init__(self, max_batch_size: int = 64, max_queued: int = 1024, concurrent_batches: int = 1,
                 max_window: float = 0.025, margin: float = 0.002, coalesce_only: bool = False,
                 latency: LatencyModel | None = None):
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self.concurrent_batches = concurrent_batches
        self.max_window = max_window
        self.margin = margin  # kept between a predicted answer and a deadline
        self.coalesce_only = coalesce_only
        self.latency = latency or LatencyModel()
        self.queued: collections.deque[_Pending] = collections.deque()
        self.in_flight_until: list[float] = []  # predicted end of each call in flight
        self._last_arrival: float | None = None
        # Seconds between requests, recent ones weighing most; a pause counts as at most a few
        # windows, so the first requests after it are seen as company again soon.
        self._longest_gap = 4 * max_window
        self._mean_gap = self._longest_gap

    def window(self) -> float:
        return min(self.max_window, self.latency.fixed)

    def admit(self, entries: list[_Pending], now: float) -> None:
        """Queue a request's entries, or raise BatcherOverloaded with nothing queued."""
        if len(self.queued) + len(entries) > self.max_queued:
            raise BatcherOverloaded("queue_full", f"{len(self.queued)} examples already wait for the model")
        self.check_in_time(len(entries), min(entry.deadline for entry in entries), now)
        if self._last_arrival is not None:
            gap = min(self._longest_gap, max(0.0, now - self._last_arrival))
            self._mean_gap += 0.1 * (gap - self._mean_gap)
        self._last_arrival = now
        self.queued.extend(entries)

    def check_in_time(self, count: int, deadline: float, now: float) -> None:
        """Raise BatcherOverloaded (predicted_late) if `count` examples queued now would be
        answered after `deadline`; coalescing alone knows no deadlines."""
        if self.coalesce_only:
            return
        finish = self.predicted_finish(count, now)
        if finish + self.margin > deadline:
            raise BatcherOverloaded("predicted_late", _late_message(finish, deadline, now))

    def predicted_finish(self, count: int, now: float) -> float:
        """When `count` more examples queued now would be answered: after the calls in flight (if
        no slot is free), the full batches ahead of them, and their own batch."""
        start = now
        if len(self.in_flight_until) >= self.concurrent_batches:
            start = max(now, min(self.in_flight_until))
        ahead = len(self.queued)
        full_batches, rest = divmod(ahead, self.max_batch_size)
        own = min(self.max_batch_size, rest + count)
        return (start + full_batches * self.latency.estimate(self.max_batch_size, now)
                + self.latency.estimate(own, now))

    def decide(self, now: float) -> Decision:
        decision = Decision()
        if len(self.in_flight_until) >= self.concurrent_batches or not self.queued:
            return decision
        if self.coalesce_only:
            batch = [self.queued.popleft() for _ in range(min(self.max_batch_size, len(self.queued)))]
            reason = "full" if len(batch) == self.max_batch_size else "idle"
            decision.release = Release(batch, reason)
            return decision
        # Members that cannot make their deadline even if the batch left now are dropped unsent.
        size = min(self.max_batch_size, len(self.queued))
        kept = collections.deque()
        for entry in self.queued:
            if now + self.latency.estimate(size, now) + self.margin > entry.deadline + _EPSILON:
                decision.shed.append(entry)
            else:
                kept.append(entry)
        self.queued = kept
        if not self.queued:
            return decision
        batch_view = self._next_members()
        size = len(batch_view)
        latest_start = min(entry.deadline for entry in batch_view) - self.latency.estimate(size, now) - self.margin
        window_ends = batch_view[0].enqueued_at + self.window()
        if size == self.max_batch_size:
            reason = "full"
        elif now + _EPSILON >= latest_start:
            reason = "deadline"
        elif now >= window_ends:
            reason = "window"
        elif self._mean_gap > self.window():
            reason = "idle"  # no other request expected within the window: waiting gains nothing
        else:
            decision.wake_at = min(latest_start, window_ends)
            return decision
        if batch_view[-1] is self.queued[size - 1]:  # the oldest examples, as when all share a group
            decision.release = Release([self.queued.popleft() for _ in range(size)], reason)
        else:
            members = set(map(id, batch_view))
            self.queued = collections.deque(entry for entry in self.queued if id(entry) not in members)
            decision.release = Release(batch_view, reason)
        return decision

    def _next_members(self) -> list[_Pending]:
        """The next batch's members: the oldest example's group, in arrival order, up to a full batch."""
        group = self.queued[0].group
        members = []
        for entry in self.queued:
            if entry.group == group:
                members.append(entry)
                if len(members) == self.max_batch_size:
                    break
        return members

    def started(self, release: Release, now: float) -> float:
        """A call begins; returns its predicted end."""
        end = now + self.latency.estimate(len(release.entries), now)
        self.in_flight_until.append(end)
        for entry in release.entries:
            entry.dispatched_at = now
        return end

    def finished(self, predicted_end: float, size: int, seconds: float, now: float) -> None:
        self.in_flight_until.remove(predicted_end)
        self.latency.observe(size, seconds, now)


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
        """The results for `items`; BatcherOverloaded at once; BatchDeadlineExceeded when `deadline`
        (on this batcher's clock) passes first; BatcherOverloaded (client_gone) if `abandoned()`
        says, as their batch leaves, that the caller is gone."""
        return self.submit_timed(items, deadline, abandoned)[0]

    def submit_timed(self, items: Sequence[Item], deadline: float,
                     abandoned: Callable[[], bool] | None = None) -> tuple[list[Result], float]:
        """`submit`, and when the items left the queue for the model."""
        self._ensure_loops()
        now = self.clock()
        request = object()
        group_of = self.group_of
        pending = [_Pending(item, deadline, now, request, abandoned, group_of(item) if group_of else None)
                   for item in items]
        with self._changed:
            try:
                self.rules.admit(pending, now)
            except BatcherOverloaded as refused:
                self._report_shed(refused.reason, 1)
                raise
            self._changed.notify_all()
        results = []
        for entry in pending:
            answered = entry.done.wait(max(0.0, deadline - self.clock()))
            if not answered or self.clock() > deadline:
                self._forget(pending)
                raise BatchDeadlineExceeded("no answer from the model by the request's deadline")
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
        """Raise BatcherOverloaded now if `count` examples queued now would be answered late."""
        with self._changed:
            try:
                self.rules.check_in_time(count, deadline, self.clock())
            except BatcherOverloaded as refused:
                self._report_shed(refused.reason, 1)
                raise

    def _forget(self, pending: list[_Pending]) -> None:
        """A caller gave up: its entries still queued are removed, unsent."""
        with self._changed:
            gone = set(map(id, pending))
            self.rules.queued = collections.deque(e for e in self.rules.queued if id(e) not in gone)

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
                               for index in range(self.rules.concurrent_batches)]
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
                    entry.fail(BatcherOverloaded("expired", "the request's deadline would pass before the model "
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
        self._run(release, now)
        with self._changed:
            ended = self.clock()
            self.rules.finished(predicted_end, len(release.entries), ended - now, ended)
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
                entry.fail(BatcherOverloaded("client_gone", "the client closed its connection before the model "
                                             "was asked"))
            else:
                kept.append(entry)
        release.entries = kept
        self._report_shed("client_gone", sum(gone.values()))

    def _run(self, release: Release, started: float) -> None:
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
            return
        for entry, result in zip(batch, results):
            entry.result = result
            entry.done.set()


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
