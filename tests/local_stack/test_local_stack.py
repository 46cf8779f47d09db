"""End to end through the real nginx of `./stack up`: model server, two instances each of text-api
and vision-api, and nginx as local processes, exactly as a user starts them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests import end_to_end
from tests.conftest import Stack, api_ready, free_port, running_stack, wait_until
from tests.end_to_end import post_line


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack"), "--scale", "text-api=2") as stack:
        yield stack


def test_text_routes_through_nginx(stack):
    end_to_end.check_text_routes(stack.url)


def test_image_routes_through_nginx(stack):
    end_to_end.check_image_routes(stack.url)


def test_nginx_answers_in_json_for_what_it_refuses(stack):
    end_to_end.check_nginx_refusals_are_json(stack.url)


def test_request_ids_pass_through_nginx_to_the_service(stack):
    reply = requests.post(f"{stack.url}/lstm", json={"line": "好"}, headers={"X-Request-ID": "e2e-req-7"}, timeout=10)
    assert reply.headers["X-Request-ID"] == "e2e-req-7"
    made = requests.post(f"{stack.url}/lstm", json={"line": "好"}, timeout=10).headers["X-Request-ID"]
    assert len(made) == 32
    wait_until(lambda: "e2e-req-7" in (stack.run_dir / "nginx" / "access.log").read_text(), 5, "access log")
    # The services log failures (successes are in nginx's log): the same id reaches them.
    failed = requests.post(f"{stack.url}/lstm", json={"nope": 1}, headers={"X-Request-ID": "e2e-req-8"}, timeout=10)
    assert failed.status_code == 400 and failed.json()["error"]["request_id"] == "e2e-req-8"
    logs = lambda: "".join(p.read_text() for p in (stack.run_dir / "logs").glob("text-api-*.log"))
    wait_until(lambda: '"request_id": "e2e-req-8"' in logs(), 5, "the service's log line")


def test_the_access_log_keeps_paths_and_sizes_never_payloads(stack):
    end_to_end.check_access_log_is_private(stack.url, (stack.run_dir / "nginx" / "access.log").read_text)


def test_both_text_api_instances_receive_traffic(stack):
    for _ in range(60):
        assert post_line(stack.url, "还不错").status_code == 200
    counts = {}
    for name in ("text-api-1", "text-api-2"):
        metrics = requests.get(f"{stack.state()['services'][name]['address']}/metrics", timeout=5).text
        counts[name] = sum(float(line.split()[-1]) for line in metrics.splitlines()
                           if line.startswith('http_requests_total{method="POST",route="/lstm"'))
    assert all(count >= 10 for count in counts.values()), counts
    upstreams = {json.loads(line)["upstream"] for line in (stack.run_dir / "nginx" / "access.log").read_text()
                 .splitlines() if '"path":"/lstm"' in line}
    assert len(upstreams) >= 2


def test_a_killed_gunicorn_master_is_restarted(stack):
    before = stack.state()["services"]["text-api-1"]
    os.kill(before["pid"], 9)
    failures = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        failures += post_line(stack.url, "质量不错").status_code != 200
        now = stack.state()["services"]["text-api-1"]
        if now["restarts"] == before["restarts"] + 1 and api_ready(now["address"]):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"text-api-1 was not restarted: {stack.process.log_text()[-2000:]}")
    assert now["pid"] != before["pid"]
    # At most the one request in flight on it when it died: nginx sends no request an instance took
    # to another (issue 20); every later one goes to the other instance.
    assert failures <= 1, "nginx sent the requests to the other instance meanwhile"
    assert all(post_line(stack.url, "很好").status_code == 200 for _ in range(10))


@contextlib.contextmanager
def port_taken_while_down(stack, service: str, port: int) -> Iterator[None]:
    """`service` dies and, before the launcher restarts it, another program listens on `port`
    (the launcher is paused meanwhile, so the order is certain)."""
    launcher = stack.process.process.pid
    os.kill(launcher, signal.SIGSTOP)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT is no obstacle
    try:
        os.killpg(stack.service(service)["pid"], signal.SIGKILL)  # the whole group: nothing holds the port

        def bound() -> bool:
            try:
                squatter.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

        wait_until(bound, 10, f"port {port} to be free")
        squatter.listen()
    finally:
        os.kill(launcher, signal.SIGCONT)
    try:
        yield
    finally:
        squatter.close()


def port_of(address: str) -> int:
    return int(address.rstrip("/").rsplit(":", 1)[1])


def test_an_instance_whose_port_was_taken_while_it_was_down_moves_and_nginx_follows(stack):
    """Issue 13: it used to fail to bind, again and again, for ever."""
    before = stack.service("vision-api-2")
    with port_taken_while_down(stack, "vision-api-2", port_of(before["address"])):
        wait_until(lambda: stack.service("vision-api-2")["address"] != before["address"]
                   and api_ready(stack.service("vision-api-2")["address"]), 60, "vision-api-2 on a new port")
        after = stack.service("vision-api-2")
        assert after["restarts"] == before["restarts"] + 1, "restarted once, on the new port: no crash loop"
        moved = f"port {port_of(before['address'])} was taken while it was down; moving to {port_of(after['address'])}"
        assert moved in stack.process.log_text()
        for _ in range(8):  # nginx's round robin reaches the moved instance
            assert requests.post(f"{stack.url}/cv_sod", data=end_to_end.image_bytes(),
                                 headers={"Content-Type": "image/jpeg"}, timeout=30).status_code == 200
        served = requests.get(f"{after['address']}/metrics", timeout=5).text
        assert 'http_requests_total{method="POST",route="/cv_sod",status="200"}' in served


def test_a_model_server_whose_ports_were_taken_moves_and_the_apis_follow(stack):
    before = stack.service("model-server")
    grpc_port = int(before["address"].split("gRPC 127.0.0.1:", 1)[1].split(",")[0])
    with port_taken_while_down(stack, "model-server", grpc_port):
        wait_until(lambda: stack.service("model-server")["address"] != before["address"], 60, "a new address")
        wait_until(lambda: "API instances follow the model server" in stack.process.log_text(), 180,
                   "the API instances to follow the model server, one at a time")
        assert stack.service("model-server")["restarts"] == before["restarts"] + 1
        assert all(post_line(stack.url, "质量不错").status_code == 200 for _ in range(10))
        end_to_end.check_image_routes(stack.url)


def test_right_after_ready_every_route_answers_and_down_stops_everything(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stack-down")
    stack = Stack(run_dir, free_port())
    try:
        stack.wait_ready()
        end_to_end.check_every_route_answers(stack.url)
        pids = [service["pid"] for service in stack.state()["services"].values()]
        children = [c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)]
        result = stack.down()
        assert result.returncode == 0, result.stderr
        stack.process.process.wait(10)
        leftovers = [pid for pid in pids + children if psutil.pid_exists(pid)
                     and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not leftovers, f"still running: {leftovers}"
        assert not (run_dir / "stack.json").exists()
    finally:
        stack.process.stop()


def test_down_never_signals_a_stranger_that_reuses_a_recorded_pid(tmp_path):
    """After a crash or a reboot the pids in .run/stack.json may belong to other processes."""
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)  # its own group, as a stack process
    try:
        real_start = int(Path(f"/proc/{stranger.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        (tmp_path / "stack.json").write_text(json.dumps({
            "launcher_pid": stranger.pid, "launcher_started": real_start - 1,
            "process_groups": [[stranger.pid, real_start - 1]], "services": {}}))
        result = subprocess.run([sys.executable, "-m", "local_stack", "--run-dir", str(tmp_path), "down"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)
        assert stranger.poll() is None, "local_stack signalled a process that is not its own"
        assert not (tmp_path / "stack.json").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_a_model_that_fails_to_load_leaves_the_other_serving(tmp_path):
    repository = end_to_end.corrupt_cv_sod(tmp_path / "models")
    (tmp_path / "run").mkdir()
    with running_stack(tmp_path / "run", "--model-repository", str(repository)) as stack:
        end_to_end.check_one_broken_model_leaves_the_other_serving(stack.url)
        assert "WARNING: vision-api-1: its model is not available" in stack.process.log_text()


def test_rollout_finds_the_running_stack_and_refuses_a_model_that_takes_the_newest_version(stack):
    """`./stack rollout` reads the running stack's model servers, instances and repository from its
    state file; the committed models.config serves `latest`, where a version copied in goes live at
    once: nothing to roll out, and it says how to pin, touching nothing."""
    def rollout(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "local_stack", "--run-dir", str(stack.run_dir), "rollout", *args],
                              capture_output=True, text=True, timeout=60)

    assert rollout("status").stdout.strip().endswith("no rollout yet")
    refused = rollout("lstm", "2")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "serves the newest version in its folder" in refused.stdout and "specific" in refused.stdout
