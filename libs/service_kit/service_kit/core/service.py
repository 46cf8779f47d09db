"""A model behind a service as one class of hooks the kit calls in order (LitServe's `LitAPI`):

    decode(request) -> items               cheap: what the validated request asks for
    (admission: refused now if the model's queue could not answer before the deadline)
    holding(items, deadline)               what must be held meanwhile (memory), a context manager
    prepare(items, deadline) -> examples   costly: segmenting, decoding
    to_inputs(examples) -> tensors         (batched with the worker's other requests: ModelEndpoint)
    from_outputs(tensors, count) -> results
    encode(request, items, prediction, reply) -> the reply, as the model `reply` (None: bytes)

The kit reads the request's deadline once and passes it along, decides admission and batching,
and times each stage (`Server-Timing`); a service writes only the hooks and its request and reply
models (`operations`, service_kit.http.contract). No web framework here: the HTTP layer
(service_kit.http) turns a request into the validated model `decode` takes, and the reply into HTTP.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar, Generic, TypeVar

from service_kit.core import deadlines
from service_kit.core.model_endpoint import Example, ModelEndpoint, Output, Prediction
from service_kit.core.settings import ServiceSettings

Item = TypeVar("Item")


@dataclasses.dataclass(frozen=True)
class Binary:
    """A reply that is bytes as they are (an image), with headers of its own."""

    data: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class ModelService(ModelEndpoint[Example, Output], Generic[Item, Example, Output]):
    # The service's settings (environment variables and their defaults).
    settings_class: ClassVar[type[ServiceSettings]] = ServiceSettings
    # Its HTTP operations (service_kit.http.contract.Operation): routes, validation and the document.
    operations: ClassVar[tuple[Any, ...]] = ()

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

    def encode(self, request: Any, items: list[Item], prediction: Prediction[Output], reply: Any) -> Any:
        """The reply: an instance of `reply`, the model of the media type the caller takes among the
        operation's (negotiated by the HTTP layer), or Binary when `reply` is None (bytes)."""
        raise NotImplementedError

    def deadline(self) -> float:
        """The request's deadline (time.monotonic), read once by the kit and passed to each hook."""
        return deadlines.current_or_default(self.settings).deadline

    def handle(self, request: Any, reply: Any, deadline: float) -> Any:
        """The hooks, in order, within the request's deadline."""
        items = self.decode(request)
        self.check_in_time(len(items), deadline)
        with self.holding(items, deadline):
            examples = self.prepare(items, deadline)
            return self.encode(request, items, self.predict(examples), reply)
