"""One model behind a service, in the shape of LitServe's `LitAPI`: decode -> batch -> predict ->
encode.

The base owns what every service needs around TF Serving: the micro-batcher (or none, with
MODEL_BATCHING off), the batch-size metric, and the Predict call with the signature, version
label, output filter and deadline. A service subclasses it with two hooks, `to_inputs` (prepared
examples -> the signature's input tensors) and `from_outputs` (output tensors -> one result per
example); decoding a request into examples and encoding results into an answer stay in the
service, around `predict`.

Model code says what is wrong with an input by raising an `InputError` below; it knows nothing of
HTTP. service_kit.errors turns each into its status, in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np

from service_kit.batching import MicroBatcher
from service_kit.metrics import MODEL_BATCH_SIZE
from service_kit.settings import ServiceSettings
from tfserving_client import ModelServerClient

Example = TypeVar("Example")
Output = TypeVar("Output")


class InputError(Exception):
    """An input the model cannot take; `code` is a stable slug for callers."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidInput(InputError):
    """Malformed: not what it claims to be (a corrupt image, a lone surrogate)."""


class InputTooLarge(InputError):
    """Over a limit (characters, pixels, memory)."""


class UnsupportedInput(InputError):
    """Of a kind the model does not take (not an image)."""


class UnusableInput(InputError):
    """Well-formed but empty for the model (no words, no pixels)."""


class Busy(Exception):
    """The worker has no room for this input now; worth retrying shortly."""


@dataclasses.dataclass(frozen=True)
class Prediction(Generic[Output]):
    results: list[Output]  # one per example, in order
    model_version: int | None  # the version that answered


class ModelEndpoint(Generic[Example, Output]):
    # The outputs to ask for (Predict's output_filter); None: every output of the signature.
    output_names: tuple[str, ...] | None = None

    def __init__(self, client: ModelServerClient, settings: ServiceSettings):
        self.client = client
        self.settings = settings
        self.batcher = MicroBatcher(self._predict_batch, settings.model_max_batch_size,
                                    max_queued=settings.model_max_queued) if settings.model_batching else None

    def to_inputs(self, examples: list[Example]) -> dict[str, np.ndarray]:
        """A batch of prepared examples as the signature's input tensors."""
        raise NotImplementedError

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> Sequence[Output]:
        """The signature's output tensors for a batch of `count` examples, one result per example."""
        raise NotImplementedError

    def predict(self, examples: list[Example]) -> Prediction[Output]:
        """A result for each example, batched with this worker's other requests of the moment."""
        if self.batcher is None:
            answers = self._predict_batch(examples)
        else:
            answers = self.batcher.submit(examples, timeout=self.settings.model_timeout_seconds + 1)
        return Prediction([output for output, _ in answers], answers[0][1])

    def _predict_batch(self, examples: list[Example]) -> list[tuple[Output, int | None]]:
        """One Predict call for a batch."""
        MODEL_BATCH_SIZE.labels(self.settings.model_name).observe(len(examples))
        result = self.client.predict(
            self.settings.model_name, self.to_inputs(examples),
            signature_name=self.settings.model_signature, version_label=self.settings.model_version_label or None,
            output_filter=list(self.output_names) if self.output_names else None,
        )
        outputs = self.from_outputs(result.outputs, len(examples))
        return [(output, result.model_version) for output in outputs]
