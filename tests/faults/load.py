"""A steady, bounded HTTP load that records every request, so a test can count what a fault cost."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable

import requests

from tests.conftest import wait_until

SENTENCES = ["这个产品质量很好，我很喜欢", "物流太慢了，非常失望", "还可以吧，价格有点贵", "服务态度很差，不会再买",
             "包装精美，送人很有面子", "用了两天就坏了", "性价比很高，推荐购买", "一般般，没有想象中好"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    seconds: float
    status: int | None  # None: no HTTP answer at all (connection refused or reset, timeout)
    error: str = ""
    retry_after: str | None = None
    json_error_code: str | None = None
    model_version: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def post_sentence(session: requests.Session, url: str, number: int) -> requests.Response:
    return session.post(f"{url}/lstm", json={"line": SENTENCES[number % len(SENTENCES)]}, timeout=15)


class HttpLoad:
    """`threads` clients with keep-alive sessions, each paced to `rate_per_thread` requests/s."""

    def __init__(self, url: str, send: Callable[[requests.Session, str, int], requests.Response] = post_sentence,
                 threads: int = 4, rate_per_thread: float = 25.0):
        self.url, self.send, self.period = url, send, 1.0 / rate_per_thread
        self.outcomes: list[Outcome] = []
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(threads)]

    def _client(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            started = time.monotonic()
            self.outcomes.append(self._one(session, started))
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def _one(self, session: requests.Session, started: float) -> Outcome:
        try:
            reply = self.send(session, self.url, next(self._numbers))
        except requests.RequestException as error:
            return Outcome(started, time.monotonic() - started, None, type(error).__name__)
        seconds = time.monotonic() - started
        try:
            body = reply.json()
        except ValueError:
            return Outcome(started, seconds, reply.status_code, "not JSON: " + reply.text[:80])
        if reply.ok:
            return Outcome(started, seconds, reply.status_code, model_version=body.get("model_version"))
        return Outcome(started, seconds, reply.status_code, reply.text[:200], reply.headers.get("Retry-After"),
                       (body.get("error") or {}).get("code"))

    def __enter__(self) -> HttpLoad:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: sum(o.ok for o in self.outcomes) >= 10, 30, "the load to get answers")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def versions_since(self, moment: float) -> set[int | None]:
        return {o.model_version for o in list(self.outcomes) if o.started >= moment and o.ok}

    def last_failure_end(self) -> float | None:
        failed = self.failed()
        return max(o.started + o.seconds for o in failed) if failed else None

    def summary(self) -> str:
        return f"{len(self.outcomes)} requests, {len(self.failed())} failed, {self.rate():.0f} req/s"

    def rate(self) -> float:
        if len(self.outcomes) < 2:
            return 0.0
        return len(self.outcomes) / (self.outcomes[-1].started - self.outcomes[0].started)
