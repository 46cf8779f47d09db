"""text-api's requests and replies: validation, error codes and the OpenAPI document come from these."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from service_kit.http.contract import Base64Text, Reply, Strict, at_most, exactly_one_of, not_blank, with_text
from text_api.settings import TextApiSettings

Text = Annotated[str, *at_most(TextApiSettings, "max_text_chars", "text_too_long", "characters"),
                 *with_text("empty_text", "has no words after segmentation"),
                 Field(description="Chinese text, segmented with jieba")]


class OneLine(Strict):
    line: Text


class ManyLines(Strict):
    lines: Annotated[list[Text], Field(min_length=1, description="answered together: one model call for texts of "
                                                                   "a length class"),
                     *at_most(TextApiSettings, "max_lines", "too_many_lines", "lines")]


LinesBody = exactly_one_of(line=OneLine, lines=ManyLines)


class LineQuery(Strict):
    # The limit applies to the decoded text, as in a body; the document cannot state it as a length of
    # the base64, so its description does.
    line: Annotated[Base64Text, *at_most(TextApiSettings, "max_text_chars", "text_too_long", "characters",
                                         documented=False),
                    not_blank("empty_text", "has no words after segmentation"),
                    Field(description="URL-safe base64 of the text's UTF-8 bytes; the text has at most "
                                      f"{TextApiSettings.max_text_chars:,} characters")]


class LegacyLine(Strict):
    """The source documents' body; their clients send it without a Content-Type."""

    line: Text


class Sentiment(Reply):
    label: str = Field(description="NEG or POS")
    class_id: int = Field(description="0 = NEG, 1 = POS")
    probabilities: list[float] = Field(description="indexed by class_id")


class SentimentAnswer(Sentiment):
    model_version: int | None


class SentimentsAnswer(Reply):
    results: list[Sentiment]
    model_version: int | None


class LegacyAnswer(Reply):
    """The source documents' reply shape."""

    status: int = 0
    classes_id: int
    labels: str
    softmax: list[float]
