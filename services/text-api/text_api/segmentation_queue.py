"""A deadline-aware queue in front of jieba: segmentation is pure-Python CPU work on the worker's only
gevent loop.

One maximal request (64 lines of 2,000 characters) is ~0.5 s of jieba; segmented in one go it held
the loop that long (health checks and every other request on the worker waited), and a burst of
them, all segmenting at once with the model's queue still empty, outlasted gunicorn's timeout and
the worker was killed (issue 20). Here requests take turns in arrival order, yield to the loop
after each text, and are refused (503) as soon as the segmentation ahead of them says they would
miss their deadline, or when their deadline passes while they wait their turn.
"""

from __future__ import annotations

import threading
import time

from model_preprocessing.text import segment
from service_kit.core import metrics
from service_kit.core.refusals import Shed

# jieba on this machine: ~4 us a character (128,000 in 0.55 s); learnt from the work itself.
INITIAL_SECONDS_PER_CHARACTER = 5e-6
# Texts shorter than this say little about the rate (call overhead dominates).
_RATE_SAMPLE_CHARACTERS = 200
# After this much segmentation the loop gets a turn. gevent's sleep(0) runs other greenlets that are
# ready but does not poll sockets or timers (measured: a 5 ms ticker starved 420 ms); any positive
# sleep goes through the event loop, so other requests' reads and health checks are served.
_YIELD_AFTER_SECONDS = 0.002
_YIELD_SECONDS = 1e-4


class SegmentationQueue:
    """Segments the texts of one request at a time (first come, first served), yielding between
    texts; gevent's monkey-patching makes the lock and the sleep cooperative."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.seconds_per_character = INITIAL_SECONDS_PER_CHARACTER
        self.characters_ahead = 0  # of requests admitted here and not yet segmented
        self._turn = threading.Lock()
        self._unyielded = 0.0  # seconds of segmentation since the loop last had a turn

    def segment_all(self, texts: list[str], deadline: float) -> list[list[str]]:
        """Each text's words, or Shed when they cannot be ready before `deadline`."""
        characters = sum(len(text) for text in texts)
        finish = time.monotonic() + (self.characters_ahead + characters) * self.seconds_per_character
        if finish > deadline:
            self._refuse("predicted_late", "the texts queued ahead of these take longer to segment than "
                         "this request's deadline allows")
        self.characters_ahead += characters
        try:
            if not self._turn.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self._refuse("expired", "the request's deadline passed while it waited to be segmented")
            try:
                self._unyielded = 0.0
                return [self._segment(text, deadline) for text in texts]
            finally:
                self._turn.release()
        finally:
            self.characters_ahead -= characters

    def _segment(self, text: str, deadline: float) -> list[str]:
        if time.monotonic() > deadline:
            self._refuse("expired", "the request's deadline passed while its texts were segmented")
        started = time.perf_counter()
        words = segment(text)
        seconds = time.perf_counter() - started
        if len(text) >= _RATE_SAMPLE_CHARACTERS:
            self.seconds_per_character += 0.2 * (seconds / len(text) - self.seconds_per_character)
        self._unyielded += seconds
        if self._unyielded >= _YIELD_AFTER_SECONDS:  # under gevent: the loop serves others meanwhile
            time.sleep(_YIELD_SECONDS)
            self._unyielded = 0.0
        return words

    def _refuse(self, reason: str, message: str) -> None:
        metrics.MODEL_REQUESTS_SHED.labels(self.model_name, reason).inc()
        raise Shed(reason, message)
