"""A stream of the costliest small inputs (issue 20), sent while a steady load of normal requests
runs: a worst image a second per vision-api replica and the largest text a second, for a minute.
(The largest /lstm body is ~0.85 s of CPU, jieba and the model: one a second per text-api replica,
four under compose, would be more than this machine's two cores.) The normal requests must all be answered and
no worker may die; the worst inputs themselves are answered (refused, mostly) with a JSON 4xx, a
503 or a 200, never a 502 or 504 and never after a worker's death. Used by the fault tiers of
local mode (tests/faults) and compose (tests/compose)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from pathlib import Path

import requests

from tests.faults.load import HttpLoad, post_sentence
from tests.services.vision_api import crafted_images

NORMAL_IMAGE = (Path(__file__).parents[2] / "bench" / "images" / "coffee_600x400.jpg").read_bytes()
# The largest /lstm body: 64 lines of 2,000 characters, 0.55 s of jieba (item 5).
LARGEST_TEXT = json.dumps({"lines": [("这家店的菜很好吃服务也不错下次还会再来" * 106)[:2000]] * 64},
                          ensure_ascii=False).encode()


def worst_images() -> dict[str, bytes]:
    """The issue's images, and the costliest ones still accepted (decoded, at every limit)."""
    return {**crafted_images.worst_inputs(),
            "27 MP JPEG of 32 scans (accepted)": crafted_images.many_scan_jpeg(26, 6000, 4500),
            "EXIF-rotated 2560x1280 JPEG (accepted)": crafted_images.exif_rotated_jpeg()}


def normal_request(session: requests.Session, url: str, number: int) -> requests.Response:
    """Three sentences to /lstm, then a photo to /cv_sod (as JSON, so HttpLoad reads the answer)."""
    if number % 4 == 3:
        return session.post(f"{url}/cv_sod", data=NORMAL_IMAGE, timeout=15,
                            headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
    return post_sentence(session, url, number)


@dataclasses.dataclass(frozen=True)
class Hostile:
    name: str
    status: int | None
    code: str
    seconds: float


class WorstInputStream:
    """Every second, `images_per_second` of the worst images to /cv_sod (in turn) and the largest
    text to /lstm, each from its own thread so that a slow one does not slow the stream."""

    def __init__(self, url: str, images_per_second: int, seconds: float = 60.0):
        self.url, self.images_per_second, self.seconds = url, images_per_second, seconds
        self.sent: list[Hostile] = []
        self._images = itertools.cycle([(name, "/cv_sod", "image/png", data) for name, data in worst_images().items()])
        self._text = ("largest /lstm body", "/lstm", "application/json", LARGEST_TEXT)
        self._threads: list[threading.Thread] = []

    def run(self) -> None:
        started = time.monotonic()
        for second in range(int(self.seconds)):
            for item in [next(self._images) for _ in range(self.images_per_second)] + [self._text]:
                thread = threading.Thread(target=self._send, args=(item,), daemon=True)
                thread.start()
                self._threads.append(thread)
            time.sleep(max(0.0, started + second + 1 - time.monotonic()))
        for thread in self._threads:
            thread.join(120)

    def _send(self, item: tuple[str, str, str, bytes]) -> None:
        name, route, content_type, data = item
        started = time.monotonic()
        try:
            reply = requests.post(f"{self.url}{route}", data=data, timeout=60,
                                  headers={"Content-Type": content_type, "Accept": "application/json"})
            code = "" if reply.ok else reply.json().get("error", {}).get("code", "")
            self.sent.append(Hostile(name, reply.status_code, code, time.monotonic() - started))
        except (requests.RequestException, ValueError) as error:
            self.sent.append(Hostile(name, None, type(error).__name__, time.monotonic() - started))

    def mishandled(self) -> list[Hostile]:
        """Answers a worst input must never get: no answer, a 5xx other than a 503, a 503 that is
        not a refusal (busy, deadline_unreachable, overloaded)."""
        refusals = {"busy", "deadline_unreachable", "overloaded"}
        return [h for h in self.sent if h.status is None or (h.status >= 500 and not (
            h.status == 503 and h.code in refusals))]

    def summary(self) -> str:
        by_answer: dict[str, int] = {}
        for hostile in self.sent:
            key = f"{hostile.status} {hostile.code}".strip()
            by_answer[key] = by_answer.get(key, 0) + 1
        return f"{len(self.sent)} worst inputs: " + ", ".join(f"{n} {k}" for k, n in sorted(by_answer.items()))


def under_worst_inputs(url: str, vision_replicas: int, seconds: float = 60.0) -> tuple[HttpLoad, WorstInputStream]:
    """The normal load and the stream, run together; both returned for counting."""
    stream = WorstInputStream(url, vision_replicas, seconds)
    with HttpLoad(url, send=normal_request, threads=4, rate_per_thread=10) as load:
        stream.run()
    return load, stream
