"""Sentiment of Chinese texts with the `lstm` model: segmentation, one Predict call, decoding."""

from __future__ import annotations

import dataclasses

from model_preprocessing.text import load_dictionary, pad_batch, segment
from service_kit.batching import MicroBatcher
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
        self.batcher = MicroBatcher(self._predict, settings.model_max_batch_size, max_queued=settings.model_max_queued
                                    ) if settings.model_batching else None
        load_dictionary()  # a no-op when gunicorn.conf.py loaded it in the master already

    def check_texts(self, texts: list[str]) -> list[list[str]]:
        """Segment every text, refusing the request before any model call if one is unusable."""
        sentences = []
        for index, text in enumerate(texts):
            where = f"text {index}" if len(texts) > 1 else "the text"
            if len(text) > self.settings.max_text_chars:
                raise ApiError(413, "text_too_long",
                               f"{where} has {len(text)} characters; the limit is {self.settings.max_text_chars}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # JSON's "\ud800": a lone surrogate, not text; the model takes UTF-8
                raise ApiError(400, "invalid_text", f"{where} holds an unpaired surrogate code point") from None
            words = segment(text)
            if not words:
                raise ApiError(422, "empty_text", f"{where} has no words after segmentation")
            sentences.append(words)
        return sentences

    def classify(self, texts: list[str]) -> SentimentBatch:
        sentences = self.check_texts(texts)
        if self.batcher is None:
            answers = self._predict(sentences)
        else:  # together with this worker's other requests of the moment
            answers = self.batcher.submit(sentences, timeout=self.settings.model_timeout_seconds + 1)
        return SentimentBatch([sentiment for sentiment, _ in answers], answers[0][1])

    def _predict(self, sentences: list[list[str]]) -> list[tuple[Sentiment, int | None]]:
        """One Predict call for any number of sentences (padding never changes an answer)."""
        words, nwords = pad_batch(sentences)
        MODEL_BATCH_SIZE.labels(self.settings.model_name).observe(len(sentences))
        result = self.client.predict(
            self.settings.model_name, {"words": words, "nwords": nwords},
            signature_name=self.settings.model_signature, version_label=self.settings.model_version_label or None,
        )
        labels, class_ids, softmax = (result.outputs[k] for k in ("labels", "classes_id", "softmax"))
        return [(Sentiment(label.decode("utf-8"), int(class_id), [round(float(p), 6) for p in row]),
                 result.model_version)
                for label, class_id, row in zip(labels, class_ids, softmax)]
