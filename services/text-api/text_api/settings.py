"""text-api configuration: every environment variable it reads, with its default."""

from __future__ import annotations

import dataclasses

from service_kit.core.settings import ServiceSettings, env


@dataclasses.dataclass(frozen=True)
class TextApiSettings(ServiceSettings):
    # Longer texts are refused with 413, never truncated: the answer would be about a different text.
    max_text_chars: int = env("MAX_TEXT_CHARS", 2000)
    # Words a text may have after segmentation, refused past it (413) like a long text: jieba makes a
    # word of each punctuation mark, and a model call's cost grows with its longest text (64 texts
    # padded to 2,000 words: ~190 ms, to 30: ~3 ms). The densest review of 200 characters or more in
    # the training data has 0.72 words a character; 1,500 is 0.75 of MAX_TEXT_CHARS, so no natural text
    # within that limit is refused, and 2,000 characters of commas are. What a long text costs the
    # requests beside it, the batcher bounds (SentimentService.batch_group).
    max_text_words: int = env("MAX_TEXT_WORDS", 1500)
    # `{"lines": [...]}` is answered with one model call per length class; this bounds its size and latency.
    max_lines: int = env("MAX_LINES", 64)
