"""What nginx sends to another replica, on the real nginx with the rendered template: a request
that an instance took and then died on is never replayed to the next (it would kill that one too:
issue 20, item 4); a request no instance took (connection refused) is, and one that then found no
instance live gets one more pass over them all."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import requests

from service_roster import Service, nginx_conf
from tests.conftest import REPO_ROOT, ROSTER, free_port, wait_until
from tests.services.nginx.test_nginx_config import NGINX


class Upstream:
    """Reads a request and answers `answer`; with none, closes the connection without a word, as a
    worker the kernel killed mid-request looks to nginx. Counts the requests it saw."""

    def __init__(self, answer: bytes = b"", listening: bool = True) -> None:
        self.answer = answer
        # Bound but not listening, a port refuses connections as a stopped instance's does.
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen = 0
        if listening:
            self.listen()

    def listen(self) -> None:
        self.listener.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                with connection:
                    if connection.recv(65536):
                        self.seen += 1
                        connection.sendall(self.answer)


@contextlib.contextmanager
def nginx_in_front_of(tmp_path: Path, vision_upstreams: list[str] | None = None,
                      text_upstreams: list[str] | None = None, roster: list[Service] = ROSTER) -> Iterator[str]:
    """The rendered template's nginx in front of these instances (a closed port where none are given).
    Every port differs from the others: nginx listening on a test's "closed" upstream port proxied
    to itself, and its own bound answered 503 where the test wanted 502 (a clean-clone CI run)."""
    taken = {int(address.rsplit(":", 1)[1]) for address in [*(vision_upstreams or []), *(text_upstreams or [])]}

    def another_port() -> int:
        chosen = free_port(exclude=taken)
        taken.add(chosen)
        return chosen

    port = another_port()
    upstreams = {service.name: [f"127.0.0.1:{another_port()}"] for service in roster}
    upstreams["vision-api"] = vision_upstreams or upstreams["vision-api"]
    upstreams["text-api"] = text_upstreams or upstreams["text-api"]
    values = nginx_conf.values_for_local(roster, f"127.0.0.1:{port}", tmp_path, upstreams,
                                         REPO_ROOT / nginx_conf.STATIC, worker_processes="1")
    (tmp_path / "temp").mkdir()
    config = tmp_path / "nginx.conf"
    config.write_text(nginx_conf.render(values, (REPO_ROOT / nginx_conf.TEMPLATE).read_text()))
    process = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(config), "-e", str(tmp_path / "error.log"),
                                "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/nginx-health", timeout=1).ok, 20, "nginx")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_a_post_that_killed_its_instance_is_not_sent_to_the_next(tmp_path):
    dying = [Upstream(), Upstream(), Upstream()]
    with nginx_in_front_of(tmp_path, [u.address for u in dying]) as url:
        reply = requests.post(f"{url}/cv_sod", data=b"poison", timeout=30)
    assert reply.status_code == 502 and reply.json()["error"]["code"] == "bad_gateway"
    assert sum(u.seen for u in dying) == 1, [u.seen for u in dying]


def test_a_get_is_replayed_to_each_instance_once_at_most(tmp_path):
    dying = [Upstream(), Upstream(), Upstream()]
    with nginx_in_front_of(tmp_path, [u.address for u in dying]) as url:
        reply = requests.get(f"{url}/cv_sod", params={"img": "AAAA"}, timeout=30)
    assert reply.status_code == 502
    assert [u.seen for u in dying] == [1, 1, 1]


def test_a_request_no_instance_took_goes_to_the_next(tmp_path):
    refused = f"127.0.0.1:{free_port()}"  # nothing listens: the request was never sent
    answering = Upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    with nginx_in_front_of(tmp_path, [refused, answering.address]) as url:
        replies = [requests.post(f"{url}/cv_sod", data=b"x", timeout=30) for _ in range(4)]
    assert [r.status_code for r in replies] == [200] * 4
    assert answering.seen == 4


def test_a_request_goes_past_every_instance_that_refuses_it(tmp_path):
    """Issue 33: compose's DNS names a replica before its gunicorn listens (and after it stopped, while
    it is removed); least_conn favours such idle replicas, and with two tries, two of them refusing in a
    row were a 502 (1-2 per scale of text-api 4 -> 6 under load)."""
    refused = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    answering = Upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    with nginx_in_front_of(tmp_path, [*refused, answering.address]) as url:
        reply = requests.post(f"{url}/cv_sod", data=b"x", timeout=30)
    assert reply.status_code == 200 and answering.seen == 1


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def test_a_request_that_found_no_instance_live_gets_one_more_pass(tmp_path):
    """nginx ends a request's retries with "no live upstreams" when every instance is marked failed,
    and also (nginx >= 1.27.3, `resolve`) when the name's addresses changed while it waited: under
    compose, a POST that waited 2 s to connect to a replica that had just stopped was a 502 with the
    other replica idle (a clean-clone CI run). Both leave the group's name in $upstream_addr; such
    a request was never taken by any instance, and gets one more pass. Here the first cause: both
    instances refused the first request and are marked failed for 2 s; one of them listens again."""
    first, second = Upstream(OK, listening=False), Upstream(OK, listening=False)
    with nginx_in_front_of(tmp_path, [], [first.address, second.address]) as url:
        nobody = requests.post(f"{url}/lstm", json={"line": "x"}, timeout=30)
        second.listen()
        again = requests.post(f"{url}/lstm", json={"line": "x"}, timeout=30)
        log = (tmp_path / "access.log").read_text().splitlines()
    assert nobody.status_code == 502 and nobody.json()["error"]["code"] == "bad_gateway"
    assert again.status_code == 200 and (first.seen, second.seen) == (0, 1), again.text
    assert '"upstream":"text_api : ' in log[-1], log[-1]  # the first pass found none live

