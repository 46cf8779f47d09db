"""What local mode takes from compose.yaml and the roster, so that both modes run with the same settings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

import service_roster
from service_roster import Service

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
MODEL_REPOSITORY = REPO_ROOT / "tfserving" / "models"
SERVICES_DIR = REPO_ROOT / "services"
# Flags local mode sets itself: loopback ports chosen at start.
_LOCAL_FLAGS = ("--port=", "--rest_api_port=")
# Where compose mounts the model repository inside the TF Serving container.
CONTAINER_MODEL_ROOT = "/models"


@dataclasses.dataclass(frozen=True)
class ComposeSettings:
    services: list[Service]  # the API services (the roster), each with its compose entry
    model_server_flags: list[str]  # tfserving's command, minus the ports
    environments: dict[str, dict[str, str]]  # API service -> its environment, with MEMORY_LIMIT_MB
    replicas: dict[str, int]  # API service -> instances started by default (`deploy.replicas`)
    model_names: list[str]  # from models.config, to know when the model server is ready


def load(compose_file: Path = COMPOSE_FILE, repository: Path = MODEL_REPOSITORY,
         services_dir: Path = SERVICES_DIR) -> ComposeSettings:
    services = yaml.safe_load(compose_file.read_text())["services"]
    roster = service_roster.load(services_dir)
    api_services = [s.name for s in roster]
    missing = [name for name in api_services if name not in services]
    if missing:
        raise ValueError(f"{compose_file} has no entry for {missing} (in the roster, {services_dir}/*/service.toml)")
    flags = [_on_this_machine(flag, repository) for flag in services["tfserving"]["command"]
             if not flag.startswith(_LOCAL_FLAGS)]
    environments = {name: {key: str(value) for key, value in services[name].get("environment", {}).items()}
                    for name in api_services}
    for name in api_services:  # a container reads its limit from its cgroup; a local process is told it
        limit = services[name].get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        if limit is not None:
            environments[name]["MEMORY_LIMIT_MB"] = str(memory_mb(limit))
    config_file = next(f.split("=", 1)[1] for f in flags if f.startswith("--model_config_file="))
    config_text = Path(config_file).read_text()
    replicas = {name: int(services[name].get("deploy", {}).get("replicas", 1)) for name in api_services}
    model_names = re.findall(r'^\s*name:\s*"([^"]+)"', config_text, re.MULTILINE)
    return ComposeSettings(roster, flags, environments, replicas, model_names)


def memory_mb(size: str | int) -> int:
    """compose's memory size ("512m", "1g", "768M", or bytes) in MB."""
    text = str(size).strip().lower().removesuffix("b")
    scale = {"k": 2**10, "m": 2**20, "g": 2**30}.get(text[-1:], 1)
    return int(float(text.rstrip("kmg")) * scale) // 2**20


def _on_this_machine(flag: str, repository: Path) -> str:
    """`--x=/models/file` (a path in the container) -> `--x=<repository>/file`."""
    name, sep, value = flag.partition("=")
    if sep and value.startswith(CONTAINER_MODEL_ROOT + "/"):
        return f"{name}={repository / value[len(CONTAINER_MODEL_ROOT) + 1:]}"
    return flag
