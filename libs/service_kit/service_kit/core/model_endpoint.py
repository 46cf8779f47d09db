"""One model behind a service, in the shape of LitServe's `LitAPI`: decode -> batch -> predict ->
encode.

The base owns what every service needs around TF Serving: the micro-batcher (or none, with
MODEL_BATCHING off) and its metrics, the request's deadline and timings (service_kit.core.deadlines),
and the Predict call with the signature, version label, output filter and deadline. A service
subclasses it with two hooks, `to_inputs` (prepared examples -> the signature's input tensors) and
`from_outputs` (output tensors -> one result per example); decoding a request into examples and
encoding results into an answer stay in the service, around `predict`.

Model code says what is wrong with an input by raising an `InputError` (service_kit.core.input_errors,
re-exported here); it knows nothing of HTTP. service_kit.http.errors turns each into its status, in one place.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

import numpy as np

from service_kit.core import deadlines, metrics
from service_kit.core.batching import BatcherOverloaded, BatchQueue, MicroBatcher
from service_kit.core.input_errors import Busy, InputError, InputTooLarge, InvalidInput, UnsupportedInput, UnusableInput
from service_kit.core.settings import ServiceSettings
from tfserving_client import ModelServerClient

__all__ = ["Busy", "InputError", "InputTooLarge", "InvalidInput", "ModelEndpoint", "Prediction", "UnsupportedInput",
           "UnusableInput"]

Example = TypeVar("Example")
Output = TypeVar("Output")


@dataclasses.dataclass(frozen=True)
class Prediction(Generic[Output]):
    results: list[Output]  # one per example, in order
    model_version: int | None  # the version that answered


# With nothing let in for this long, the next request is (see ModelEndpoint.predicted_seconds).
PROBE_SECONDS = 0.05


class ModelEndpoint(Generic[Example, Output]):
    # The outputs to ask for (Predict's output_filter); None: every output of the signature.
    output_names: tuple[str, ...] | None = None

    def __init__(self, client: ModelServerClient, settings: ServiceSettings):
        self.client = client
        self.settings = settings
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
                                        group_of=self.batch_group)

    def to_inputs(self, examples: list[Example]) -> dict[str, np.ndarray]:
        """A batch of prepared examples as the signature's input tensors."""
        raise NotImplementedError

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> Sequence[Output]:
        """The signature's output tensors for a batch of `count` examples, one result per example."""
        raise NotImplementedError

    def batch_group(self, example: Example) -> Hashable:
        """Only examples of one group share a model call: for inputs padded to a batch's longest
        member, a length class. One group by default."""
        return None

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
        """Refuse now (BatcherOverloaded), before costly preparation (segmenting, decoding), a
        request the model's queue could not answer before its deadline (`predict` checks again)."""
        if self.batcher is not None and self.settings.model_batching == "deadline" \
                and not self._probing(time.monotonic()):
            self.batcher.check_in_time(count, deadline)

    def _deadline(self, budget: deadlines.RequestBudget) -> float:
        """The request's deadline; the older modes keep their fixed one (the model timeout, and a second)."""
        if self.settings.model_batching == "deadline":
            return budget.deadline
        return budget.arrived + self.settings.model_timeout_seconds + 1

    def predict(self, examples: list[Example]) -> Prediction[Output]:
        """A result for each example, batched with this worker's other requests of the moment,
        within the request's deadline."""
        budget = deadlines.current_or_default(self.settings)
        budget.submitted = self._last_let_in = time.monotonic()
        self.preparation.observe(budget.submitted - budget.arrived, budget.submitted)
        deadline = self._deadline(budget)
        if self.batcher is None:
            if deadline <= budget.submitted:
                metrics.MODEL_REQUESTS_SHED.labels(self.settings.model_name, "expired").inc()
                raise BatcherOverloaded("expired", "the request's deadline passed before the model could be asked")
            budget.dispatched = budget.submitted
            answers = self._predict_batch(examples, deadline)
        else:
            answers, budget.dispatched = self.batcher.submit_timed(examples, deadline, budget.abandoned)
        budget.answered = time.monotonic()
        return Prediction([output for output, _ in answers], answers[0][1])

    def _predict_batch(self, examples: list[Example], deadline: float) -> list[tuple[Output, int | None]]:
        """One Predict call for a batch, given until the latest deadline among its requests."""
        metrics.MODEL_BATCH_SIZE.labels(self.settings.model_name).observe(len(examples))
        result = self.client.predict(
            self.settings.model_name, self.to_inputs(examples),
            signature_name=self.settings.model_signature, version_label=self.settings.model_version_label or None,
            output_filter=list(self.output_names) if self.output_names else None,
            timeout_seconds=max(0.001, min(self.settings.model_timeout_seconds, deadline - time.monotonic())),
        )
        outputs = self.from_outputs(result.outputs, len(examples))
        return [(output, result.model_version) for output in outputs]
