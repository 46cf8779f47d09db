"""The micro-batcher's rules: when a worker's queued examples leave as one model call, and which
requests are refused before any model work, within each request's deadline. A plain object that
takes the time as an argument (tests drive it with a made-up clock) and holds no lock: the runtime
around it (service_kit.core.micro_batcher) does.

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
  arrive while a call is in flight go together in the next one;
- a member that can no longer make its deadline is dropped before the call (`expired`);
- a batch holds examples of one group only (the service's `batch_group`: text-api's is a length
  class), taken in arrival order from the oldest example's group: a model's input is padded to its
  longest member, and one text of 1,500 words in a batch of 64 short reviews made each of them cost
  what that text costs.

The model's latency is learnt from the calls themselves (`LatencyModel`: seconds ~ fixed +
per_example x batch size, recent calls weighing most), as BentoML's adaptive batching does.

`coalesce_only` keeps the older behaviour (no deadline rules, no window: whatever queued goes
at once) for side-by-side benchmarks.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from service_kit.core.deadlines import DEVIATIONS, fade
from service_kit.core.refusals import Shed

Item = TypeVar("Item")
Result = TypeVar("Result")

_EPSILON = 1e-9  # seconds: rounding, not time
# A call this far past its predicted end holds its slot no more: its model server has stopped
# answering (tfserving_client then sends elsewhere), and the queue behind it goes out on a spare
# slot instead of waiting for the call's deadline. One spare: a second stalled call waits.
STALLED_AFTER = 1.0
SPARE_SLOTS = 1

RELEASE_REASONS = ("full", "window", "deadline", "idle")


def _late_message(finish: float, deadline: float, now: float) -> str:
    return (f"the model would answer in about {1000 * (finish - now):.0f} ms, after the request's deadline "
            f"({1000 * (deadline - now):.0f} ms from now)")


class LatencyModel:
    """Seconds of a model call as fixed + per_example x size, fitted by least squares over recent
    calls (each older call weighs `decay` times less: a few calls follow a change), plus DEVIATIONS
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
        margin = DEVIATIONS * self.error
        if now is not None and self._observed_at is not None:
            margin *= fade(now - self._observed_at)
        return self.fit(size) + margin


class Pending(Generic[Item, Result]):
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
    entries: list[Pending]
    reason: str  # one of RELEASE_REASONS


@dataclasses.dataclass
class Decision:
    """What the loop does now: run `release` (if any), fail `shed`, and look again at `wake_at`
    (None: when something changes)."""

    release: Release | None = None
    shed: list[Pending] = dataclasses.field(default_factory=list)
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
        self.queued: collections.deque[Pending] = collections.deque()
        self.in_flight_until: list[float] = []  # predicted end of each call in flight
        self._last_arrival: float | None = None
        # Seconds between requests, recent ones weighing most; a pause counts as at most a few
        # windows, so the first requests after it are seen as company again soon.
        self._longest_gap = 4 * max_window
        self._mean_gap = self._longest_gap

    def window(self) -> float:
        return min(self.max_window, self.latency.fixed)

    def admit(self, entries: list[Pending], now: float) -> None:
        """Queue a request's entries, or raise Shed with nothing queued."""
        if len(self.queued) + len(entries) > self.max_queued:
            raise Shed("queue_full", f"{len(self.queued)} examples already wait for the model")
        self.check_in_time(len(entries), min(entry.deadline for entry in entries), now)
        if self._last_arrival is not None:
            gap = min(self._longest_gap, max(0.0, now - self._last_arrival))
            self._mean_gap += 0.1 * (gap - self._mean_gap)
        self._last_arrival = now
        self.queued.extend(entries)

    def check_in_time(self, count: int, deadline: float, now: float) -> None:
        """Raise Shed (predicted_late) if `count` examples queued now would be
        answered after `deadline`; coalescing alone knows no deadlines."""
        if self.coalesce_only:
            return
        finish = self.predicted_finish(count, now)
        if finish + self.margin > deadline:
            raise Shed("predicted_late", _late_message(finish, deadline, now))

    def predicted_finish(self, count: int, now: float) -> float:
        """When `count` more examples queued now would be answered: after the calls in flight (if
        no slot is free), the full batches ahead of them, and their own batch."""
        start = now
        busy = self._busy(now)
        if len(busy) >= self.concurrent_batches:
            start = max(now, min(busy))
        ahead = len(self.queued)
        full_batches, rest = divmod(ahead, self.max_batch_size)
        own = min(self.max_batch_size, rest + count)
        return (start + full_batches * self.latency.estimate(self.max_batch_size, now)
                + self.latency.estimate(own, now))

    def decide(self, now: float) -> Decision:
        decision = Decision()
        if not self.queued:
            return decision
        busy = self._busy(now)
        if len(self.in_flight_until) >= self.concurrent_batches + SPARE_SLOTS:
            return decision
        if len(busy) >= self.concurrent_batches:
            decision.wake_at = min(busy) + STALLED_AFTER  # when the oldest would stop holding its slot
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

    def _busy(self, now: float) -> list[float]:
        """The predicted ends of the calls in flight that hold a slot (STALLED_AFTER)."""
        return [end for end in self.in_flight_until if end + STALLED_AFTER > now]

    def _next_members(self) -> list[Pending]:
        """The next batch's members: the oldest example's group, in arrival order, up to a full batch."""
        group = self.queued[0].group
        members = []
        for entry in self.queued:
            if entry.group == group:
                members.append(entry)
                if len(members) == self.max_batch_size:
                    break
        return members

    def forget(self, entries: list[Pending]) -> None:
        """A caller gave up: its entries still queued are removed, unsent."""
        gone = set(map(id, entries))
        self.queued = collections.deque(entry for entry in self.queued if id(entry) not in gone)

    def started(self, release: Release, now: float) -> float:
        """A call begins; returns its predicted end."""
        end = now + self.latency.estimate(len(release.entries), now)
        self.in_flight_until.append(end)
        for entry in release.entries:
            entry.dispatched_at = now
        return end

    def finished(self, predicted_end: float, size: int, seconds: float, now: float, answered: bool = True) -> None:
        """A call ended; only an answered one says how long the model takes (a call that failed
        fast or ran out of time says nothing of it)."""
        self.in_flight_until.remove(predicted_end)
        if answered:
            self.latency.observe(size, seconds, now)
