"""500 slowloris clients trickle bytes at nginx while a normal client measures its latency.

nginx reads headers and bodies itself (request buffering) and cuts clients that stall
(client_header_timeout, client_body_timeout), so the trickling never reaches a gunicorn worker.
"""

from __future__ import annotations

import itertools
import socket
import statistics
import threading
import time

import pytest
import requests

from tests.faults.load import SENTENCES

pytestmark = pytest.mark.slow

SLOW_CLIENTS = 500
HEADER_TIMEOUT_SECONDS = 10  # nginx's client_header_timeout: the loaded run outlasts it


class Slowloris:
    """Half the clients send headers a line at a time, half send a body a byte at a time; a
    client cut off by nginx reconnects and starts again."""

    def __init__(self, address: tuple[str, int], clients: int, interval: float = 1.0):
        self.address, self.clients, self.interval = address, clients, interval
        self.reconnects = 0
        self.open_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, index: int) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=5)
        sock.setblocking(False)
        if index % 2:
            sock.send(b"POST /lstm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n")
        else:
            sock.send(b"POST /lstm HTTP/1.1\r\nHost: x\r\n")
        return sock

    def _run(self) -> None:
        sockets = [self._connect(i) for i in range(self.clients)]
        while not self._stop.wait(self.interval):
            for index, sock in enumerate(sockets):
                try:
                    sock.send(b"{" if index % 2 else b"X-Slow: 1\r\n")
                except OSError:  # cut off by nginx: come back
                    sock.close()
                    sockets[index] = self._connect(index)
                    self.reconnects += 1
            self.open_peak = max(self.open_peak, len(sockets))
        for sock in sockets:
            sock.close()

    def __enter__(self) -> Slowloris:
        self._thread.start()
        time.sleep(3)  # every slow client connected and trickling
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def p99_ms(url: str, seconds: float) -> tuple[float, int]:
    """A normal client's p99 over `seconds` of back-to-back requests, and how many it sent."""
    session = requests.Session()
    latencies = []
    until = time.monotonic() + seconds
    for number in itertools.count():
        if time.monotonic() > until:
            break
        started = time.perf_counter()
        reply = session.post(f"{url}/lstm", json={"line": SENTENCES[number % len(SENTENCES)]}, timeout=10)
        latencies.append((time.perf_counter() - started) * 1000)
        assert reply.status_code == 200, reply.text
    return statistics.quantiles(latencies, n=100)[98], len(latencies)


def test_slow_clients_do_not_starve_normal_ones(stack, fault_table):
    port = int(stack.url.rsplit(":", 1)[1])
    p99_ms(stack.url, 1)  # warm connections and caches
    unloaded, alone = p99_ms(stack.url, 5)
    with Slowloris(("127.0.0.1", port), SLOW_CLIENTS) as slowloris:
        loaded, along = p99_ms(stack.url, HEADER_TIMEOUT_SECONDS + 5)
    fault_table.append({"scenario": f"{SLOW_CLIENTS} slowloris clients (headers or body, a byte a second)",
                        "load": f"1 normal client: {alone} requests alone, {along} with them; "
                        f"{slowloris.reconnects} slow clients cut off by nginx and back", "failed": "0",
                        "recovery": f"normal p99 {unloaded:.1f} ms alone, {loaded:.1f} ms with them"})
    assert slowloris.reconnects >= SLOW_CLIENTS // 2, "nginx cuts clients that trickle their headers"
    assert loaded <= 2 * unloaded, (unloaded, loaded)
