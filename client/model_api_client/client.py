"""The HTTP client: one keep-alive session, a timeout on every call, retries where they are safe.

Retried is only what did no model work: a connection that could not be made (nothing was sent)
and 503 (the services answer 503 only when they refused before any model work, or the model
server is down), after the server's `Retry-After` (at most `max_retry_after` seconds), within a
bounded number of attempts and the call's deadline. Never a 504 (the deadline is spent), a 502 or
a connection lost after sending: the request may have reached a model, and sending it again
repeats that work during an overload, or kills the next replica with the request that killed one.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import time
from pathlib import Path

import requests
from urllib3.exceptions import ConnectTimeoutError

DEFAULT_URL = os.environ.get("MODEL_API_URL", "http://127.0.0.1:8080")
# An attempt is not started with less time than this left of the call's deadline.
_LEAST_ATTEMPT_SECONDS = 0.005
# Read time allowed past the deadline, for the service's own 503/504 at the deadline to arrive.
_ANSWER_GRACE_SECONDS = 0.25


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
    """`deadline_ms`: how long a call may take, all its attempts together; each attempt tells the
    service what is left (X-Request-Timeout-Ms), so that it answers 503 `deadline_unreachable`
    early or 504 instead of answering late. `retries`: attempts after the first (see above).
    `last_timing`: where the last answer's time went on the server, in ms (its Server-Timing)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, connect_timeout: float = 3.0, read_timeout: float = 30.0,
                 retries: int = 3, deadline_ms: float | None = None, max_retry_after: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.retries = retries
        self.deadline_ms = deadline_ms
        self.max_retry_after = max_retry_after
        self.last_timing: dict[str, float] = {}
        self.session = requests.Session()  # its adapters retry nothing themselves: _post decides

    def sentiment(self, text: str) -> Sentiment:
        return _sentiment(self._post_json("/lstm", {"line": text}))

    def sentiments(self, texts: list[str]) -> list[Sentiment]:
        """Several texts in one request (and one model call for texts of similar length)."""
        return [_sentiment(answer) for answer in self._post_json("/lstm", {"lines": list(texts)})["results"]]

    def saliency(self, image: bytes | str | Path) -> SaliencyMask:
        """The mask of an image given as bytes or a file path (JPEG, PNG, BMP, WebP, ...)."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        reply = self._post("/cv_sod", data=data,
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
        return self._checked(self._post(path, json=body)).json()

    def _post(self, path: str, headers: dict[str, str] | None = None, **body: object) -> requests.Response:
        """The last answer of up to 1 + `retries` attempts, within the deadline (see the module)."""
        end = None if self.deadline_ms is None else time.monotonic() + self.deadline_ms / 1000
        attempt = 0
        while True:
            own_headers = dict(headers or {})
            timeout = (self.connect_timeout, self.read_timeout)
            if end is not None:
                left = end - time.monotonic()
                own_headers["X-Request-Timeout-Ms"] = str(max(1, int(1000 * left)))  # whole ms, at least 1
                timeout = (min(self.connect_timeout, max(left, _LEAST_ATTEMPT_SECONDS)),
                           min(self.read_timeout, max(left, 0.0) + _ANSWER_GRACE_SECONDS))
            try:
                reply = self.session.post(f"{self.base_url}{path}", headers=own_headers, timeout=timeout, **body)
            except requests.ConnectionError as error:
                pause = self._pause_before_retry(attempt, 0.1 * 2 ** attempt, end) if _never_sent(error) else None
                if pause is None:
                    raise
            else:
                if reply.status_code != 503:
                    return reply
                pause = self._pause_before_retry(attempt, _retry_after(reply, 0.1 * 2 ** attempt), end)
                if pause is None:
                    return reply
            time.sleep(pause)
            attempt += 1

    def _pause_before_retry(self, attempt: int, wait: float, end: float | None) -> float | None:
        """How long to wait before the next attempt; None: no retry (none left, or no time after the wait)."""
        wait = min(max(0.0, wait), self.max_retry_after)
        if attempt >= self.retries or (end is not None and time.monotonic() + wait > end - _LEAST_ATTEMPT_SECONDS):
            return None
        return wait

    def _checked(self, reply: requests.Response) -> requests.Response:
        self.last_timing = server_timing(reply.headers.get("Server-Timing"))
        return _checked(reply)


def _never_sent(error: requests.ConnectionError) -> bool:
    """The connection could not be made (refused, timed out, no such host): nothing reached the server."""
    cause = error.args[0] if error.args else None
    return isinstance(getattr(cause, "reason", None), ConnectTimeoutError)


def _retry_after(reply: requests.Response, otherwise: float) -> float:
    """The answer's `Retry-After` in seconds (the services send seconds; a date counts as absent)."""
    try:
        return float(reply.headers["Retry-After"])
    except (KeyError, ValueError):
        return otherwise


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
