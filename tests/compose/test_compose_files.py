"""compose.yaml and its overrides, checked statically (tests/compose/test_compose_live.py runs them): valid
against the compose specification, and shaped the way the system needs."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from compose_spec import PyCompose

from local_stack.topology import GUNICORN_CONFIG
from tests.conftest import API_NAMES, REPO_ROOT, ROSTER


def interpolated(path: Path) -> dict:
    """The file as compose reads it with no variables set: `${VAR:-default}` -> default, `$$` -> `$`."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), path.read_text())
    return yaml.safe_load(text.replace("$$", "$"))


COMPOSE = interpolated(REPO_ROOT / "compose.yaml")
GPU = interpolated(REPO_ROOT / "compose.gpu.yaml")
SERVICES = COMPOSE["services"]
APIS = API_NAMES
API_DOCKERFILE = REPO_ROOT / "services" / "api.Dockerfile"
DOCKERFILES = [API_DOCKERFILE, REPO_ROOT / "services/nginx/Dockerfile", REPO_ROOT / "tfserving/model_server/Dockerfile"]
MODEL_SERVER = interpolated(REPO_ROOT / "compose.model-server.yaml")["services"]["tfserving"]


def merged_with_gpu() -> dict:
    """What `docker compose -f compose.yaml -f compose.gpu.yaml` sees (mappings merge)."""

    def merge(base, override):
        if isinstance(base, dict) and isinstance(override, dict):
            return {k: merge(base[k], v) if k in base else v for k, v in override.items()} | \
                {k: v for k, v in base.items() if k not in override}
        return override

    return merge(copy.deepcopy(COMPOSE), GPU)


@pytest.mark.parametrize("document", [COMPOSE, merged_with_gpu()], ids=["compose", "compose+gpu"])
def test_valid_compose_specification(document):
    parsed = PyCompose.from_yaml(yaml.safe_dump(document))
    assert sorted(parsed.service_names()) == sorted(["grafana", "nginx", "prometheus", "rollout", "tfserving",
                                                     *API_NAMES])


def test_only_nginx_publishes_a_port_and_nothing_pins_a_container_name():
    for name, service in SERVICES.items():
        assert "container_name" not in service, name
        if "monitoring" in service.get("profiles", []):
            assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), "loopback only"
        else:
            assert ("ports" in service) == (name == "nginx"), name


@pytest.mark.parametrize("override", ["compose.model-server.yaml", "compose.gpu.yaml"])
def test_no_model_server_port_is_published_with_any_override(override):
    """Its ModelService can unload every model (HandleReloadConfigRequest): only the API services,
    on compose's network, reach it (issue 20)."""
    for service in (SERVICES["tfserving"], interpolated(REPO_ROOT / override)["services"]["tfserving"]):
        assert not {"ports", "network_mode", "network"} & set(service), "published or on the host's network"


def test_the_model_server_shares_an_internal_network_with_the_api_services_alone():
    """Issue 33: nginx, which faces the callers, and Grafana shared one network with the model
    server, whose ports can unload every model. Prometheus may join it: it only scrapes, with GETs
    its read-only config names, and is published nowhere. So may the rollout: a command its user
    runs (`docker compose run`, profile tools) to move versions, which is the reload's purpose."""
    networks = {name: set(service.get("networks", ["default"])) for name, service in SERVICES.items()}
    assert networks["tfserving"] == {"models"} and COMPOSE["networks"]["models"] == {"internal": True}
    assert {name for name, joined in networks.items() if "models" in joined} == \
        {"tfserving", "prometheus", "rollout", *APIS}
    assert SERVICES["rollout"]["profiles"] == ["tools"] and networks["rollout"] == {"models"}
    assert all(networks[api] == {"front", "models"} for api in APIS) and networks["nginx"] == {"front"}
    assert networks["grafana"] == {"monitoring"}


def test_monitoring_is_an_optional_profile_reading_the_repository_config():
    assert {n for n, s in SERVICES.items() if "monitoring" in s.get("profiles", [])} == {"prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        image, _, tag = SERVICES[name]["image"].partition(":")
        assert tag and tag != "latest", name
        assert all(v.endswith(":ro") for v in SERVICES[name]["volumes"]), name
    assert "--monitoring_config_file=/models/monitoring.config" in SERVICES["tfserving"]["command"]


def test_grafana_has_no_default_admin_login():
    environment = SERVICES["grafana"]["environment"]
    assert environment["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert environment["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert not any("PASSWORD" in name for name in environment), "no credentials in the repository"


def test_every_service_restarts_has_a_health_check_and_limits():
    for name, service in SERVICES.items():
        if "tools" in service.get("profiles", []):  # a command run once (`docker compose run --rm`)
            continue
        assert service["restart"] in ("unless-stopped", "always"), name
        assert service["healthcheck"]["test"], name
        assert service["deploy"]["resources"]["limits"]["memory"], name


def test_start_order_waits_for_the_model_server_but_not_for_every_model():
    """The APIs wait until the model server has finished its first loads; nginx waits for no API
    to be healthy, since an API whose model failed to load stays unhealthy and the others must
    still be reachable."""
    for api in APIS:
        assert SERVICES[api]["depends_on"] == {"tfserving": {"condition": "service_healthy"}}
    assert SERVICES["nginx"]["depends_on"].keys() <= set(APIS)
    assert all(d == {"condition": "service_started"} for d in SERVICES["nginx"]["depends_on"].values())
    check = " ".join(SERVICES["tfserving"]["healthcheck"]["test"])
    models = {service.model for service in ROSTER}
    assert "/models/models.config" in check and not any(m in check for m in models), "models come from models.config"


def test_tf_serving_is_pinned_reads_the_repository_read_only_and_batches():
    tfserving = SERVICES["tfserving"]
    image, _, tag = tfserving["image"].partition(":")
    assert image == "tensorflow/serving" and tag[:1].isdigit(), "a pinned version, not latest"
    assert "./tfserving/models:/models:ro" in tfserving["volumes"]
    assert "${MODEL_REPOSITORY:-./tfserving/models}:/models:ro" in (REPO_ROOT / "compose.yaml").read_text(), \
        "another repository through MODEL_REPOSITORY, as local mode's --model-repository"
    flags = tfserving["command"]
    for flag in ("--model_config_file=/models/models.config", "--enable_batching",
                 "--batching_parameters_file=/models/batching.config"):
        assert flag in flags
    assert "curl" not in str(tfserving["healthcheck"]), "the image has no curl"
    assert tfserving["user"] == "65534:65534", "not the image's default root"
    model_server_version = tag.split("-")[0]
    pinned = (REPO_ROOT / "requirements" / "model-server.txt").read_text()
    assert f"tensorflow-cpu=={model_server_version}" in pinned, "export with the TF version the image runs"


def test_api_services_build_from_the_one_api_dockerfile_and_reach_tf_serving_by_name():
    for api in APIS:
        build = {"context": ".", "dockerfile": "services/api.Dockerfile", "args": {"SERVICE": api}}
        assert SERVICES[api]["build"] == build
        assert SERVICES[api]["environment"]["TFSERVING_GRPC_ADDRESS"] == "dns:///tfserving:8500"


def test_gpu_override_swaps_the_image_and_reserves_a_gpu():
    tfserving = merged_with_gpu()["services"]["tfserving"]
    assert tfserving["image"].endswith("-gpu")
    assert tfserving["image"].split(":")[1].removesuffix("-gpu") == SERVICES["tfserving"]["image"].split(":")[1]
    device = tfserving["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert tfserving["environment"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert tfserving["command"] == SERVICES["tfserving"]["command"], "same flags on GPU"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_base_images_are_build_arguments_defaulting_to_pinned_official_images(dockerfile):
    """So that users build on the official images and a test can point builds at stand-ins."""
    lines = dockerfile.read_text().splitlines()
    defaults = dict(line[4:].split("=", 1) for line in lines if line.startswith("ARG ") and "=" in line)
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert bases and all(base.startswith("${") and base.endswith("}") for base in bases), bases
    for base in bases:
        official = defaults[base[2:-1]]
        assert ":" in official and not official.endswith(":latest") and "stand-in" not in official, official


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_hadolint_is_clean(dockerfile):
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("api", APIS)
def test_api_images_run_gunicorn_from_the_shared_config_as_non_root_without_tensorflow(api):
    dockerfile = API_DOCKERFILE.read_text()
    assert f'CMD ["gunicorn", "-c", "{GUNICORN_CONFIG}"]' in dockerfile, "the config local mode runs"
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in dockerfile
    requirements = [*(REPO_ROOT / "services" / api / "requirements.txt").read_text().lower().splitlines(),
                    *(REPO_ROOT / "services" / "api-requirements.txt").read_text().lower().splitlines()]
    assert not [line for line in requirements if "tensorflow" in line and not line.startswith("#")]


def test_nginx_image_renders_the_shared_template_and_runs_unprivileged():
    dockerfile = (REPO_ROOT / "services" / "nginx" / "Dockerfile").read_text()
    assert "service_roster.nginx_conf compose" in dockerfile and "nginx-unprivileged" in dockerfile
    version = dockerfile.split("nginx-unprivileged:")[1].split("-")[0]
    assert tuple(map(int, version.split("."))) >= (1, 27, 3), "upstream `resolve` needs nginx 1.27.3+"


def test_model_server_override_builds_ours_with_the_official_flags_and_tf_version():
    """compose.model-server.yaml swaps only the image: flags, health check and mounts stay compose.yaml's."""
    assert set(MODEL_SERVER) == {"image", "build"}
    assert MODEL_SERVER["build"] == {"context": ".", "dockerfile": "tfserving/model_server/Dockerfile"}
    name, _, tag = MODEL_SERVER["image"].partition(":")
    assert name != "tensorflow/serving", "never shadow the official image's name"
    assert tag == SERVICES["tfserving"]["image"].split(":")[1], "the TF version of the official image it replaces"
    dockerfile = (REPO_ROOT / "tfserving/model_server/Dockerfile").read_text()
    assert "USER 65534" in dockerfile and "model-server.txt" in dockerfile
    for entrypoint in ("tensorflow_model_server", "tf_serving_entrypoint.sh"):
        script = REPO_ROOT / "tfserving/model_server/entrypoints" / entrypoint
        assert os.access(script, os.X_OK), f"{entrypoint} must be executable"
    assert SERVICES["tfserving"]["entrypoint"] == ["tensorflow_model_server"]
