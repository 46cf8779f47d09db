"""A steady, bounded HTTP load that records every request, so a test can count what a fault cost."""

from __future__ import annotations

import dataclasses
import itertools
import re
import statistics
import threading
import time
from collections.abc import Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tests.conftest import wait_until

MODEL_TIMEOUT_SECONDS = 10  # compose.yaml's MODEL_TIMEOUT_SECONDS for both services
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
        self.url, self.send, self.period, self.clients = url, send, 1.0 / rate_per_thread, threads
        self.outcomes: list[Outcome] = []
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(threads)]

    def _client(self) -> None:
        session = requests.Session()
        # As a production client (and client/'s ModelApiClient): a request whose kept-alive
        # connection was closed under it (nginx closes idle ones when it reloads) is sent once more.
        # Every HTTP answer still counts as it came, 5xx included.
        retry_once = Retry(total=1, connect=1, read=1, status=0, other=0, allowed_methods=None, raise_on_status=False)
        session.mount("http://", HTTPAdapter(max_retries=retry_once))
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


def check_lost_only_in_flight(load: HttpLoad) -> None:
    """A process killed under load takes the requests it had started with it: nginx does not send
    a request an instance took to another (it may be what killed it: issue 20), and neither do
    our clients. Each client has one request in flight at a time, so at most one each, and each a
    JSON 502; every other request is answered."""
    failed = load.failed()
    assert len(failed) <= load.clients, failed[:5]
    assert all(o.status == 502 and o.json_error_code == "bad_gateway" for o in failed), failed[:5]


def check_one_of_several_model_servers_lost(fault_table: list[dict[str, str]], scenario: str, load: HttpLoad,
                                            killed: float, recovery: str) -> None:
    """One of several model servers killed under load: the calls it held when it died fail
    UNAVAILABLE (connection lost) and are asked of another at once, so no request fails."""
    record_fault(fault_table, scenario, load, f"its calls in flight asked of the other; {recovery}")
    assert load.failed() == [], load.failed()[:5]
    assert load.outcomes and load.outcomes[-1].started > killed, "load ran past the kill"


def record_fault(fault_table: list[dict[str, str]], scenario: str, load: HttpLoad, recovery: str) -> None:
    """One row of the fault table: the scenario, the load it ran under, what failed, the recovery."""
    fault_table.append({"scenario": scenario, "load": f"{load.clients} clients, {load.rate():.0f} req/s, "
                        f"{len(load.outcomes)} requests", "failed": str(len(load.failed())), "recovery": recovery})


def lstm_answers(address: str) -> float:
    """Successful /lstm answers this API instance has given since its master started."""
    metrics = requests.get(f"{address}/metrics", timeout=5).text
    found = re.search(r'^http_requests_total\{method="POST",route="/lstm",status="200"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def lstm_predicts(rest_url: str) -> float:
    """Predict calls on `lstm` this model server has answered (its own request counter)."""
    metrics = requests.get(f"{rest_url}/monitoring/prometheus/metrics", timeout=5).text
    found = re.search(r'^:tensorflow:serving:request_count\{model_name="lstm",status="OK"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def shares_of_calls(rest_urls: list[str], seconds: float) -> list[float]:
    """Each model server's share of the `lstm` Predicts answered over the next `seconds`."""
    before = [lstm_predicts(url) for url in rest_urls]
    time.sleep(seconds)
    done = [lstm_predicts(url) - was for url, was in zip(rest_urls, before, strict=True)]
    return [count / max(1.0, sum(done)) for count in done]


def models_available(rest_url: str, models: tuple[str, ...] = ("lstm", "cv_sod")) -> bool:
    """The model server's REST status says every model has an AVAILABLE version."""
    statuses = [requests.get(f"{rest_url}/v1/models/{m}", timeout=2).json() for m in models]
    return all(s["model_version_status"][0]["state"] == "AVAILABLE" for s in statuses)


def check_model_server_outage(fault_table: list[dict[str, str]], scenario: str, load: HttpLoad, killed: float,
                              available: float) -> None:
    """While the model server is down every request is a fast JSON 503 with Retry-After, and full
    service is back within 5 s of the models being AVAILABLE again."""
    failed = load.failed()
    assert failed, "the outage should have been seen"
    last_failure = load.last_failure_end()
    median_ms, slowest_ms = 1000 * statistics.median(o.seconds for o in failed), 1000 * max(o.seconds for o in failed)
    record_fault(fault_table, scenario, load,
                 f"outage {available - killed:.1f} s: {len(failed)} 503s with Retry-After, median "
                 f"{median_ms:.0f} ms, slowest {slowest_ms:.0f} ms; "
                 f"full service {max(0.0, last_failure - available):.1f} s after AVAILABLE")
    assert all(o.status == 503 and o.json_error_code and o.retry_after for o in failed), failed[:5]
    assert max(o.seconds for o in failed) < MODEL_TIMEOUT_SECONDS, "no request waits past its deadline"
    assert last_failure - available <= 5, "full service within 5 s of the model being AVAILABLE"
