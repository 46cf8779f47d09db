"""text-api configuration: every environment variable it reads, with its default."""

from __future__ import annotations

import dataclasses

from service_kit.core.settings import ServiceSettings, env
from service_roster import service_of

# This service in the roster: its model and body limit are stated there, once.
ROSTER_ENTRY = service_of(__file__)


@dataclasses.dataclass(frozen=True)
class TextApiSettings(ServiceSettings):
    model_name: str = env("MODEL_NAME", ROSTER_ENTRY.models[0])
    # Longer texts are refused with 413, never truncated: the answer would be about a different text.
    max_text_chars: int = env("MAX_TEXT_CHARS", 2000)
    # `{"lines": [...]}` is answered with one model call; this bounds its size and latency.
    max_lines: int = env("MAX_LINES", 64)
    max_body_bytes: int = env("MAX_BODY_BYTES", ROSTER_ENTRY.body_limit_bytes)
