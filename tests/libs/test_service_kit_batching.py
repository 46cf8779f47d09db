"""The batcher: its rules on a made-up clock (early release, shedding before model work, no answer
after a deadline, the adaptive window), then the threaded MicroBatcher around them (results to the
right caller, failures to every waiter, nothing waits when there is nothing to wait for)."""

from __future__ import annotations

import gc
import threading
import time
import traceback
import weakref

import pytest

from service_kit.core.batch_rules import STALLED_AFTER, BatchQueue, LatencyModel, Pending
from service_kit.core.deadlines import DEVIATIONS
from service_kit.core.micro_batcher import MicroBatcher
from service_kit.core.refusals import DeadlineExceeded, Shed

MS = 0.001


def learnt(fixed: float, per_example: float, at: float = 10.0) -> LatencyModel:
    """A latency model that has seen calls of several sizes cost fixed + per_example x size, the
    last one at time `at` (estimates fade when no call renews them)."""
    model = LatencyModel()
    for _ in range(30):  # long enough for the early misfits to be forgotten
        for size in (1, 8, 32, 64):
            model.observe(size, fixed + per_example * size, at)
    return model


def entries(count: int, deadline: float, now: float) -> list[Pending]:
    return [Pending(index, deadline, now) for index in range(count)]


def arrivals(queue: BatchQueue, times: list[float], deadline_after: float) -> None:
    """One single-example request at each time, each with `deadline_after` seconds to live."""
    for at in times:
        queue.admit(entries(1, at + deadline_after, at), at)


# --- the rules, on a made-up clock ---------------------------------------------------------------

def test_the_latency_model_tells_the_fixed_cost_from_the_cost_per_example():
    model = learnt(fixed=2 * MS, per_example=0.05 * MS)
    assert model.fixed == pytest.approx(2 * MS, rel=1e-3)
    assert model.per_example == pytest.approx(0.05 * MS, rel=1e-3)
    assert model.estimate(64) == pytest.approx(5.2 * MS, rel=1e-3)


def test_when_calls_vary_predictions_leave_room_for_it():
    steady, varied = learnt(2 * MS, 0), learnt(2 * MS, 0)
    for seconds in [1 * MS, 3 * MS] * 20:
        varied.observe(8, seconds)
    assert steady.estimate(8) == pytest.approx(2 * MS, rel=1e-3)
    assert varied.estimate(8) > 2 * MS + (DEVIATIONS - 0.5) * MS  # DEVIATIONS mean errors of ~1 ms on top


def test_an_error_margin_no_call_renews_fades():
    model = learnt(2 * MS, 0, at=50.0)
    for seconds in [1 * MS, 3 * MS] * 20:
        model.observe(8, seconds, now=50.0)
    assert model.estimate(8, now=50.0) > 2 * MS + (DEVIATIONS - 0.5) * MS
    assert model.estimate(8, now=51.0) == pytest.approx(model.fit(8), abs=0.01 * MS)  # ten half-lives later


def test_the_window_follows_the_models_latency_up_to_its_cap():
    assert BatchQueue(max_window=5 * MS, latency=learnt(2 * MS, 0)).window() == pytest.approx(2 * MS)
    assert BatchQueue(max_window=5 * MS, latency=learnt(20 * MS, 0)).window() == 5 * MS


def test_a_lone_request_leaves_at_once():
    queue = BatchQueue(latency=learnt(2 * MS, 0))
    arrivals(queue, [10.0], deadline_after=1.0)
    decision = queue.decide(10.0)
    assert decision.release.reason == "idle" and len(decision.release.entries) == 1


def test_under_steady_arrivals_a_batch_waits_for_company_at_most_the_window():
    queue = BatchQueue(latency=learnt(2 * MS, 0.01 * MS))  # window: the 2 ms fixed cost
    arrivals(queue, [10.0 + i * 0.5 * MS for i in range(40)], deadline_after=1.0)  # one every 0.5 ms
    queue.queued.clear()  # (sent meanwhile)
    arrivals(queue, [11.0], deadline_after=1.0)  # after a pause: it goes alone
    assert queue.decide(11.0).release.reason == "idle"
    arrivals(queue, [11.0 + i * 0.5 * MS for i in range(1, 20)], deadline_after=1.0)  # company again
    queue.queued.clear()
    arrivals(queue, [12.0], deadline_after=1.0)
    queue._mean_gap = 0.5 * MS  # as if the pause had not been
    decision = queue.decide(12.0)
    assert decision.release is None and decision.wake_at == pytest.approx(12.0 + 2 * MS)
    arrivals(queue, [12.0005, 12.001], deadline_after=1.0)
    assert queue.decide(12.0015).release is None
    decision = queue.decide(12.002)
    assert decision.release.reason == "window" and len(decision.release.entries) == 3


def test_a_full_batch_leaves_without_waiting():
    queue = BatchQueue(max_batch_size=4, latency=learnt(2 * MS, 0))
    arrivals(queue, [10.0 + i * 0.1 * MS for i in range(20)], deadline_after=1.0)
    decision = queue.decide(10.002)
    assert decision.release.reason == "full" and len(decision.release.entries) == 4


def test_a_batch_holds_one_group_taken_in_arrival_order_from_the_oldest():
    """Issue 33: examples padded to a batch's longest (text-api's length classes) share calls only
    with their own group; the others keep their places for the next batch."""
    queue = BatchQueue(max_batch_size=3, latency=learnt(2 * MS, 0))
    groups = ["short", "long", "short", "short", "long", "short"]
    queue.admit([Pending(index, 11.0, 10.0, group=group) for index, group in enumerate(groups)], 10.0)
    first = queue.decide(10.0).release
    assert [entry.item for entry in first.entries] == [0, 2, 3] and first.reason == "full"
    assert [entry.item for entry in queue.queued] == [1, 4, 5]
    second = queue.decide(10.0).release
    assert [entry.item for entry in second.entries] == [1, 4]
    assert [entry.item for entry in queue.queued] == [5]


def test_the_microbatcher_groups_items_by_group_of():
    calls = []

    def model(items, deadline):
        calls.append(sorted(items))
        time.sleep(0.01)
        return [item * 2 for item in items]

    batcher = MicroBatcher(model, BatchQueue(max_batch_size=16), group_of=lambda item: item >= 100)
    results = []
    threads = [threading.Thread(target=lambda v=v: results.append(batcher.submit(v, time.monotonic() + 5)))
               for v in ([1, 100], [2, 3], [200], [4])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(map(tuple, results)) == [(2, 200), (4, 6), (8,), (400,)]
    assert all(all(item < 100 for item in call) or all(item >= 100 for item in call) for call in calls), calls


def test_a_batch_leaves_early_when_waiting_would_make_its_most_urgent_member_late():
    queue = BatchQueue(max_window=5 * MS, margin=1 * MS, latency=learnt(4 * MS, 0, at=10.0205))  # window 4 ms
    arrivals(queue, [10.0 + i * 0.5 * MS for i in range(40)], deadline_after=1.0)
    queue.queued.clear()
    arrivals(queue, [10.0205], deadline_after=1.0)
    arrivals(queue, [10.0205], deadline_after=6 * MS)  # must start by 10.0215 (4 ms call, 1 ms margin)
    decision = queue.decide(10.0205)
    assert decision.release is None and decision.wake_at == pytest.approx(10.0215)
    now = decision.wake_at
    for _ in range(10):  # the estimate fades a little as time passes: the latest start moves a little
        decision = queue.decide(now)
        if decision.release is not None:
            break
        now = decision.wake_at
    assert decision.release.reason == "deadline" and len(decision.release.entries) == 2
    assert now == pytest.approx(10.0215, abs=0.1 * MS)


def test_a_request_that_would_be_late_is_refused_before_it_is_queued():
    queue = BatchQueue(max_batch_size=8, margin=1 * MS, latency=learnt(10 * MS, 0))
    arrivals(queue, [10.0], deadline_after=1.0)
    queue.started(queue.decide(10.0).release, 10.0)  # a call in flight until 10.010
    arrivals(queue, [10.001] * 16, deadline_after=1.0)  # two full batches queued behind it
    # answered at 10.010 + 2 x 10 ms + its own 10 ms = 10.040: a 35 ms deadline cannot be met
    with pytest.raises(Shed) as refused:
        queue.admit(entries(1, 10.002 + 35 * MS, 10.002), 10.002)
    assert refused.value.reason == "predicted_late" and len(queue.queued) == 16
    queue.admit(entries(1, 10.002 + 45 * MS, 10.002), 10.002)  # 45 ms is enough
    assert len(queue.queued) == 17


def test_a_queued_request_that_can_no_longer_make_it_is_dropped_before_the_call():
    queue = BatchQueue(margin=1 * MS, latency=learnt(10 * MS, 0))
    arrivals(queue, [10.0], deadline_after=1.0)
    in_flight = queue.decide(10.0).release
    end = queue.started(in_flight, 10.0)
    arrivals(queue, [10.001], deadline_after=25 * MS)  # admitted: predicted 10.020 + margin < 10.026
    arrivals(queue, [10.001], deadline_after=1.0)
    queue.finished(end, 1, 20 * MS, 10.020)  # the call took 20 ms, not 10: it is 10.020 now
    decision = queue.decide(10.020)
    assert [e.deadline for e in decision.shed] == [pytest.approx(10.026)]  # 10.020 + ~13 ms > 10.026
    assert [e.deadline for e in decision.release.entries] == [pytest.approx(11.001)]


def test_a_full_queue_refuses_at_once_and_keeps_nothing_of_the_refused_request():
    queue = BatchQueue(max_queued=3)
    arrivals(queue, [10.0, 10.0], deadline_after=1.0)
    with pytest.raises(Shed) as refused:
        queue.admit(entries(2, 11.0, 10.0), 10.0)
    assert refused.value.reason == "queue_full" and len(queue.queued) == 2


def test_coalescing_only_sends_whatever_queued_at_once_and_refuses_nothing_for_time():
    queue = BatchQueue(coalesce_only=True, latency=learnt(50 * MS, 0))
    arrivals(queue, [10.0 + i * 0.1 * MS for i in range(5)], deadline_after=1 * MS)
    decision = queue.decide(10.001)
    assert decision.release.reason == "idle" and len(decision.release.entries) == 5 and not decision.shed


def test_nothing_is_released_while_every_slot_is_busy():
    queue = BatchQueue(concurrent_batches=1, latency=learnt(2 * MS, 0))
    arrivals(queue, [10.0], deadline_after=1.0)
    queue.started(queue.decide(10.0).release, 10.0)
    arrivals(queue, [10.001], deadline_after=1.0)
    assert queue.decide(10.001).release is None


def test_a_call_stalled_past_its_predicted_end_frees_its_slot_for_one_more():
    """A model server that stopped answering held a worker's one call, and every request queued
    behind it waited out the call's 10 s deadline (a local fault run: 8 of ~1,200 requests lost
    to one hung server of two). Once the call is STALLED_AFTER past its predicted end, the queue
    goes out on a spare slot (to another server: tfserving_client passes the stalled one over)."""
    queue = BatchQueue(concurrent_batches=1, latency=learnt(2 * MS, 0))
    arrivals(queue, [10.0], deadline_after=20.0)
    stalled_end = queue.started(queue.decide(10.0).release, 10.0)
    arrivals(queue, [10.001], deadline_after=20.0)
    waiting = queue.decide(10.5)
    assert waiting.release is None and waiting.wake_at == pytest.approx(stalled_end + STALLED_AFTER)
    assert queue.predicted_finish(1, 10.5) > stalled_end, "behind the call, while it may still answer"
    later = stalled_end + STALLED_AFTER + MS
    assert queue.predicted_finish(1, later) < later + 10 * MS, "no longer behind it"
    second_end = queue.started(queue.decide(later).release, later)
    arrivals(queue, [later + 5], deadline_after=20.0)
    assert queue.decide(second_end + STALLED_AFTER + 5).release is None, "one spare slot, no more"
    queue.finished(stalled_end, 1, 9.0, later + 6, answered=False)
    assert queue.decide(later + 6).release is not None, "the slot is back when the stalled call ends"
    assert queue.latency.estimate(1, later + 6) < 10 * MS, "a call that ran out of time taught nothing"


# --- the threaded batcher, with an injected clock where time decides ------------------------------

class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_no_request_is_answered_after_its_deadline():
    clock = FakeClock()

    def slow_model(items, deadline):
        clock.now += 0.5  # the call ends 0.5 s later on the batcher's clock
        return items

    batcher = MicroBatcher(slow_model, BatchQueue(coalesce_only=True), clock=clock)
    with pytest.raises(DeadlineExceeded):
        batcher.submit([1], deadline=clock.now + 0.4)
    assert batcher.submit([2], deadline=clock.now + 0.6) == [2]


def test_a_request_that_cannot_make_its_deadline_never_reaches_the_model():
    clock = FakeClock()
    seen: list[list[int]] = []
    release = threading.Event()

    def model(items, deadline):
        seen.append(list(items))
        release.wait(10)
        return items

    rules = BatchQueue(latency=learnt(50 * MS, 0, at=clock.now))
    batcher = MicroBatcher(model, rules, clock=clock)
    first = threading.Thread(target=batcher.submit, args=([1], clock.now + 10))
    first.start()
    wait_for(lambda: seen == [[1]])
    started = time.monotonic()
    with pytest.raises(Shed) as refused:  # behind a call until +50 ms, plus its own 50 ms
        batcher.submit([2], deadline=clock.now + 80 * MS)
    assert refused.value.reason == "predicted_late" and time.monotonic() - started < 1
    release.set()
    first.join(5)
    assert batcher.submit([3], deadline=clock.now + 1) == [3]
    assert seen == [[1], [3]]


def wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


# --- the threaded batcher, in real time -----------------------------------------------------------

def within(seconds: float) -> float:
    return time.monotonic() + seconds


class SlowDoubler:
    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds
        self.batches: list[list[int]] = []

    def __call__(self, items: list[int], deadline: float) -> list[int]:
        self.batches.append(list(items))
        time.sleep(self.seconds)
        return [2 * item for item in items]


class Recorder:
    def __init__(self):
        self.releases: list[tuple[str, int]] = []
        self.waits: list[float] = []
        self.sheds: list[tuple[str, int]] = []

    def released(self, reason, size, max_size):
        self.releases.append((reason, size))

    def waited(self, seconds):
        self.waits.append(seconds)

    def shed(self, reason, count):
        self.sheds.append((reason, count))


def test_a_lone_request_goes_at_once():
    model = SlowDoubler(0.0)
    batcher = MicroBatcher(model)
    started = time.monotonic()
    assert batcher.submit([21], deadline=within(5)) == [42]
    assert time.monotonic() - started < 0.05
    assert model.batches == [[21]]


@pytest.mark.parametrize("coalesce_only", [False, True])
def test_concurrent_requests_are_answered_by_fewer_larger_calls(coalesce_only):
    model = SlowDoubler(0.05)
    recorder = Recorder()
    batcher = MicroBatcher(model, BatchQueue(max_batch_size=16, coalesce_only=coalesce_only), recorder)
    answers: dict[int, list[int]] = {}

    def caller(n: int) -> None:
        answers[n] = batcher.submit([n, n + 1000], deadline=within(10))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {n: [2 * n, 2 * (n + 1000)] for n in range(40)}
    sizes = [size for _, size in recorder.releases]
    assert sum(sizes) == 80 and max(sizes) <= 16 and len(recorder.waits) == 80
    assert len(model.batches) < 20, f"{len(model.batches)} calls for 80 items"
    assert {reason for reason, _ in recorder.releases} <= {"full", "window", "deadline", "idle"}


def test_a_failed_call_fails_each_of_its_requests_and_the_batcher_recovers():
    calls = []

    def flaky(items, deadline):
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("model server hiccup")
        return items

    batcher = MicroBatcher(flaky)
    with pytest.raises(ValueError, match="hiccup"):
        batcher.submit([1, 2], deadline=within(5))
    assert batcher.submit([3], deadline=within(5)) == [3]


def test_wrong_result_count_is_an_error_not_a_mixup():
    batcher = MicroBatcher(lambda items, deadline: items[:-1])
    with pytest.raises(RuntimeError, match="results for"):
        batcher.submit([1, 2], deadline=within(5))


def test_the_model_call_is_given_the_latest_deadline_of_its_requests():
    deadlines: list[float] = []
    batcher = MicroBatcher(lambda items, deadline: deadlines.append(deadline) or items)
    deadline = within(3)
    batcher.submit([1], deadline=deadline)
    assert deadlines == [deadline]


def test_timeout_when_the_model_never_answers():
    release = threading.Event()
    batcher = MicroBatcher(lambda items, deadline: release.wait(10) and items)
    with pytest.raises(DeadlineExceeded):
        batcher.submit([1], deadline=within(0.1))
    release.set()


def blocked_batcher(max_queued: int = 1024) -> tuple[MicroBatcher, list[list[int]], threading.Event, Recorder]:
    """A batcher whose first model call waits for `release`: what queues meanwhile stays queued."""
    calls: list[list[int]] = []
    release = threading.Event()

    def run_batch(items: list[int], deadline: float) -> list[int]:
        calls.append(list(items))
        release.wait(10)
        return items

    recorder = Recorder()
    batcher = MicroBatcher(run_batch, BatchQueue(max_queued=max_queued, coalesce_only=True), recorder)
    threading.Thread(target=batcher.submit, args=([1], within(10)), daemon=True).start()
    wait_for(lambda: calls == [[1]])
    return batcher, calls, release, recorder


def test_a_request_that_gave_up_is_never_sent_to_the_model():
    batcher, calls, release, _ = blocked_batcher()
    with pytest.raises(DeadlineExceeded):
        batcher.submit([2, 3], deadline=within(0.05))  # waits behind the blocked call, then gives up
    release.set()
    assert batcher.submit([4], deadline=within(5)) == [4]
    assert calls == [[1], [4]], "2 and 3 were dropped before the call"


def test_a_full_queue_refuses_at_once_and_says_so():
    batcher, calls, release, recorder = blocked_batcher(max_queued=2)
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(batcher.submit([2, 3], deadline=within(10))))
    waiter.start()
    wait_for(lambda: len(batcher.rules.queued) == 2)
    started = time.monotonic()
    with pytest.raises(Shed):
        batcher.submit([5], deadline=within(10))
    assert time.monotonic() - started < 0.5, "refused at once, not after waiting"
    release.set()
    waiter.join(5)
    assert answers == [[2, 3]]
    assert 5 not in [item for call in calls for item in call]
    assert recorder.sheds == [("queue_full", 1)]


# --- failures that keep nothing alive, observers that cannot stop it, callers that left ------------

class Photo:
    """A request's input, as big as a decoded photo; a weak reference says when it is freed."""

    def __init__(self, megabytes: int = 2):
        self.pixels = bytearray(megabytes << 20)


def test_each_waiter_of_a_failed_batch_gets_its_own_error_and_its_input_is_freed_at_once():
    calls: list[int] = []
    release = threading.Event()

    def run_batch(items, deadline):
        calls.append(len(items))
        if len(calls) == 1:
            release.wait(10)
            return items
        raise ValueError("the model server failed")

    batcher = MicroBatcher(run_batch, BatchQueue(coalesce_only=True))
    threading.Thread(target=batcher.submit, args=([0], within(10)), daemon=True).start()
    wait_for(lambda: calls == [1])
    freed: list[weakref.ref] = []
    depths: list[int] = []
    notes: list[str] = []

    def waiter() -> None:
        photo = Photo()
        freed.append(weakref.ref(photo))
        try:
            batcher.submit([photo], deadline=within(10))
        except ValueError as error:
            depths.append(len(traceback.extract_tb(error.__traceback__)))
            notes.append(getattr(error, "__notes__", [""])[-1])

    gc.disable()  # freed by reference counting alone, not by a collection that happened to run
    try:
        waiters = [threading.Thread(target=waiter) for _ in range(8)]
        for thread in waiters:
            thread.start()
        wait_for(lambda: len(batcher.rules.queued) == 8)
        release.set()
        for thread in waiters:
            thread.join(5)
        assert calls == [1, 8] and len(depths) == 8
        wait_for(lambda: all(ref() is None for ref in freed), seconds=2)
    finally:
        gc.enable()
    assert len(set(depths)) == 1, f"one error raised by every waiter grows its traceback: {depths}"
    assert all("batcher's model call, at" in note for note in notes), "where it was raised, for the log"


class BrokenObserver:
    def released(self, reason, size, max_size):
        raise RuntimeError("the metrics backend broke")

    waited = shed = released


def test_an_observer_that_fails_never_stops_the_batcher():
    batcher = MicroBatcher(SlowDoubler(0.0), BatchQueue(max_queued=1), BrokenObserver())
    for n in range(3):
        assert batcher.submit([n], deadline=within(2)) == [2 * n]
    with pytest.raises(Shed):
        batcher.submit([1, 2], deadline=within(2))  # over max_queued: shed, and its report fails too
    assert batcher.alive() and batcher.observer_failures == 3 * 2 + 1
    assert batcher.submit([5], deadline=within(2)) == [10]


def test_a_stopped_loop_is_seen(monkeypatch):
    batcher = MicroBatcher(SlowDoubler(0.0))
    assert batcher.alive(), "not started yet"
    assert batcher.submit([1], deadline=within(2)) == [2] and batcher.alive()

    def broken(now):
        raise RuntimeError("a bug in the rules")

    monkeypatch.setattr(batcher.rules, "decide", broken)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the loop logs its own end
    with pytest.raises(DeadlineExceeded):
        batcher.submit([2], deadline=within(0.2))
    wait_for(lambda: not batcher.alive())


def test_a_request_whose_caller_left_is_dropped_unsent_when_its_batch_leaves():
    batcher, calls, release, recorder = blocked_batcher()
    left = threading.Event()
    asked: list[str] = []
    outcomes: dict[str, object] = {}

    def caller(name: str, items: list[int], abandoned) -> None:
        try:
            outcomes[name] = batcher.submit(items, deadline=within(10), abandoned=abandoned)
        except Shed as refused:
            outcomes[name] = refused.reason

    def gone() -> bool:
        asked.append("gone")
        return left.is_set()

    callers = [threading.Thread(target=caller, args=("left", [2, 3], gone)),
               threading.Thread(target=caller, args=("waits", [4], lambda: False))]
    for thread in callers:
        thread.start()
    wait_for(lambda: len(batcher.rules.queued) == 3)
    left.set()  # its client closed the connection while it was queued
    release.set()
    for thread in callers:
        thread.join(5)
    assert outcomes == {"left": "client_gone", "waits": [4]}
    assert calls == [[1], [4]], "2 and 3 never reached the model"
    assert asked == ["gone"], "asked once per request, not per example"
    assert recorder.sheds == [("client_gone", 1)]
