"""One model's Predict calls for a worker's requests: batched with the worker's other requests of the
moment within each request's deadline (the micro-batcher, MODEL_BATCHING), or one call each, with
the signature, version label, output filter and deadline every call needs. A ModelService has one
(service_kit.core.service); the service's hooks make its input tensors and read its output tensors.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import numpy as np

from service_kit.core import deadlines, metrics
from service_kit.core.batch_rules import BatchQueue
from service_kit.core.micro_batcher import MicroBatcher
from service_kit.core.refusals import Shed
from service_kit.core.rollout import Comparison, RolloutCalls, same_arrays
from service_kit.core.settings import ServiceSettings
from tfserving_client import ModelServerClient

Example = TypeVar("Example")
Output = TypeVar("Output")


@dataclasses.dataclass(frozen=True)
class Prediction(Generic[Output]):
    results: list[Output]  # one per example, in order
    model_version: int | None  # the version that answered


# With nothing let in for this long, the next request is (see ModelCall.predicted_seconds).
PROBE_SECONDS = 0.05


class ModelCall(Generic[Example, Output]):
    """The Predict calls of one service's worker; `to_inputs` and `from_outputs` are its hooks."""

    def __init__(self, client: ModelServerClient, settings: ServiceSettings,
                 to_inputs: Callable[[list[Example]], dict[str, np.ndarray]],
                 from_outputs: Callable[[dict[str, np.ndarray], int], Sequence[Output]],
                 output_names: tuple[str, ...] | None = None,
                 batch_group: Callable[[Example], Hashable] | None = None,
                 compare: Callable[[Output, Output], Comparison] = same_arrays):
        self.client = client
        self.settings = settings
        self.to_inputs, self.from_outputs = to_inputs, from_outputs
        self.output_names = output_names  # Predict's output_filter; None: every output of the signature
        self.batcher: MicroBatcher | None = None
        # From a request reaching the worker to its examples reaching the model's queue.
        self.preparation = deadlines.RecentDuration()
        self._last_let_in: float | None = None  # when a request last reached the model's queue
        if settings.model_batching != "off":
            rules = BatchQueue(settings.model_max_batch_size, settings.model_max_queued,
                               max_window=settings.model_batch_window_max_ms / 1000,
                               margin=settings.model_deadline_margin_ms / 1000,
                               coalesce_only=settings.model_batching == "coalesce")
            self.batcher = MicroBatcher(self._predict_batch, rules, metrics.BatchMetrics(settings.model_name),
                                        group_of=batch_group)
        self.rollout = RolloutCalls(settings.model_name, settings.rollout_dir, self._ask, from_outputs, compare,
                                    waiting=lambda: len(self.batcher.rules.queued) if self.batcher else 0)

    def predicted_seconds(self, now: float) -> float:
        """How long a request arriving now would take to be answered: preparing it, then the
        model's queue and call. When no request has been let in for PROBE_SECONDS, 0: one is let
        in whatever the estimates say, so that its call renews them (a circuit breaker's half-open
        state); estimates renewed only by the requests they let in could otherwise, after an
        overload, keep out a light load for good (measured: 30% of a 25% load refused)."""
        if self._probing(now):
            return 0.0
        model = self.batcher.predicted_finish(1, now) - now if self.batcher is not None else 0.0
        return self.preparation.estimate(now) + model

    def serving(self) -> bool:
        """False when this worker's batcher has stopped: it would answer nothing again."""
        return self.batcher is None or self.batcher.alive()

    def _probing(self, now: float) -> bool:
        return self._last_let_in is not None and now - self._last_let_in > PROBE_SECONDS

    def check_in_time(self, count: int, deadline: float) -> None:
        """Refuse now (Shed), before costly preparation (segmenting, decoding), a request the
        model's queue could not answer before its deadline (`predict` checks again)."""
        if self.batcher is not None and self.settings.model_batching == "deadline" \
                and not self._probing(time.monotonic()):
            self.batcher.check_in_time(count, deadline)

    def predict(self, examples: list[Example], budget: deadlines.RequestBudget) -> Prediction[Output]:
        """A result for each example, batched with this worker's other requests of the moment,
        by the request's deadline; the budget records when the examples were queued, sent and answered."""
        budget.submitted = self._last_let_in = time.monotonic()
        self.preparation.observe(budget.submitted - budget.arrived, budget.submitted)
        if self.batcher is None:
            if budget.deadline <= budget.submitted:
                metrics.MODEL_REQUESTS_SHED.labels(self.settings.model_name, "expired").inc()
                raise Shed("expired", "the request's deadline passed before the model could be asked")
            budget.dispatched = budget.submitted
            answers = self._predict_batch(examples, budget.deadline)
        else:
            answers, budget.dispatched = self.batcher.submit_timed(examples, budget.deadline, budget.abandoned)
        budget.answered = time.monotonic()
        return Prediction([output for output, _ in answers], answers[0][1])

    def _predict_batch(self, examples: list[Example], deadline: float) -> list[tuple[Output, int | None]]:
        """One Predict call for a batch, given until the latest deadline among its requests."""
        metrics.MODEL_BATCH_SIZE.labels(self.settings.model_name).observe(len(examples))
        inputs = self.to_inputs(examples)
        rollout = self.rollout.current()
        if rollout is None:
            result = self._ask(inputs, None, deadline)
            outputs, version = self.from_outputs(result.outputs, len(examples)), result.model_version
        else:
            outputs, version = self.rollout.predict(rollout, inputs, len(examples), deadline)
        return [(output, version) for output in outputs]

    def _ask(self, inputs: dict[str, np.ndarray], version: int | None, deadline: float):
        """One Predict call: of `version`, else of the settings' label (else the newest version)."""
        return self.client.predict(
            self.settings.model_name, inputs, signature_name=self.settings.model_signature, version=version,
            version_label=None if version is not None else self.settings.model_version_label or None,
            output_filter=list(self.output_names) if self.output_names else None,
            timeout_seconds=max(0.001, min(self.settings.model_timeout_seconds, deadline - time.monotonic())),
        )
