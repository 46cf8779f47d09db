"""Several model servers behind one address: each call goes to the next connected server, a
server that is gone costs nothing once the channel knows it, and one that comes back (or is added
under the same name) takes calls again without a new client."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.conftest import free_port, required_in_ci
from tests.libs.test_tfserving_client import SlowPredictServer
from tfserving_client import client as client_module
from tfserving_client.client import KEEPALIVE_TIMEOUT_SECONDS, ModelServerClient, ModelServerError, dns_name


def spread(client: ModelServerClient, servers: list[SlowPredictServer], calls: int) -> list[float]:
    before = [server.calls for server in servers]
    for _ in range(calls):
        client.predict("m", {"x": np.ones(1, np.float32)})
    return [(server.calls - was) / calls for server, was in zip(servers, before, strict=True)]


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


def server_process(port: int, delay: float, host: str = "127.0.0.1", *, run_in: tuple[str, ...] = ()
                   ) -> subprocess.Popen:
    """A SlowPredictServer in a process of its own (to kill or stop), once it listens."""
    code = (f"from tests.libs.test_tfserving_client import SlowPredictServer; SlowPredictServer(delay={delay}, "
            f"port={port}, host='{host}'); print('ready', flush=True); import time; time.sleep(600)")
    process = subprocess.Popen([*run_in, sys.executable, "-c", code], cwd=Path(__file__).parents[2],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


@contextlib.contextmanager
def steady_calls(client: ModelServerClient, callers: int = 4) -> Iterator[list[tuple[float, float, str]]]:
    """`callers` threads each calling as soon as its last call ended; yields the outcomes as they
    come: (started, seconds, error or "")."""
    outcomes: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def call_until_stopped() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                client.predict("m", {"x": np.ones(1, np.float32)})
                outcomes.append((started, time.monotonic() - started, ""))
            except ModelServerError as error:
                outcomes.append((started, time.monotonic() - started, str(error)))
    threads = [threading.Thread(target=call_until_stopped) for _ in range(callers)]
    for thread in threads:
        thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def fault_under_steady_calls(client: ModelServerClient, other: SlowPredictServer, fault: Callable[[], object],
                             seconds: float) -> tuple[list[tuple[float, float, str]], float]:
    """Calls on both servers, then 4 steady callers, `fault` a second in, and `seconds` more of
    calls: the outcomes (steady_calls) and when the fault struck."""
    wait_for(lambda: spread(client, [other], 10)[0] < 0.8, 5, "calls on both servers")
    with steady_calls(client) as outcomes:
        time.sleep(1)
        struck = time.monotonic()
        fault()
        time.sleep(seconds)
    return outcomes, struck


@pytest.fixture
def two_servers():
    servers = [SlowPredictServer(), SlowPredictServer()]
    yield servers
    for server in servers:
        server.server.stop(None)


def test_calls_alternate_over_every_server_the_address_lists(two_servers):
    client = ModelServerClient("ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in two_servers))
    client.predict("m", {"x": np.ones(1, np.float32)})  # connects to both
    wait_for(lambda: spread(client, two_servers, 20)[1] > 0, 5, "the second server's connection")
    shares = spread(client, two_servers, 200)
    assert all(0.4 <= share <= 0.6 for share in shares), shares
    client.close()


def test_a_server_gone_costs_no_call_that_had_not_reached_it_and_is_used_again_when_back(two_servers):
    first, second = two_servers
    client = ModelServerClient(f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}", timeout_seconds=2.0)
    wait_for(lambda: spread(client, two_servers, 20)[1] > 0, 5, "both servers in use")
    first.server.stop(None)  # its connections close, as when its process is killed
    failed = 0
    for _ in range(200):
        try:
            client.predict("m", {"x": np.ones(1, np.float32)})
        except ModelServerError:
            failed += 1
    assert failed == 0, "a call that never reached the lost server goes to the other"
    back = SlowPredictServer(port=first.port)
    try:
        started = time.monotonic()
        wait_for(lambda: spread(client, [back, second], 10)[0] > 0, 5, "the restarted server to take calls")
        shares = spread(client, [back, second], 100)
        assert all(0.4 <= share <= 0.6 for share in shares), (shares, time.monotonic() - started)
    finally:
        back.server.stop(None)
        client.close()


class StoppingServer(SlowPredictServer):
    """Ends its first `failing` calls unanswered with `code`: CANCELLED as a model server does to
    the calls that raced its stop (gRPC cancels those received after its GOAWAY went out),
    UNAVAILABLE as TF Serving sheds load when its batch queue is full."""

    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.CANCELLED, failing: int = 1_000_000):
        super().__init__()
        self.code, self.failing = code, failing

    def predict(self, request, context):
        if self.calls < self.failing:
            self.calls += 1
            context.abort(self.code, "Server shutdown" if self.code == grpc.StatusCode.CANCELLED else "queue is full")
        return super().predict(request, context)


@pytest.mark.parametrize("code", [grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE])
def test_a_call_one_of_several_servers_ended_unanswered_goes_to_the_next(code):
    """A clean-clone CI run lost three calls while compose scaled tfserving 2 -> 1: the stopping
    server cancelled the calls that reached it as it stopped. With another server there, a
    cancelled call, or one refused by a server shedding load, is asked of the next (within the
    retry budget: a server that fails every call gets no more than its share of retries)."""
    servers = [StoppingServer(code, failing=3), SlowPredictServer()]
    client = ModelServerClient("ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers), timeout_seconds=2.0)
    try:
        wait_for(lambda: spread(client, servers, 1) is not None and servers[0].calls > 3, 5,
                 "calls on both servers, the first three failed and retried")
    finally:
        client.close()
        for server in servers:
            server.server.stop(None)


def test_alone_a_server_that_cancelled_is_asked_again_within_the_retries():
    """Alone, a stopping server's cancelled call is retried within the deadline: the retry finds
    the server gone (UNAVAILABLE, at once) or back."""
    server = StoppingServer()
    client = ModelServerClient(f"127.0.0.1:{server.port}", timeout_seconds=2.0, retries=2)
    try:
        with pytest.raises(ModelServerError) as caught:
            client.predict("m", {"x": np.ones(1, np.float32)})
        assert caught.value.code == grpc.StatusCode.CANCELLED and server.calls == 3, "asked three times"
    finally:
        client.close()
        server.server.stop(None)


def test_a_server_killed_under_its_calls_costs_no_call_when_another_is_there():
    """kill -9 (or the real TF Serving's SIGKILL at the end of `docker stop`: it ignores SIGTERM)
    drops the connection under its calls (UNAVAILABLE, the channel still READY through the other
    server): they are asked of the other."""
    port = free_port()
    doomed = server_process(port, delay=5)
    other = SlowPredictServer()
    client = ModelServerClient(f"ipv4:127.0.0.1:{port},127.0.0.1:{other.port}", timeout_seconds=10.0)
    try:
        wait_for(lambda: spread(client, [other], 1)[0] >= 0 and all(s.state() == 2 for s in client._servers), 5,
                 "both channels ready")
        with futures.ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(client.predict, "m", {"x": np.ones(1, np.float32)}) for _ in range(4)]
            time.sleep(0.5)
            assert other.calls < 1 + 4, "some calls are under way on the doomed server"
            doomed.kill()
            started = time.monotonic()
            results = [call.result() for call in calls]
        assert len(results) == 4 and time.monotonic() - started < 2, "answered by the other server, at once"
    finally:
        doomed.kill()
        doomed.wait()
        client.close()
        other.server.stop(None)


@contextlib.contextmanager
def server_on_another_host(tag: str) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """A model server in its own network namespace, reached over a bridge as another host is: its
    link can be cut, and then its packets vanish (no RST, no error), as a host lost from the
    network. Yields (its address, the link to cut, its process)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        required_in_ci("a model server's link cut", "needs root and iproute2")
    from tests.swarm.hosts import free_subnet

    subnet = free_subnet()
    bridge, link, keep_up, namespace = f"br-{tag}", f"v-{tag}", f"u-{tag}", f"host-{tag}"
    gateway, address = (str(subnet.network_address + n) for n in (1, 2))
    steps = [["ip", "link", "add", bridge, "type", "bridge"], ["ip", "addr", "add", f"{gateway}/24", "dev", bridge],
             # A port that stays up: the bridge keeps its carrier when the host's link is cut.
             ["ip", "link", "add", keep_up, "type", "veth", "peer", "name", f"{keep_up}p"],
             ["ip", "link", "set", f"{keep_up}p", "up"], ["ip", "link", "set", keep_up, "master", bridge, "up"],
             ["ip", "link", "set", bridge, "up"],
             ["ip", "netns", "add", namespace],
             ["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace],
             ["ip", "link", "set", link, "master", bridge, "up"],
             ["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0"],
             ["ip", "-n", namespace, "link", "set", "eth0", "up"]]
    server = None
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        server = server_process(8500, 0.01, "0.0.0.0", run_in=("ip", "netns", "exec", namespace))
        yield f"{address}:8500", link, server
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for cleanup in (["ip", "link", "del", link], ["ip", "netns", "del", namespace], ["ip", "link", "del", bridge],
                        ["ip", "link", "del", keep_up]):
            subprocess.run(cleanup, capture_output=True)


def test_a_server_whose_link_is_cut_stalls_its_calls_only_the_keepalive_timeout():
    """A host lost from the network sends no RST: the calls on its connection would wait for their
    deadline, and round_robin would keep sending it every other call meanwhile (each client's next
    call soon waits there too). The connection's TCP_USER_TIMEOUT (gRPC sets it from
    grpc.keepalive_timeout_ms) ends it once the calls' bytes go unacknowledged that long; they
    fail UNAVAILABLE and are asked of the other server."""
    other = SlowPredictServer(delay=0.01)
    with server_on_another_host(f"{os.getpid() % 100000}") as (address, link, _):
        client = ModelServerClient(f"ipv4:{address},127.0.0.1:{other.port}", timeout_seconds=10.0)
        try:
            outcomes, cut = fault_under_steady_calls(
                client, other, lambda: subprocess.run(["ip", "link", "set", link, "down"], check=True),
                KEEPALIVE_TIMEOUT_SECONDS + 3)
        finally:
            client.close()
            other.server.stop(None)
    assert [o for o in outcomes if o[2]] == [], "nothing lost"
    stalled = [round(seconds, 2) for started, seconds, _ in outcomes if seconds > 1]
    assert stalled and max(stalled) < KEEPALIVE_TIMEOUT_SECONDS + 1.5, stalled
    assert sum(1 for started, *_ in outcomes if started > cut + KEEPALIVE_TIMEOUT_SECONDS + 1) > 100, \
        "the other server took every call after that"


def test_a_dns_address_follows_the_names_addresses_as_servers_come_and_go(two_servers, monkeypatch):
    """gRPC asks DNS again only when a connection fails; a server added beside healthy ones is
    found by the client's own lookups and gets a channel, and the channel of a server gone is
    closed once its calls are done, never under them."""
    monkeypatch.setattr(client_module, "RESOLVE_EVERY_SECONDS", 0.1)
    first, second = (("127.0.0.1", server.port) for server in two_servers)
    answers = [frozenset({first})]
    monkeypatch.setattr(client_module, "resolve", lambda address: answers[-1])
    client = ModelServerClient(f"dns:///localhost:{first[1]}", timeout_seconds=0.5)
    client.predict("m", {"x": np.ones(1, np.float32)})
    [kept] = client._servers
    time.sleep(0.5)
    assert client.channels_opened == 1, "the same addresses: the same channel"
    answers.append(frozenset({first, second}))
    wait_for(lambda: client.channels_opened == 2, 3, "a channel for the new address")
    assert kept in client._servers and client._retired == []
    wait_for(lambda: spread(client, two_servers, 20)[1] > 0.3, 3, "calls on the added server")
    answers.append(frozenset({second}))
    wait_for(lambda: [s.target for s in client._servers] == [f"ipv4:127.0.0.1:{second[1]}"], 3, "the first gone")
    assert [server for _, server in client._retired] == [kept], "kept open for the calls still under way on it"
    wait_for(lambda: client._retired == [], 3, "its channel closed after the longest call")
    assert spread(client, two_servers, 20) == [0.0, 1.0]
    client.close()


def test_a_server_that_stops_answering_keeps_only_the_calls_it_holds():
    """A model server hung (SIGSTOP here; a wedged process, a stuck device) still has its
    connection and its kernel's TCP acknowledgements, so nothing tells the channel it is gone.
    round_robin gave it every other call: 4 steady callers each soon waited out a 10 s deadline
    there, and nothing was answered for 10 s. Picking the server with the fewest calls under way
    leaves it the calls it held when it stopped."""
    port = free_port()
    hung = server_process(port, delay=0.01)
    other = SlowPredictServer(delay=0.01)
    client = ModelServerClient(f"ipv4:127.0.0.1:{port},127.0.0.1:{other.port}", timeout_seconds=3.0)
    try:
        outcomes, stopped = fault_under_steady_calls(client, other, lambda: os.kill(hung.pid, signal.SIGSTOP), 4)
    finally:
        hung.kill()
        hung.wait()
        client.close()
        other.server.stop(None)
    failed = [started - stopped for started, _, error in outcomes if error]
    assert len(failed) <= 4 and all(when < 0.1 for when in failed), "only the calls it held when it stopped"
    answered = [started for started, _, error in outcomes if not error and stopped + 0.1 < started < stopped + 2.5]
    assert len(answered) > 100, "the other server answered the rest meanwhile"


def test_dns_targets_name_a_host_and_port():
    assert dns_name("dns:///tfserving:8500") == ("tfserving", 8500)
    assert dns_name("dns://8.8.8.8/tfserving:8500") == ("tfserving", 8500)
    assert dns_name("dns:tfserving:8500") == ("tfserving", 8500)
    assert dns_name("dns:///[::1]:8500") == ("::1", 8500)
    assert dns_name("tfserving:8500") is None and dns_name("ipv4:127.0.0.1:1,127.0.0.1:2") is None
