"""A model behind a service as one class of hooks the kit calls in order (LitServe's `LitAPI`):

    decode(request) -> items               cheap: what the validated request asks for
    (admission: refused now if the model's queue could not answer before the deadline)
    holding(items, deadline)               what must be held meanwhile (memory), a context manager
    prepare(items, deadline) -> examples   costly: segmenting, decoding
    to_inputs(examples) -> tensors         (batched with the worker's other requests: ModelCall)
    from_outputs(tensors, count) -> results
    compare(live, candidate) -> Comparison   a rollout's shadow: one example's two answers compared
    encode(request, items, prediction, reply) -> the reply, as the model `reply` (None: bytes);
                                           an operation may bring its own encoder instead

The kit reads the request's deadline once (service_kit.http.admission) and passes it to each hook
and to the model call, decides admission and batching, and times each stage (`Server-Timing`); a
service writes only the hooks and its request and reply models (`operations`,
service_kit.http.contract). No web framework here: the HTTP layer (service_kit.http) turns a request
into the validated model `decode` takes, and the reply into HTTP.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from service_kit.core.deadlines import RequestBudget
from service_kit.core.model_call import Example, ModelCall, Output, Prediction
from service_kit.core.rollout import Comparison, same_arrays
from service_kit.core.settings import ServiceSettings
from service_roster import entry_of
from tfserving_client import ModelServerClient

Item = TypeVar("Item")
# An operation's own encoder (service_kit.http.contract.Operation.encode): encode's arguments.
Encoder = Callable[[Any, list, Prediction, Any], Any]


@dataclasses.dataclass(frozen=True)
class Binary:
    """A reply that is bytes as they are (an image), with headers of its own."""

    data: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class ModelService(Generic[Item, Example, Output]):
    # The service's settings (environment variables and their defaults).
    settings_class: ClassVar[type[ServiceSettings]] = ServiceSettings
    # Its HTTP operations (service_kit.http.contract.Operation): routes, validation and the document.
    operations: ClassVar[tuple[Any, ...]] = ()
    # The outputs to ask for (Predict's output_filter); None: every output of the signature.
    output_names: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, client: ModelServerClient, settings: ServiceSettings):
        self.client = client
        # Its model and body limit, where the settings leave them open, from its roster entry.
        self.settings = settings.with_roster_defaults(entry_of(type(self)))
        self.model_call: ModelCall[Example, Output] = ModelCall(client, self.settings, self.to_inputs,
                                                                self.from_outputs, self.output_names,
                                                                self.batch_group, self.compare)

    def setup(self) -> None:
        """Once, before the first request (e.g. wait for helper processes to start)."""

    def decode(self, request: Any) -> list[Item]:
        """The request's items, one per example the model will see; raise an InputError for one
        that is unusable. Cheap: admission has not happened yet."""
        return [request]

    def holding(self, items: list[Item], deadline: float) -> contextlib.AbstractContextManager:
        """What the request holds from admission to its reply (e.g. reserved memory)."""
        return contextlib.nullcontext()

    def room_for_body(self, nbytes: int, deadline: float) -> contextlib.AbstractContextManager:
        """What reading and parsing a request body of this size holds (e.g. reserved memory)."""
        return contextlib.nullcontext()

    def prepare(self, items: list[Item], deadline: float) -> list[Example]:
        """The model's examples (segmenting, decoding); by `deadline` (time.monotonic)."""
        return items  # type: ignore[return-value]

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

    def compare(self, live: Output, candidate: Output) -> Comparison:
        """A rollout's shadow comparison of one example's answers, the live version's and the
        candidate's: do they agree, and how far apart are they (0: the same)? By default, equal
        arrays; a service says what agreement means for its model."""
        return same_arrays(live, candidate)

    def encode(self, request: Any, items: list[Item], prediction: Prediction[Output], reply: Any) -> Any:
        """The reply: an instance of `reply`, the model of the media type the caller takes among the
        operation's (negotiated by the HTTP layer), or Binary when `reply` is None (bytes)."""
        raise NotImplementedError

    def predict(self, examples: list[Example], budget: RequestBudget) -> Prediction[Output]:
        """A result for each example, from the model (batched with this worker's other requests)."""
        return self.model_call.predict(examples, budget)

    def handle(self, request: Any, reply: Any, budget: RequestBudget, encode: Encoder | None = None) -> Any:
        """The hooks, in order, within the request's deadline; `encode`: the operation's own encoder."""
        items = self.decode(request)
        self.model_call.check_in_time(len(items), budget.deadline)
        with self.holding(items, budget.deadline):
            examples = self.prepare(items, budget.deadline)
            return (encode or self.encode)(request, items, self.predict(examples, budget), reply)
