"""Sentiment of Chinese texts with the `lstm` model: segmentation, padding, the label of each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model_preprocessing.text import load_dictionary, pad_batch
from service_kit.core.model_call import Prediction
from service_kit.core.refusals import InputTooLarge, InvalidInput, UnusableInput
from service_kit.core.rollout import Comparison
from service_kit.core.service import ModelService
from service_kit.http.contract import QUERY, Operation
from text_api.schemas import (
    LegacyAnswer,
    LegacyLine,
    LineQuery,
    LinesBody,
    ManyLines,
    OneLine,
    Sentiment,
    SentimentAnswer,
    SentimentsAnswer,
)
from text_api.segmentation_queue import SegmentationQueue
from text_api.settings import TextApiSettings
from tfserving_client import ModelServerClient

JSON = "application/json"
# Texts of up to 2**SHORT_TEXT_BITS words share one length class (batch_group).
SHORT_TEXT_BITS = 7
_LEGACY = ("The legacy `/predict` form existing clients call (the source documents' API): its route and reply "
           "shape; the body is read as JSON whatever its Content-Type says.")


def _errors(*too_large: str) -> dict[int, str]:
    codes = ", ".join(f"`{code}`" for code in ("text_too_long", *too_large, "too_many_words"))
    return {413: f"a text over a limit ({codes})",
            422: "well-formed but unusable: no words after segmentation (`empty_text`)"}


def _one(request: OneLine | LineQuery, texts: list[str], prediction: Prediction[Sentiment],
         reply: type) -> SentimentAnswer:
    [result] = prediction.results
    return SentimentAnswer(label=result.label, class_id=result.class_id, probabilities=result.probabilities,
                           model_version=prediction.model_version)


def _one_or_many(request: OneLine | ManyLines, texts: list[str], prediction: Prediction[Sentiment],
                 reply: type) -> SentimentAnswer | SentimentsAnswer:
    if isinstance(request, ManyLines):
        return SentimentsAnswer(results=prediction.results, model_version=prediction.model_version)
    return _one(request, texts, prediction, reply)


def _legacy(request: LineQuery | LegacyLine, texts: list[str], prediction: Prediction[Sentiment],
            reply: type) -> LegacyAnswer:
    [result] = prediction.results
    return LegacyAnswer(classes_id=result.class_id, labels=result.label, softmax=result.probabilities)


class SentimentService(ModelService[str, list[str], Sentiment]):
    """A text is its words (jieba); a batch is padded (padding never changes an answer)."""

    settings_class = TextApiSettings
    operations = (
        Operation("POST", "/lstm", 'The sentiment of one text (`{"line": ...}`) or of several in one request '
                  '(`{"lines": [...]}`)', {JSON: LinesBody}, {JSON: SentimentAnswer | SentimentsAnswer},
                  _errors("too_many_lines"), encode=_one_or_many),
        Operation("GET", "/lstm", "The sentiment of one text, in the URL", {QUERY: LineQuery},
                  {JSON: SentimentAnswer}, _errors(), encode=_one),
        Operation("GET", "/lstm/predict", "The sentiment of one text, in the URL (legacy reply shape)",
                  {QUERY: LineQuery}, {JSON: LegacyAnswer}, _errors(), description=_LEGACY, encode=_legacy),
        Operation("POST", "/lstm/predict", "The sentiment of one text (legacy reply shape)", {JSON: LegacyLine},
                  {JSON: LegacyAnswer}, _errors(), json_whatever_the_content_type=True, description=_LEGACY,
                  encode=_legacy),
    )

    def __init__(self, client: ModelServerClient, settings: TextApiSettings):
        super().__init__(client, settings)
        load_dictionary()  # a no-op when gunicorn's master preloaded it (service.toml)
        self.segmentation = SegmentationQueue(self.settings.model_name)

    def decode(self, request: OneLine | ManyLines | LineQuery | LegacyLine) -> list[str]:
        texts = request.lines if isinstance(request, ManyLines) else [request.line]
        for index, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # JSON's "\ud800": a lone surrogate, not text; the model takes UTF-8
                raise InvalidInput("invalid_text", f"{_where(index, texts)} holds an unpaired surrogate code point") \
                    from None
        return texts

    def prepare(self, texts: list[str], deadline: float) -> list[list[str]]:
        sentences = self.segmentation.segment_all(texts, deadline)
        limit = self.settings.max_text_words
        for index, words in enumerate(sentences):
            if not words:
                raise UnusableInput("empty_text", f"{_where(index, texts)} has no words after segmentation")
            if len(words) > limit:  # its batch would be padded to its length (TextApiSettings.max_text_words)
                raise InputTooLarge("too_many_words", f"{_where(index, texts)} has {len(words)} words after "
                                    f"segmentation; the limit is {limit}")
        return sentences

    def batch_group(self, words: list[str]) -> int:
        """Texts of up to 128 words (97% of the training reviews) share calls; longer ones go with texts
        of their own power-of-two length class, so that padding at most doubles any text's length."""
        return max(0, (len(words) - 1).bit_length() - SHORT_TEXT_BITS)

    def to_inputs(self, sentences: list[list[str]]) -> dict[str, np.ndarray]:
        words, nwords = pad_batch(sentences)
        return {"words": words, "nwords": nwords}

    def compare(self, live: Sentiment, candidate: Sentiment) -> Comparison:
        """A rollout's shadow: the same label is agreement; the distance is the probabilities' total
        variation (half the L1 distance: 0 the same, 1 opposite certainties)."""
        distance = 0.5 * sum(abs(a - b) for a, b in zip(live.probabilities, candidate.probabilities))
        return Comparison(live.label == candidate.label, round(distance, 6))

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> Sequence[Sentiment]:
        labels, class_ids, softmax = (outputs[k] for k in ("labels", "classes_id", "softmax"))
        return [Sentiment(label=label.decode("utf-8"), class_id=int(class_id),
                          probabilities=[round(float(p), 6) for p in row])
                for label, class_id, row in zip(labels, class_ids, softmax)]


def _where(index: int, texts: list[str]) -> str:
    return f"text {index}" if len(texts) > 1 else "the text"
