"""Parts of the local stack die or change while a steady load runs through nginx; each test
counts the failed requests and how long the stack took to be whole again.

One stack (tests/faults/conftest.py) serves every scenario in turn; each scenario waits until
the stack is whole again before it ends.
"""

from __future__ import annotations

import os
import re
import signal
import time

import psutil
import pytest

from tests.conftest import api_ready, wait_until
from tests.faults.load import (
    HttpLoad,
    check_lost_only_in_flight,
    check_model_server_outage,
    lstm_answers,
    models_available,
    record_fault,
)
from tests.faults.worst_inputs import under_worst_inputs

pytestmark = pytest.mark.slow

def restarted(stack, name: str, before: dict) -> bool:
    now = stack.service(name)
    return now["restarts"] > before["restarts"] and now["pid"] != before["pid"] and api_ready(now["address"])


def test_kill_9_of_a_gunicorn_worker_loses_only_what_it_had_started(stack, fault_table):
    instance = stack.service("text-api-1")
    master = psutil.Process(instance["pid"])
    [worker] = master.children()
    with HttpLoad(stack.url) as load:
        time.sleep(1)
        killed = time.monotonic()
        worker.kill()
        replaced = lambda: [p.pid for p in master.children()] not in ([], [worker.pid])
        wait_until(lambda: replaced() and api_ready(instance["address"]), 30, "a new worker")
        recovered = time.monotonic() - killed
        time.sleep(2)
    record_fault(fault_table, "kill -9 of one gunicorn worker", load, f"new worker ready in {recovered:.1f} s; "
                 "the requests it had started lost (502)")
    check_lost_only_in_flight(load)


def test_kill_9_of_a_whole_instance_loses_only_what_it_had_started(stack, fault_table):
    before = stack.service("text-api-1")
    with HttpLoad(stack.url) as load:
        time.sleep(1)
        killed = time.monotonic()
        os.killpg(before["pid"], signal.SIGKILL)  # the gunicorn master and its worker together
        wait_until(lambda: restarted(stack, "text-api-1", before), 60, "text-api-1 to be restarted")
        recovered = time.monotonic() - killed
        address = stack.service("text-api-1")["address"]
        wait_until(lambda: lstm_answers(address) >= 20, 20, "nginx to send traffic to the restarted instance")
    record_fault(fault_table, "kill -9 of one text-api instance (of 2)", load,
           f"restarted and ready in {recovered:.1f} s; serving again; the requests it had started lost (502)")
    check_lost_only_in_flight(load)


def test_model_server_restart_answers_fast_503s_then_recovers_by_itself(stack, fault_table):
    model_server = stack.service("model-server")
    rest_url = re.search(r"REST (\S+)", model_server["address"]).group(1)
    with HttpLoad(stack.url) as load:
        time.sleep(1)
        killed = time.monotonic()
        os.killpg(model_server["pid"], signal.SIGKILL)
        wait_until(lambda: restarted_model_server(stack, model_server, rest_url), 90, "the model server")
        available = time.monotonic()
        wait_until(lambda: load.outcomes[-1].started > available + 6, 30, "6 s of load after the restart")
    check_model_server_outage(fault_table, "model server kill -9, restarted by the supervisor", load, killed,
                              available)


def restarted_model_server(stack, before: dict, rest_url: str) -> bool:
    return stack.service("model-server")["restarts"] > before["restarts"] and models_available(rest_url)


def test_sigterm_drains_an_instance_without_losing_requests(stack, fault_table):
    """What `docker compose up --scale text-api=1` does to the surplus replicas."""
    before = stack.service("text-api-2")
    with HttpLoad(stack.url) as load:
        time.sleep(1)
        stopped = time.monotonic()
        os.kill(before["pid"], signal.SIGTERM)
        wait_until(lambda: not psutil.pid_exists(before["pid"]) or psutil.Process(before["pid"]).status() == "zombie",
                   30, "text-api-2 to stop")
        drained = time.monotonic() - stopped
        wait_until(lambda: restarted(stack, "text-api-2", before), 60, "text-api-2 to be back")
    record_fault(fault_table, "SIGTERM to one text-api instance (graceful stop)", load,
           f"drained and exited in {drained:.1f} s")
    assert load.failed() == [], load.failed()[:5]


def test_nginx_reload_with_another_upstream_set_loses_nothing(stack, fault_table):
    config = stack.run_dir / "nginx" / "nginx.conf"
    original = config.read_text()
    dropped = stack.service("text-api-2")["address"].removeprefix("http://")
    assert f"server {dropped}" in original
    nginx = stack.service("nginx")
    try:
        with HttpLoad(stack.url) as load:
            time.sleep(1)
            config.write_text(re.sub(rf"^\s*server {re.escape(dropped)}\b.*\n", "", original, flags=re.M))
            os.kill(nginx["pid"], signal.SIGHUP)
            time.sleep(3)  # old nginx workers finish their requests and exit
            answered = lstm_answers(f"http://{dropped}")
            time.sleep(3)
            assert lstm_answers(f"http://{dropped}") == answered, "the dropped instance still gets traffic"
            config.write_text(original)
            os.kill(nginx["pid"], signal.SIGHUP)
            wait_until(lambda: lstm_answers(f"http://{dropped}") > answered + 10, 20, "the instance to be back")
    finally:
        config.write_text(original)
    record_fault(fault_table, "nginx reload: one text-api instance out, then back in", load, "no interruption")
    assert load.failed() == [], load.failed()[:5]


def api_worker_pids(stack) -> dict[str, list[int]]:
    services = stack.state()["services"]
    return {name: sorted(p.pid for p in psutil.Process(s["pid"]).children()) for name, s in services.items()
            if "-api-" in name}


def test_a_stream_of_the_worst_inputs_loses_no_normal_request_and_no_worker(stack, fault_table):
    """Issue 20: one worst image a second per vision-api instance (the GIF, WebP and JPEG bombs,
    the BMP header, the costliest accepted images) and the largest /lstm body a second, for a
    minute, beside a steady load of sentences and photos."""
    before = api_worker_pids(stack)
    load, stream = under_worst_inputs(stack.url, vision_replicas=sum(name.startswith("vision-api") for name in before))
    record_fault(fault_table, "a worst image a second per vision-api instance, the largest text a second, 60 s "
                 "(issue 20)", load, f"{stream.summary()}; no worker replaced")
    assert load.failed() == [], load.failed()[:5]
    assert stream.mishandled() == [], stream.mishandled()[:5]
    assert api_worker_pids(stack) == before, "a worker died and was replaced"
