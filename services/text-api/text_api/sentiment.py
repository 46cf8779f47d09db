"""Sentiment of Chinese texts with the `lstm` model: segmentation, padding, the label of each."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from model_preprocessing.text import load_dictionary, pad_batch
from service_kit.core import deadlines
from service_kit.core.model_endpoint import InputTooLarge, InvalidInput, ModelEndpoint, UnusableInput
from text_api.segmentation import Segmenter
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


class SentimentModel(ModelEndpoint[list[str], Sentiment]):
    """A text is its words (jieba); a batch is padded (padding never changes an answer)."""

    def __init__(self, client: ModelServerClient, settings: TextApiSettings):
        super().__init__(client, settings)
        load_dictionary()  # a no-op when gunicorn's master preloaded it (service.toml)
        self.segmenter = Segmenter(settings.model_name)

    def check_texts(self, texts: list[str]) -> list[list[str]]:
        """Segment every text, refusing the request before any model call if one is unusable."""
        for index, text in enumerate(texts):
            where = _where(index, texts)
            if len(text) > self.settings.max_text_chars:
                raise InputTooLarge("text_too_long",
                                    f"{where} has {len(text)} characters; the limit is {self.settings.max_text_chars}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # JSON's "\ud800": a lone surrogate, not text; the model takes UTF-8
                raise InvalidInput("invalid_text", f"{where} holds an unpaired surrogate code point") from None
        sentences = self.segmenter.segment_all(texts, deadlines.current_or_default(self.settings).deadline)
        for index, words in enumerate(sentences):
            if not words:
                raise UnusableInput("empty_text", f"{_where(index, texts)} has no words after segmentation")
        return sentences

    def classify(self, texts: list[str]) -> SentimentBatch:
        self.check_in_time(len(texts))  # before segmenting: refusing costs nothing yet
        prediction = self.predict(self.check_texts(texts))
        return SentimentBatch(prediction.results, prediction.model_version)

    def to_inputs(self, sentences: list[list[str]]) -> dict[str, np.ndarray]:
        words, nwords = pad_batch(sentences)
        return {"words": words, "nwords": nwords}

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> Sequence[Sentiment]:
        labels, class_ids, softmax = (outputs[k] for k in ("labels", "classes_id", "softmax"))
        return [Sentiment(label.decode("utf-8"), int(class_id), [round(float(p), 6) for p in row])
                for label, class_id, row in zip(labels, class_ids, softmax)]


def _where(index: int, texts: list[str]) -> str:
    return f"text {index}" if len(texts) > 1 else "the text"
