"""The HTTP ceiling: text-api's whole HTTP path (nginx, gunicorn with the same config, Flask with
service_kit's request ids, metrics and logs, the contract: the body parsed and validated by its
request model, the hooks, the reply made by its reply model) answering a constant instead of
segmenting and asking the model. Without a batcher (MODEL_BATCHING=off): there is no model queue
to admit requests to, as the ceiling had none before the contract. Benchmark use only.

    cd services/text-api && gunicorn -c python:service_kit.http.gunicorn_config 'bench.constant_app:create_app()'
"""

from __future__ import annotations

from flask import Flask

from service_kit.core.deadlines import RequestBudget
from service_kit.core.model_call import Prediction
from service_kit.http.app import service_app
from text_api.schemas import Sentiment
from text_api.sentiment import SentimentService

ANSWER = Sentiment(label="POS", class_id=1, probabilities=[0.5, 0.5])


class ConstantSentiment(SentimentService):
    """SentimentService's operations and hooks, without segmentation and the model call."""

    def prepare(self, texts: list[str], deadline: float) -> list[list[str]]:
        return [[text] for text in texts]

    def predict(self, examples: list[list[str]], budget: RequestBudget) -> Prediction[Sentiment]:
        return Prediction([ANSWER] * len(examples), 1)


def create_app() -> Flask:
    return service_app(ConstantSentiment, ConstantSentiment.settings_class.from_env(model_batching="off"))
