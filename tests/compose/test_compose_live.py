"""The stack under docker compose, for real: images built, `docker compose up --wait --scale
text-api=4`, then what users do to it: call every route through the published port, scale up and
down under load, kill replicas and the model server, look for what runs as root or is published,
add the monitoring profile, and take it all down again.

One project serves the whole module, in file order; each fault scenario waits until the stack is
whole again before it ends. The same steady load and the same fault table as local mode
(tests/faults): the table is printed at the end of the run.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from local_stack import compose_file
from tests import end_to_end
from tests.compose.docker_host import (
    COMPOSE_FILE,
    GPU_OVERRIDE,
    MODEL_SERVER_OVERRIDE,
    REPO_ROOT,
    ComposeProject,
    compose_stack,
)
from tests.conftest import api_ready, wait_until
from tests.faults.load import (
    HttpLoad,
    check_lost_only_in_flight,
    check_model_server_outage,
    check_one_of_several_model_servers_lost,
    lstm_answers,
    models_available,
    record_fault,
    shares_of_calls,
)
from tests.faults.worst_inputs import under_worst_inputs
from tests.own_model import NAME, ROUTE, add_third_service, copy_of_the_repository
from tests.services.vision_api.largest_images import largest_images

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def text_api_replicas(compose: ComposeProject) -> dict[str, str]:
    """Running text-api containers -> their address on the compose network."""
    return {c["Name"]: compose.address(c["Name"]) for c in compose.containers("text-api") if c["State"] == "running"}


def main_pid(compose: ComposeProject, container: str) -> int:
    return compose.inspect(container)["State"]["Pid"]


def restart_count(compose: ComposeProject, container: str) -> int:
    return compose.inspect(container)["RestartCount"]


def healthy(compose: ComposeProject, container: str) -> bool:
    state = compose.inspect(container)["State"]
    return state["Running"] and state.get("Health", {}).get("Status") == "healthy"


def test_every_route_and_the_legacy_forms_through_the_published_port(compose):
    end_to_end.check_every_route_answers(compose.url)  # first: right after `up --wait` said healthy
    end_to_end.check_text_routes(compose.url)
    end_to_end.check_image_routes(compose.url)
    end_to_end.check_nginx_refusals_are_json(compose.url)


def test_request_ids_reach_the_services_and_come_back(compose):
    reply = requests.post(f"{compose.url}/lstm", json={"line": "好"}, headers={"X-Request-ID": "compose-7"}, timeout=10)
    assert reply.headers["X-Request-ID"] == "compose-7"
    assert len(requests.post(f"{compose.url}/lstm", json={"line": "好"}, timeout=10).headers["X-Request-ID"]) == 32
    failed = requests.post(f"{compose.url}/lstm", json={"nope": 1}, headers={"X-Request-ID": "compose-8"}, timeout=10)
    assert failed.status_code == 400 and failed.json()["error"]["request_id"] == "compose-8"
    wait_until(lambda: '"request_id": "compose-8"' in compose.run("logs", "--no-color", "text-api").stdout, 10,
               "the service's log line")
    wait_until(lambda: '"request_id":"compose-7"' in compose.run("logs", "--no-color", "nginx").stdout, 10,
               "nginx's access line")


def test_the_access_log_keeps_paths_and_sizes_never_payloads(compose):
    end_to_end.check_access_log_is_private(compose.url, lambda: compose.run("logs", "--no-color", "nginx").stdout)


def test_nginx_runs_one_worker_per_cpu_of_its_limit_not_of_the_host(compose):
    nginx = compose.containers("nginx")[0]["Name"]
    limit = compose.inspect(nginx)["HostConfig"]["NanoCpus"] / 1e9
    master = psutil.Process(main_pid(compose, nginx))
    assert len(master.children()) == min(os.cpu_count(), math.ceil(limit)), (limit, master.children())


def test_all_four_replicas_receive_traffic(compose):
    replicas = text_api_replicas(compose)
    assert len(replicas) == 4
    before = {name: lstm_answers(address) for name, address in replicas.items()}
    for _ in range(120):
        assert end_to_end.post_line(compose.url, "还不错").status_code == 200
    served = {name: lstm_answers(address) - before[name] for name, address in replicas.items()}
    assert all(count >= 10 for count in served.values()), served


def test_the_largest_images_several_at_once_under_the_real_memory_limit(compose):
    """compose's 512 MB per vision-api container is the kernel's limit here: the largest image of
    each kind it accepts, two of each at once through nginx, costs no worker (before issue 13 six
    such images answered 502 and gunicorn logged SIGKILL four times)."""
    limit = compose_file.memory_mb(yaml.safe_load(COMPOSE_FILE.read_text())["services"]["vision-api"]
                                   ["deploy"]["resources"]["limits"]["memory"])
    images = list(largest_images(limit).values()) * 2

    def post(data: bytes) -> requests.Response:
        return requests.post(f"{compose.url}/cv_sod", data=data, headers={"Content-Type": "image/png"}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        replies = list(pool.map(post, images))
    statuses = [reply.status_code for reply in replies]
    # 503 busy: it waited its turn too long; 504 model_timeout: its turn came past its deadline.
    assert all(reply.status_code == 200 or (reply.status_code in (503, 504) and reply.json()["error"]["code"] in
               ("busy", "model_timeout")) for reply in replies), statuses
    assert statuses.count(200) >= len(images) // 2, statuses
    logs = compose.run("logs", "--no-color", "vision-api").stdout
    assert "SIGKILL" not in logs and "out of memory" not in logs
    assert all(not compose.inspect(c["Name"])["State"]["OOMKilled"] for c in compose.containers("vision-api"))


def test_a_stream_of_the_worst_inputs_loses_no_normal_request_and_no_worker(compose, fault_table):
    """Issue 20 under the real limits (512 MB and one CPU per vision-api replica): one worst image
    a second per vision-api replica and the largest text a second for a minute, beside a steady
    load of sentences and photos. Before, one 40 MP GIF OOM-killed both vision-api workers in turn
    and /cv_sod answered nothing for 10 s."""
    replicas = [c["Name"] for service in ("text-api", "vision-api") for c in compose.containers(service)]
    restarts = {name: restart_count(compose, name) for name in replicas}
    since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # one kernel, one clock
    load, stream = under_worst_inputs(compose.url, vision_replicas=len(compose.containers("vision-api")))
    record_fault(fault_table, "a worst image a second per vision-api replica, the largest text a second, 60 s "
                 "(issue 20)", load, f"{stream.summary()}; no worker or container replaced")
    assert load.failed() == [], load.failed()[:5]
    assert stream.mishandled() == [], stream.mishandled()[:5]
    logs = compose.run("logs", "--no-color", "--since", since, "text-api", "vision-api").stdout
    assert "SIGKILL" not in logs and "WORKER TIMEOUT" not in logs and "Booting worker" not in logs
    assert {name: restart_count(compose, name) for name in replicas} == restarts
    assert all(not compose.inspect(name)["State"]["OOMKilled"] for name in replicas)


def test_scaling_to_six_under_load_needs_no_reload_and_back_to_two_loses_nothing(compose, fault_table):
    nginx = compose.containers("nginx")[0]["Name"]
    nginx_started = compose.inspect(nginx)["State"]["StartedAt"]
    with HttpLoad(compose.url) as load:
        started = time.monotonic()
        compose.run("up", "--detach", "--wait", "--no-recreate", "--scale", "text-api=6")
        new = {n: a for n, a in text_api_replicas(compose).items() if n.endswith(("-5", "-6"))}
        assert len(new) == 2, new
        wait_until(lambda: all(lstm_answers(a) >= 10 for a in new.values()), 30, "the new replicas to get traffic")
        joined = time.monotonic() - started
    record_fault(fault_table, "scale text-api 4 -> 6 (`up --scale text-api=6 --no-recreate`)", load,
                 f"new replicas served traffic {joined:.1f} s after the command; no nginx reload")
    # Once in a CI run (1 of 1,511), a 502 in 3 ms while replicas joined: a POST nginx had sent,
    # which it no longer replays (issue 20); as for the scale-down below, its cause is still open.
    check_lost_only_in_flight(load)
    assert compose.inspect(nginx)["State"]["StartedAt"] == nginx_started, "nginx was not restarted"

    with HttpLoad(compose.url) as load:
        started = time.monotonic()
        compose.run("up", "--detach", "--wait", "--no-recreate", "--scale", "text-api=2")
        shrunk = time.monotonic() - started
        time.sleep(3)  # past nginx's DNS validity (1 s): requests now go to the two that remain
    record_fault(fault_table, "scale text-api 6 -> 2 under load", load, f"4 replicas drained and removed in "
                 f"{shrunk:.1f} s")
    assert len(text_api_replicas(compose)) == 2
    # Once in a CI run (1 of 955), a 502 in 8 ms: a POST nginx had sent to a replica being removed,
    # which nginx no longer replays (issue 20); its cause is not yet known (see the README).
    check_lost_only_in_flight(load)


def test_kill_9_of_a_replica_is_restarted_by_its_policy_and_loses_only_what_it_had_started(compose, fault_table):
    victim = sorted(text_api_replicas(compose))[0]
    restarts = restart_count(compose, victim)
    with HttpLoad(compose.url) as load:
        time.sleep(1)
        killed = time.monotonic()
        os.kill(main_pid(compose, victim), signal.SIGKILL)  # a crash, which the restart policy restarts
        wait_until(lambda: restart_count(compose, victim) > restarts and healthy(compose, victim), 90,
                   f"{victim} to be restarted and healthy")
        recovered = time.monotonic() - killed
        address = compose.address(victim)
        wait_until(lambda: lstm_answers(address) >= 10, 30, "traffic to reach the restarted replica")
    record_fault(fault_table, "kill -9 of one text-api replica's main process (of 2)", load,
                 f"restarted by `restart: unless-stopped`, healthy in {recovered:.1f} s; serving again; "
                 "the requests it had started lost (502)")
    check_lost_only_in_flight(load)


def test_sigterm_to_a_replica_drains_it_without_losing_requests(compose, fault_table):
    victim = sorted(text_api_replicas(compose))[-1]
    restarts = restart_count(compose, victim)
    with HttpLoad(compose.url) as load:
        time.sleep(1)
        stopped = time.monotonic()
        os.kill(main_pid(compose, victim), signal.SIGTERM)
        wait_until(lambda: restart_count(compose, victim) > restarts, 60, f"{victim} to exit and restart")
        drained = time.monotonic() - stopped
        wait_until(lambda: healthy(compose, victim), 90, f"{victim} to be healthy again")
        time.sleep(1)
    record_fault(fault_table, "SIGTERM to one text-api replica (graceful stop)", load,
                 f"drained and exited in {drained:.1f} s, then restarted by its policy")
    assert load.failed() == [], load.failed()[:5]


def kill_9_until_restarted(compose: ComposeProject, tfserving: str) -> tuple[float, float]:
    """kill -9 of a model server container's main process, then wait until its restart policy has
    brought it back with every model AVAILABLE; (killed, available) as time.monotonic()."""
    restarts = restart_count(compose, tfserving)
    killed = time.monotonic()
    os.kill(main_pid(compose, tfserving), signal.SIGKILL)
    wait_until(lambda: restart_count(compose, tfserving) > restarts
               and models_available(compose.address(tfserving, 8501)), 120, f"{tfserving} to be back")
    return killed, time.monotonic()


def test_kill_9_of_the_model_server_gives_fast_503s_then_full_service(compose, fault_table):
    tfserving = compose.containers("tfserving")[0]["Name"]
    with HttpLoad(compose.url) as load:
        time.sleep(1)
        killed, available = kill_9_until_restarted(compose, tfserving)
        wait_until(lambda: load.outcomes[-1].started > available + 6, 30, "6 s of load after the restart")
    check_model_server_outage(fault_table, "model server kill -9, restarted by its policy", load, killed, available)
    wait_until(lambda: healthy(compose, tfserving), 60, "the model server's health check")
    assert all(api_ready(address) for address in text_api_replicas(compose).values())


def model_server_urls(compose: ComposeProject) -> list[str]:
    return [compose.address(c["Name"], 8501) for c in compose.containers("tfserving") if c["State"] == "running"]


def test_model_servers_scale_1_2_1_under_load_share_the_calls_and_losing_one_loses_no_request(
        compose, fault_table):
    """Every API replica resolves every address of `tfserving` (dns:///tfserving:8500) and sends
    each call to the next: a second model server takes half the calls without restarting any API
    replica, a killed one costs no request (its calls in flight are asked of the other), and going
    back to one loses nothing."""
    apis = {name: main_pid(compose, name) for name in text_api_replicas(compose)}
    # `up` scales every service it is not told about back to its deploy.replicas.
    keep_api_scale = [f"--scale={api}={len(compose.containers(api))}" for api in ("text-api", "vision-api")]
    with HttpLoad(compose.url) as scaling:
        compose.run("up", "--detach", "--wait", "--no-recreate", "--scale", "tfserving=2", *keep_api_scale)
        wait_until(lambda: len(model_server_urls(compose)) == 2 and min(shares_of_calls(model_server_urls(compose), 1))
                   > 0.2, 30, "the second model server to take calls (found through DNS)")
        shares = shares_of_calls(model_server_urls(compose), 6)
    record_fault(fault_table, "scale tfserving 1 -> 2 under load (`up --scale tfserving=2`)", scaling,
                 f"the API replicas found it by DNS; shares of the calls {shares[0]:.0%} / {shares[1]:.0%}")
    assert all(0.4 <= share <= 0.6 for share in shares), shares
    assert scaling.failed() == [], scaling.failed()[:5]

    second = [c["Name"] for c in compose.containers("tfserving")][-1]
    with HttpLoad(compose.url) as load:
        time.sleep(1)
        killed, back = kill_9_until_restarted(compose, second)
        wait_until(lambda: min(shares_of_calls(model_server_urls(compose), 1)) > 0.2, 30,
                   "the restarted model server to take calls again")
        taking = time.monotonic() - back
    check_one_of_several_model_servers_lost(fault_table, "kill -9 of one model server (of 2) under load", load, killed,
                                            f"restarted by its policy, taking calls {taking:.1f} s after its "
                                            "models were AVAILABLE")

    with HttpLoad(compose.url) as shrinking:
        time.sleep(1)
        compose.run("up", "--detach", "--wait", "--no-recreate", "--scale", "tfserving=1", *keep_api_scale)
        time.sleep(3)
    record_fault(fault_table, "scale tfserving 2 -> 1 under load", shrinking, "the stopped one's calls finished first")
    assert shrinking.failed() == [], shrinking.failed()[:5]
    assert {name: main_pid(compose, name) for name in text_api_replicas(compose)} == apis, "no API replica restarted"


def test_nothing_runs_as_root_the_repository_is_read_only_and_only_nginx_is_published(compose):
    for container in compose.containers():
        uid = subprocess.run(["docker", "exec", container["Name"], "id", "-u"], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert uid != "0", f"{container['Name']} runs as root"
        published = [p for p in container.get("Publishers") or [] if p.get("PublishedPort")]
        assert bool(published) == (container["Service"] == "nginx"), (container["Name"], published)
    tfserving = compose.containers("tfserving")[0]["Name"]
    [models] = [m for m in compose.inspect(tfserving)["Mounts"] if m["Destination"] == "/models"]
    assert models["RW"] is False


def test_nginx_cannot_reach_the_model_server_and_the_api_services_can(compose):
    """Issue 33: the model server's ports answer HandleReloadConfigRequest from any peer; nginx,
    which faces the callers, is on no network with it."""
    nginx = compose.containers("nginx")[0]["Name"]
    api = compose.containers("text-api")[0]["Name"]
    address = compose.address(compose.containers("tfserving")[0]["Name"], 8501)

    def fetch(container: str, url: str) -> subprocess.CompletedProcess | None:
        """What `container` got from `url`; None when nothing answered in 10 s (packets dropped)."""
        command = (["wget", "-q", "-T", "3", "-O", "-", url] if container == nginx else
                   ["python", "-c", f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=3).read())"])
        try:
            return subprocess.run(["docker", "exec", container, *command], capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return None

    for url in ("http://tfserving:8501/v1/models/lstm", f"{address}/v1/models/lstm"):
        answer = fetch(nginx, url)
        assert answer is None or answer.returncode != 0, f"nginx reached the model server at {url}"
    reached = fetch(api, "http://tfserving:8501/v1/models/lstm")
    assert reached is not None and reached.returncode == 0 and "AVAILABLE" in reached.stdout, reached


def test_monitoring_profile_finds_every_replica_through_dns(compose):
    compose.run("--profile", "monitoring", "up", "--detach", "--wait", "--no-recreate", "prometheus")
    prometheus = compose.address(compose.containers("prometheus")[0]["Name"], 9090)
    expected = {"text-api": len(text_api_replicas(compose)), "vision-api": len(compose.containers("vision-api")),
                "tfserving": 1}

    def all_up() -> bool:
        targets = requests.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        up = {job: sum(t["labels"]["job"] == job and t["health"] == "up" for t in targets) for job in expected}
        return up == expected

    wait_until(all_up, 60, f"Prometheus to scrape {expected} targets, all up", interval=1)


def test_gpu_override_merges_as_intended(compose_cli):
    """No GPU here to run it: `docker compose config` shows what a GPU host would run."""
    merged = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "-f", str(GPU_OVERRIDE), "config",
                             "--format", "json"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    services = json.loads(merged.stdout)["services"]
    plain = json.loads(subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json"],
                                      cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout)["services"]
    tfserving = services["tfserving"]
    assert tfserving["image"] == plain["tfserving"]["image"] + "-gpu"
    [device] = tfserving["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    assert tfserving["command"] == plain["tfserving"]["command"]
    assert tfserving["healthcheck"] == plain["tfserving"]["healthcheck"]
    assert {k: v for k, v in services.items() if k != "tfserving"} == \
        {k: v for k, v in plain.items() if k != "tfserving"}, "only the model server changes"


def test_model_server_override_changes_only_the_image(compose_cli):
    def config(*files):
        args = [a for f in files for a in ("-f", str(f))]
        return json.loads(subprocess.run(["docker", "compose", *args, "config", "--format", "json"], cwd=REPO_ROOT,
                                         capture_output=True, text=True, check=True).stdout)["services"]

    plain, ours = config(COMPOSE_FILE), config(COMPOSE_FILE, MODEL_SERVER_OVERRIDE)
    assert ours["tfserving"]["build"]["dockerfile"] == "tfserving/model_server/Dockerfile"
    strip = lambda service: {k: v for k, v in service.items() if k not in ("image", "build")}
    assert strip(ours["tfserving"]) == strip(plain["tfserving"])


def test_down_leaves_no_container_network_or_volume(compose):
    compose.down()
    assert compose.leftovers() == {"containers": [], "networks": [], "volumes": []}


def test_a_model_that_fails_to_load_leaves_the_other_serving(docker_host, tmp_path):
    """A corrupt cv_sod: the model server finishes its first loads (cv_sod failed), text-api and
    nginx serve, vision-api stays unhealthy and answers 503 JSON with Retry-After."""
    repository = Path(tempfile.mkdtemp(prefix="broken-models-"))  # readable by the containers' users
    try:
        end_to_end.corrupt_cv_sod(repository / "models")
        subprocess.run(["chmod", "-R", "a+rX", str(repository)], check=True)
        project = ComposeProject(tmp_path, env={"MODEL_REPOSITORY": str(repository / "models")})
        project.prepare()
        try:
            project.build()
            project.run("up", "--detach")
            wait_until(lambda: all(healthy(project, c["Name"]) for c in project.containers("text-api")), 180,
                       "text-api to be healthy")
            wait_until(lambda: requests.get(f"{project.url}/nginx-health", timeout=2).ok, 60, "nginx")
            end_to_end.check_one_broken_model_leaves_the_other_serving(project.url)
            assert not any(healthy(project, c["Name"]) for c in project.containers("vision-api"))
        finally:
            project.down()
        assert project.leftovers() == {"containers": [], "networks": [], "volumes": []}
    finally:
        shutil.rmtree(repository, ignore_errors=True)


def test_a_third_service_added_as_the_readme_says_runs_under_compose(docker_host):
    """The README's "Your own model" in a copy of the repository, for real: compose builds the new
    service from the one API Dockerfile, its model loads, nginx routes its route to it."""
    work = Path(tempfile.mkdtemp(prefix="own-model-"))  # readable by the containers' users
    try:
        repo = copy_of_the_repository(work / "repo")
        add_third_service(repo)
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        with compose_stack(work, "--scale", "text-api=1", "--scale", "vision-api=1", repo=repo) as project:
            answer = requests.post(f"{project.url}{ROUTE}", json={"x": [1, 2.5]}, timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["y"] == [2.0, 5.0]
            assert len(project.containers(NAME)) == 2, "deploy.replicas from x-api-service"
    finally:
        shutil.rmtree(work, ignore_errors=True)
