"""The HTTP client: one keep-alive session, a timeout on every call, retries where they are safe.

Predictions have no side effects, so POSTs are retried like GETs: on connection errors and on
502/503/504 (nginx found no instance, the model server is restarting, a deadline passed), waiting
as long as the server's `Retry-After` says, with a bounded number of attempts.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

DEFAULT_URL = os.environ.get("MODEL_API_URL", "http://127.0.0.1:8080")


@dataclasses.dataclass(frozen=True)
class Sentiment:
    label: str  # "POS" or "NEG"
    class_id: int
    probabilities: list[float]  # [NEG, POS]
    model_version: int | None

    @property
    def score(self) -> float:
        """The probability of the predicted label."""
        return self.probabilities[self.class_id]


@dataclasses.dataclass(frozen=True)
class SaliencyMask:
    png: bytes  # 8-bit grayscale PNG, the image's size, 255 = salient
    width: int
    height: int
    model_version: int | None

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.png)


class ApiError(Exception):
    """An error answer: the service's JSON `{"error": {"code", "message", "request_id"}}`."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{status} {code}: {message}" + (f" (request id {request_id})" if request_id else ""))
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


def server_timing(header: str | None) -> dict[str, float]:
    """`Server-Timing: queue;dur=0.4, model;dur=1.9, ...` as {"queue": 0.4, "model": 1.9, ...} (ms)."""
    return {name: float(duration) for name, duration in re.findall(r"([\w-]+);dur=([\d.]+)", header or "")}


class ModelApiClient:
    """`deadline_ms`: how long the service may take per request (X-Request-Timeout-Ms); past it
    the service answers 503 `deadline_unreachable` early or 504, instead of answering late.
    `last_timing`: where the last answer's time went on the server, in ms (its Server-Timing)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, connect_timeout: float = 3.0, read_timeout: float = 30.0,
                 retries: int = 3, deadline_ms: float | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.last_timing: dict[str, float] = {}
        self.session = requests.Session()
        if deadline_ms is not None:
            self.session.headers["X-Request-Timeout-Ms"] = f"{deadline_ms:g}"
        retry = Retry(total=retries, connect=retries, read=0, status=retries, backoff_factor=0.2,
                      status_forcelist=(502, 503, 504), allowed_methods=None, respect_retry_after_header=True,
                      raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def sentiment(self, text: str) -> Sentiment:
        return _sentiment(self._post_json("/lstm", {"line": text}))

    def sentiments(self, texts: list[str]) -> list[Sentiment]:
        """Several texts in one request (and one model call)."""
        return [_sentiment(answer) for answer in self._post_json("/lstm", {"lines": list(texts)})["results"]]

    def saliency(self, image: bytes | str | Path) -> SaliencyMask:
        """The mask of an image given as bytes or a file path (JPEG, PNG, BMP, WebP, ...)."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        reply = self.session.post(f"{self.base_url}/cv_sod", data=data, timeout=self.timeout,
                                  headers={"Content-Type": "application/octet-stream", "Accept": "application/json"})
        answer = self._checked(reply).json()
        return SaliencyMask(base64.b64decode(answer["mask_png"]), answer["width"], answer["height"],
                            answer.get("model_version"))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ModelApiClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _post_json(self, path: str, body: dict) -> dict:
        return self._checked(self.session.post(f"{self.base_url}{path}", json=body, timeout=self.timeout)).json()

    def _checked(self, reply: requests.Response) -> requests.Response:
        self.last_timing = server_timing(reply.headers.get("Server-Timing"))
        return _checked(reply)


def _checked(reply: requests.Response) -> requests.Response:
    if reply.ok:
        return reply
    try:
        error = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise ApiError(reply.status_code, "http_error", reply.text[:200] or reply.reason) from None
    raise ApiError(reply.status_code, error.get("code", "error"), error.get("message", ""), error.get("request_id"))


def _sentiment(answer: dict) -> Sentiment:
    return Sentiment(answer["label"], answer["class_id"], answer["probabilities"], answer.get("model_version"))
