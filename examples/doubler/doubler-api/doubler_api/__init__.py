"""doubler-api: twice each number, answered by the `doubler` model."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from service_kit.core.model_call import Prediction
from service_kit.core.service import ModelService
from service_kit.http.contract import Operation, Reply, Strict

JSON = "application/json"


class Numbers(Strict):
    x: Annotated[list[Annotated[float, Field(ge=-1e30, le=1e30)]], Field(min_length=1, max_length=1000)]


class Doubled(Reply):
    y: list[float]
    model_version: int | None


class DoublerService(ModelService[float, float, float]):
    """Each number is an example: one request's numbers, and other requests', go in one model call."""

    operations = (Operation("POST", "/double", "Twice each number", {JSON: Numbers}, {JSON: Doubled}),)

    def decode(self, request: Numbers) -> list[float]:
        return request.x

    def to_inputs(self, numbers: list[float]) -> dict[str, np.ndarray]:
        return {"x": np.asarray(numbers, np.float32)}

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> list[float]:
        return [float(value) for value in outputs["y"]]

    def encode(self, request: Numbers, numbers: list[float], prediction: Prediction[float], reply: type) -> Doubled:
        return Doubled(y=prediction.results, model_version=prediction.model_version)
