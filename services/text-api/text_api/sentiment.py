"""Sentiment of Chinese texts with the `lstm` model: segmentation, one Predict call, decoding."""

from __future__ import annotations

import dataclasses

from model_preprocessing.text import load_dictionary, pad_batch, segment
from service_kit.errors import ApiError
from service_kit.metrics import MODEL_BATCH_SIZE
from text_api.settings import TextApiSettings
from tfserving_client import ModelServerClient


@dataclasses.dataclass(frozen=True)
class Sentiment:
    label: str
    class_id: int
    probabilities: list[float]  # indexed by class_id


@dataclasses.dataclass(frozen=True)
class SentimentBatch:
    results: list[Sentiment]
    model_version: int | None


class SentimentModel:
    def __init__(self, client: ModelServerClient, settings: TextApiSettings):
        self.client = client
        self.settings = settings
        load_dictionary()  # about 1 s, paid at worker start rather than by the first caller

    def check_texts(self, texts: list[str]) -> list[list[str]]:
        """Segment every text, refusing the request before any model call if one is unusable."""
        sentences = []
        for index, text in enumerate(texts):
            where = f"text {index}" if len(texts) > 1 else "the text"
            if len(text) > self.settings.max_text_chars:
                raise ApiError(413, "text_too_long",
                               f"{where} has {len(text)} characters; the limit is {self.settings.max_text_chars}")
            words = segment(text)
            if not words:
                raise ApiError(422, "empty_text", f"{where} has no words after segmentation")
            sentences.append(words)
        return sentences

    def classify(self, texts: list[str]) -> SentimentBatch:
        sentences = self.check_texts(texts)
        words, nwords = pad_batch(sentences)
        MODEL_BATCH_SIZE.labels(self.settings.model_name).observe(len(sentences))
        result = self.client.predict(
            self.settings.model_name, {"words": words, "nwords": nwords},
            signature_name=self.settings.model_signature,
        )
        labels, class_ids, softmax = (result.outputs[k] for k in ("labels", "classes_id", "softmax"))
        return SentimentBatch(
            results=[Sentiment(label.decode("utf-8"), int(class_id), [round(float(p), 6) for p in row])
                     for label, class_id, row in zip(labels, class_ids, softmax)],
            model_version=result.model_version,
        )
