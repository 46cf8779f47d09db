"""Each request's deadline, and where its time went (the `Server-Timing` header).

A caller states how long it will wait with `X-Request-Timeout-Ms`, a whole number of milliseconds
(clamped to MODEL_TIMEOUT_SECONDS); without it the service's REQUEST_TIMEOUT_MS applies. The clock
starts when nginx passed the request on (`X-Request-Start: t=<seconds>`, nginx's $msec), so time
spent waiting for a busy worker counts. Both headers are read once, by `read` (in front of Flask:
service_kit.http.admission), and the budget is passed to every hook and to the model call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from service_kit.core.refusals import InvalidTimeout
from service_kit.core.settings import ServiceSettings

HEADER = "X-Request-Timeout-Ms"
START_HEADER = "X-Request-Start"
# The same headers as WSGI environ keys.
HEADER_KEY, START_HEADER_KEY = (f"HTTP_{name.upper().replace('-', '_')}" for name in (HEADER, START_HEADER))
# A stamp further off than this is a clock problem, not a wait: ignored.
_PLAUSIBLE_WAIT_SECONDS = 60.0


@dataclasses.dataclass
class RequestBudget:
    """Times on time.monotonic's clock: when nginx passed the request on, when it reached this
    worker, when it must be answered by, and when it reached the model's queue, left it, and had its
    answer; and how to tell that its caller is gone (service_kit.http.app asks the connection)."""

    received: float
    deadline: float
    arrived: float = 0.0
    submitted: float | None = None
    dispatched: float | None = None
    answered: float | None = None
    abandoned: Callable[[], bool] | None = None

    def remaining(self, now: float | None = None) -> float:
        return self.deadline - (time.monotonic() if now is None else now)

    def server_timing(self, finished: float) -> str:
        """`queue`, `preprocess`, `model`, `postprocess` and `total`, in ms; the stages a request
        did not reach are left out."""
        stages = [("preprocess", self.arrived, self.submitted), ("queue", self.submitted, self.dispatched),
                  ("model", self.dispatched, self.answered), ("postprocess", self.answered, finished),
                  ("total", self.arrived, finished)]
        return ", ".join(f"{name};dur={1000 * (end - start):.2f}" for name, start, end in stages
                         if start is not None and end is not None)


def timeout_seconds(header: str | None, settings: ServiceSettings) -> float:
    """The request's own timeout, or the service's default; at most MODEL_TIMEOUT_SECONDS.
    The header is a whole number of milliseconds, at least 1: a fraction of a millisecond is no
    deadline any answer could meet, and retrying would never help, so it is refused (400)."""
    if header is None:
        return min(settings.request_timeout_ms / 1000, settings.model_timeout_seconds)
    text = header.strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidTimeout(f"{HEADER} must be a whole number of milliseconds, not {header[:40]!r}")
    if len(text) > _MOST_DIGITS:  # longer than any timeout: the longest allowed (and int() stays cheap)
        return settings.model_timeout_seconds
    if int(text) < 1:
        raise InvalidTimeout(f"{HEADER} must be at least 1 (milliseconds)")
    return min(int(text) / 1000, settings.model_timeout_seconds)


# Digits past which a timeout is longer than any MODEL_TIMEOUT_SECONDS (10^12 ms: 31 years).
_MOST_DIGITS = 12


def waited_before(start_header: str | None) -> float:
    """Seconds since nginx passed the request on (`t=<seconds since the epoch>`); 0 if unknown."""
    if not start_header or not start_header.startswith("t="):
        return 0.0
    try:
        waited = time.time() - float(start_header[2:])
    except ValueError:
        return 0.0
    return waited if 0.0 <= waited < _PLAUSIBLE_WAIT_SECONDS else 0.0


def read(timeout_header: str | None, start_header: str | None, settings: ServiceSettings,
         abandoned: Callable[[], bool] | None = None, now: float | None = None) -> RequestBudget:
    """The request's budget from its headers, read once (InvalidTimeout for a bad timeout header).
    Under the batching modes kept for side-by-side benchmarks (MODEL_BATCHING coalesce and off: no
    deadline rules) the deadline is the model timeout and a second from arrival, whatever the request
    says: the one place that rule is decided."""
    now = time.monotonic() if now is None else now
    timeout = timeout_seconds(timeout_header, settings)
    if settings.model_batching != "deadline":
        return RequestBudget(now, now + settings.model_timeout_seconds + 1, arrived=now, abandoned=abandoned)
    received = now - waited_before(start_header)
    return RequestBudget(received, received + timeout, arrived=now, abandoned=abandoned)


def outside_a_request(settings: ServiceSettings) -> RequestBudget:
    """A budget for model calls made outside a request (scripts, tests): the service's default."""
    return read(None, None, settings)


# How many recent mean deviations an estimate adds to its mean (RecentDuration, and the batcher's
# LatencyModel). TCP's retransmission timer adds four to its one duration; a request's prediction
# adds up three such estimates (preparing it, the call in flight, its own call), and three bounds of
# four summed were far past the bound of the sum: on one busy core at twice the capacity, the
# workers refused 2-8 thousand requests in 10 s as predicted late, each costing them a request's
# parsing, each replaced at once by nginx (its bound freed), and 48-85% of capacity was answered in
# time; with two, nginx made most refusals and 76-94% was (bench/results/where_time_goes.md, issue 35).
DEVIATIONS = 2


class RecentDuration:
    """How long a stage takes now: a recent mean plus DEVIATIONS mean deviations (TCP's
    retransmission timer), so that a request let in on it rarely runs past its deadline when
    durations vary.

    Only the requests let in renew it; so that a burst cannot make it refuse everything for ever
    (nothing let in, nothing to correct it), an estimate not renewed fades, by half every
    `FADE_HALF_LIFE` seconds."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.deviation = 0.0
        self._observed_at = 0.0

    def observe(self, seconds: float, now: float) -> None:
        self.deviation += 0.25 * (abs(seconds - self.mean) - self.deviation)
        self.mean += 0.125 * (seconds - self.mean)
        self._observed_at = now

    def estimate(self, now: float) -> float:
        return (self.mean + DEVIATIONS * self.deviation) * fade(now - self._observed_at)


FADE_HALF_LIFE = 0.1


def fade(seconds_unrenewed: float) -> float:
    """The weight left to an estimate that nothing has renewed for this long."""
    return 0.5 ** (max(0.0, seconds_unrenewed) / FADE_HALF_LIFE)
