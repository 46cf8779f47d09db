"""Several model servers behind one address: each call goes to the next connected server, a
server that is gone costs nothing once the channel knows it, and one that comes back (or is added
under the same name) takes calls again without a new client."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.libs.test_tfserving_client import SlowPredictServer
from tfserving_client import client as client_module
from tfserving_client.client import ModelServerClient, ModelServerError, dns_name


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


def test_a_dns_address_follows_the_names_addresses_as_servers_come_and_go(two_servers, monkeypatch):
    """gRPC asks DNS again only when a connection fails; a server added beside healthy ones is
    found by the client's own lookups, and the channel it replaces is closed once its calls are
    done, never under them."""
    monkeypatch.setattr(client_module, "RESOLVE_EVERY_SECONDS", 0.1)
    answers = [frozenset({("127.0.0.1", two_servers[0].port)})]
    monkeypatch.setattr(client_module, "resolve", lambda address: answers[-1])
    client = ModelServerClient(f"dns:///localhost:{two_servers[0].port}", timeout_seconds=0.5)
    client.predict("m", {"x": np.ones(1, np.float32)})
    first_channel = client._channel
    time.sleep(0.5)
    assert client.channels_opened == 1, "the same addresses: the same channel"
    answers.append(frozenset({("127.0.0.1", two_servers[0].port), ("127.0.0.2", two_servers[0].port)}))
    wait_for(lambda: client.channels_opened == 2, 3, "a new channel for the new addresses")
    assert client._channel is not first_channel
    client.predict("m", {"x": np.ones(1, np.float32)})
    retired = [channel for _, channel in client._retired]
    assert retired == [first_channel], "kept open for the calls still under way on it"
    wait_for(lambda: client._retired == [], 3, "the old channel closed after the longest call")
    client.close()


def test_dns_targets_name_a_host_and_port():
    assert dns_name("dns:///tfserving:8500") == ("tfserving", 8500)
    assert dns_name("dns://8.8.8.8/tfserving:8500") == ("tfserving", 8500)
    assert dns_name("dns:tfserving:8500") == ("tfserving", 8500)
    assert dns_name("dns:///[::1]:8500") == ("::1", 8500)
    assert dns_name("tfserving:8500") is None and dns_name("ipv4:127.0.0.1:1,127.0.0.1:2") is None
