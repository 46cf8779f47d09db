"""One model's Predict calls while a rollout of it runs (model_rollout: its stages; the state
file every worker reads: service_kit.core.rollout_state): the live version asked for by number
while the candidate is loaded beside it, a share of the calls answered by the candidate (canary),
a share copied to it off the callers' path and the answers compared (shadow), and what each cost
on the worker's metrics, where the rollout's controller reads them.

A caller never pays for the candidate's faults: a canary call that fails is asked of the live
version (within the deadline), and a shadow call runs after the caller's answer, is never waited
for, and is the first thing dropped (one at a time per worker, none while requests wait for the
model)."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np

from service_kit.core import metrics
from service_kit.core.rollout_state import ACTIVE_STAGES, FINAL_STAGES, Rollout, Watcher
from tfserving_client import ModelServerError, PredictResult

log = logging.getLogger(__name__)

# Failures that say the model server is gone, not that the candidate is wrong: not held against it.
NOT_THE_CANDIDATES_FAULT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
SHADOW_CALLS_AT_ONCE = 1  # per worker


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One example's candidate answer against the live one (a service's `compare` hook)."""

    agreed: bool
    distance: float  # 0: the same answer; the service says how far apart two of its answers are


def same_arrays(live: Any, candidate: Any) -> Comparison:
    """The default comparison: equal up to float rounding."""
    agreed = bool(np.allclose(np.asarray(live, dtype=float), np.asarray(candidate, dtype=float), atol=1e-6))
    return Comparison(agreed, 0.0 if agreed else 1.0)


# ask(inputs, version or None, deadline) -> the model server's answer; None: as the settings say.
Ask = Callable[[dict[str, np.ndarray], int | None, float], PredictResult]


class RolloutCalls:
    def __init__(self, model: str, directory: str, ask: Ask,
                 from_outputs: Callable[[dict[str, np.ndarray], int], Sequence[Any]],
                 compare: Callable[[Any, Any], Comparison], waiting: Callable[[], int] = lambda: 0):
        self.model = model
        self.watcher = Watcher(directory or None, model)
        self.ask, self.from_outputs, self.compare, self.waiting = ask, from_outputs, compare, waiting
        self._shadows = 0
        self._lock = threading.Lock()
        self._shown_stage: str | None = None

    def current(self) -> Rollout | None:
        rollout = self.watcher.current()
        stage = rollout.stage if rollout is not None else None
        if stage != self._shown_stage:
            for known in (*ACTIVE_STAGES, *FINAL_STAGES):
                metrics.ROLLOUT_STAGE.labels(self.model, known).set(1 if known == stage else 0)
            if rollout is not None:
                log.info("rollout of %s: version %s -> %s, %s; asking for version %s", self.model, rollout.live,
                         rollout.candidate, stage, rollout.pinned or "(as models.config serves)")
            self._shown_stage = stage
        return rollout

    def predict(self, rollout: Rollout, inputs: dict[str, np.ndarray], count: int,
                deadline: float) -> tuple[Sequence[Any], int | None]:
        """The batch's results and the version that gave them, from the candidate for the canary's
        share of calls (the live version when it fails), else from the live version."""
        if random.random() < rollout.canary_share():
            answered = self._timed(rollout, "canary", rollout.candidate, inputs, deadline)
            if answered is not None:
                return self.from_outputs(answered.outputs, count), answered.model_version
        live = self._timed(rollout, "live", rollout.pinned, inputs, deadline, may_fail=True) if rollout.active \
            else self.ask(inputs, rollout.pinned, deadline)
        results = self.from_outputs(live.outputs, count)
        if random.random() < rollout.shadow_share():
            self._shadow(rollout, inputs, results, count, deadline)
        return results, live.model_version

    def _timed(self, rollout: Rollout, role: str, version: int | None, inputs: dict[str, np.ndarray],
               deadline: float, may_fail: bool = False) -> PredictResult | None:
        started = time.monotonic()
        try:
            answered = self.ask(inputs, version, deadline)
        except ModelServerError as error:
            if role != "live" and error.code not in NOT_THE_CANDIDATES_FAULT:
                metrics.ROLLOUT_CALLS.labels(self.model, str(version), role, "error").inc()
            if may_fail:
                raise
            return None
        metrics.ROLLOUT_CALL_SECONDS.labels(self.model, role).observe(time.monotonic() - started)
        metrics.ROLLOUT_CALLS.labels(self.model, str(version), role, "ok").inc()
        return answered

    def _shadow(self, rollout: Rollout, inputs: dict[str, np.ndarray], live: Sequence[Any], count: int,
                deadline: float) -> None:
        if self.waiting():
            metrics.ROLLOUT_SHADOW_SHED.labels(self.model, "requests_waiting").inc()
            return
        with self._lock:
            if self._shadows >= SHADOW_CALLS_AT_ONCE:
                metrics.ROLLOUT_SHADOW_SHED.labels(self.model, "shadow_in_flight").inc()
                return
            self._shadows += 1
        # Its own deadline: as long as the caller's call had, never longer than the caller's timeout.
        budget = max(0.001, deadline - time.monotonic())
        threading.Thread(target=self._compare, args=(rollout, inputs, live, count, budget), daemon=True).start()

    def _compare(self, rollout: Rollout, inputs: dict[str, np.ndarray], live: Sequence[Any], count: int,
                 budget: float) -> None:
        try:
            answered = self._timed(rollout, "shadow", rollout.candidate, inputs, time.monotonic() + budget)
            if answered is None:
                return
            version = str(rollout.candidate)
            for ours, theirs in zip(live, self.from_outputs(answered.outputs, count)):
                comparison = self.compare(ours, theirs)
                metrics.ROLLOUT_SHADOW_COMPARED.labels(self.model, version, str(comparison.agreed).lower()).inc()
                metrics.ROLLOUT_SHADOW_DISTANCE.labels(self.model, version).inc(comparison.distance)
        except Exception:  # a shadow never takes a worker down; it is only evidence lost
            log.exception("a shadow call to version %s of %s failed", rollout.candidate, self.model)
        finally:
            with self._lock:
                self._shadows -= 1
