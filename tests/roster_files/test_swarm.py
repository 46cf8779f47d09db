"""compose.swarm.yaml (roster_files/swarm.py) is compose.yaml's stack with
what swarm needs, and docker's own stack loader takes it. That it runs is tests/swarm's to show."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from roster_files.swarm import HEALTH_INTERVAL, IGNORED, MODEL_SERVER_LABEL, NO_ROLLOUTS
from tests.conftest import API_NAMES, REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]
SWARM = yaml.safe_load((REPO_ROOT / "compose.swarm.yaml").read_text())["services"]
CARRIED = ("command", "entrypoint", "environment", "stop_grace_period", "user", "volumes")


def test_every_service_but_the_monitoring_profiles_with_compose_settings_unchanged():
    assert set(SWARM) == {name for name, service in COMPOSE.items() if not service.get("profiles")}
    for name, service in SWARM.items():
        assert not set(IGNORED) & set(service), name
        for key in CARRIED:
            expected = COMPOSE[name].get(key)
            if name in API_NAMES and key in NO_ROLLOUTS:  # no rollouts under swarm: roster_files.swarm
                expected = {k: v for k, v in expected.items() if k not in NO_ROLLOUTS[key]} \
                    if isinstance(expected, dict) else None
            assert service.get(key) == expected, (name, key)
        assert service["deploy"]["resources"] == COMPOSE[name]["deploy"]["resources"], name
        assert service["healthcheck"] == {**COMPOSE[name]["healthcheck"], "interval": HEALTH_INTERVAL}, name


def test_images_come_from_the_registry_except_the_model_servers():
    for name in [*API_NAMES, "nginx"]:
        assert SWARM[name]["image"].startswith("${REGISTRY:?"), name
        assert SWARM[name]["image"].endswith(f"/model-serving/{name}:${{TAG:-latest}}"), name
    assert SWARM["tfserving"]["image"] == f"${{MODEL_SERVER_IMAGE:-{COMPOSE['tfserving']['image']}}}"


def test_rolling_updates_start_first_and_roll_back_and_names_resolve_to_tasks():
    for name in [*API_NAMES, "tfserving"]:
        deploy = SWARM[name]["deploy"]
        # One model server a host: its new task cannot start beside the old; the other serves meanwhile.
        assert deploy["update_config"]["order"] == ("stop-first" if name == "tfserving" else "start-first"), name
        assert deploy["update_config"]["failure_action"] == "rollback", name
        assert deploy["endpoint_mode"] == "dnsrr", name
        assert deploy["restart_policy"]["condition"] == "any", name
    for name in API_NAMES:
        assert SWARM[name]["deploy"]["replicas"] == COMPOSE[name]["deploy"]["replicas"], name


def test_two_model_servers_on_two_hosts_with_a_repository_and_nginx_on_every_host():
    model_server = SWARM["tfserving"]["deploy"]
    assert model_server["placement"] == {"constraints": [MODEL_SERVER_LABEL], "max_replicas_per_node": 1}
    assert model_server["replicas"] == 2, "losing one host leaves a model server"
    nginx = SWARM["nginx"]
    assert nginx["deploy"]["mode"] == "global"
    assert nginx["deploy"]["update_config"]["order"] == "stop-first"  # a host-mode port is held by one task
    assert nginx["ports"] == [{"target": 8080, "published": "${HTTP_PORT:-8080}", "protocol": "tcp", "mode": "host"}]
    assert [name for name, service in SWARM.items() if service.get("ports")] == ["nginx"]


def stack_config_runs() -> bool:
    """`docker stack config` came with docker's client 20.10.? onwards (Debian's 20.10.24 lacks it)."""
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "stack", "config", "--help"], capture_output=True).returncode == 0


@pytest.mark.skipif(not stack_config_runs(), reason="needs a docker client with `docker stack config` (no engine)")
def test_docker_stack_config_accepts_it():
    environment = {key: value for key, value in os.environ.items() if key not in ("REGISTRY", "TAG")}
    loaded = subprocess.run(["docker", "stack", "config", "-c", "compose.swarm.yaml"], cwd=REPO_ROOT, text=True,
                            capture_output=True, env={**environment, "REGISTRY": "registry.test:5000"})
    assert loaded.returncode == 0, loaded.stderr
    services = yaml.safe_load(loaded.stdout)["services"]
    assert services["text-api"]["image"] == "registry.test:5000/model-serving/text-api:latest"
    assert services["tfserving"]["volumes"][0]["source"] == str(REPO_ROOT / "tfserving" / "models")
