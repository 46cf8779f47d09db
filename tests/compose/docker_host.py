"""A Docker engine and the stack as a compose project, for the live compose tier and for
`bench.run --mode compose`.

The engine is the one already running, else a `dockerd` started here and stopped again by whoever
started it. The project is compose.yaml exactly as users run it, plus, only where the official
images cannot be pulled (this project's own machines), compose.model-server.yaml for TF Serving
and stand-in base images (tests/compose/stand_in_images.py). Each project has its own name and a
free host port, and `down` removes every container, network and volume it made.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import yaml

from local_stack.topology import free_port
from tests.compose import stand_in_images

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
MODEL_SERVER_OVERRIDE = REPO_ROOT / "compose.model-server.yaml"
GPU_OVERRIDE = REPO_ROOT / "compose.gpu.yaml"
PROJECT_PREFIX = "msv-test"  # every project this module makes starts with it
_BUILT: dict[Path, dict[str, str]] = {}  # repository -> the image ids its last build in this process made


class DockerUnavailable(RuntimeError):
    """No Docker engine, compose v2 or debootstrap here, and none can be started."""


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def require_compose_cli() -> None:
    if shutil.which("docker") is None:
        raise DockerUnavailable("no docker client (scripts/bootstrap.sh --for-tests installs docker.io)")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        raise DockerUnavailable("no compose v2 plugin (scripts/bootstrap.sh --for-tests installs it)")


@contextlib.contextmanager
def docker_engine(log_dir: Path) -> Iterator[None]:
    """A Docker engine for the duration; one started here is stopped here, with its children."""
    require_compose_cli()
    if _docker_answers():
        yield
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.path.exists(dockerd) or os.geteuid() != 0:
        raise DockerUnavailable("no Docker engine runs and this user cannot start dockerd")
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "dockerd.log", "wb") as log:
        engine = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _docker_answers():
            if engine.poll() is not None or time.monotonic() > deadline:
                raise DockerUnavailable(f"dockerd did not start: {(log_dir / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        engine.send_signal(signal.SIGTERM)  # dockerd stops its containerd too
        try:
            engine.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait()


def _build_args_declared(build: dict, repo: Path) -> set[str]:
    dockerfile = repo / build["context"] / build.get("dockerfile", "Dockerfile")
    return set(re.findall(r"^ARG (\w+)", dockerfile.read_text(), re.MULTILINE))


def _image_id(image: str) -> str:
    found = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else ""


class ComposeProject:
    """One compose project of this repository's stack, named and ported apart from any other."""

    def __init__(self, work_dir: Path, http_port: int | None = None, env: dict[str, str] | None = None,
                 repo: Path = REPO_ROOT):
        self.name = f"{PROJECT_PREFIX}-{uuid.uuid4().hex[:8]}"
        self.env = env or {}  # compose variables, e.g. MODEL_REPOSITORY
        self.work_dir = work_dir
        self.http_port = http_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.repo = repo  # this repository, or a copy of it with changes (tests/own_model.py)
        self.files = [repo / COMPOSE_FILE.name]
        self.substitutions: dict[str, str] = {}  # official image -> what the project uses instead
        self.timings: dict[str, float] = {}  # step -> seconds, filled by compose_stack

    def prepare(self, log=None) -> None:
        """Choose the images: the official ones where they can be pulled, else ours and stand-ins."""
        chosen = stand_in_images.ensure(log or sys.stderr)
        self.substitutions = {official: image for official, image in chosen.items() if image != official}
        tfserving_image = yaml.safe_load(self.files[0].read_text())["services"]["tfserving"]["image"]
        if not stand_in_images.can_pull(tfserving_image):
            self.files.append(self.repo / MODEL_SERVER_OVERRIDE.name)
            self.substitutions[tfserving_image] = "compose.model-server.yaml"
        self.files.append(self._write_test_override(chosen))

    def _write_test_override(self, chosen: dict[str, str]) -> Path:
        """Stable names for the images built here (each run's build is the next run's cache, not
        one more copy per project name) and, where needed, stand-in base images."""
        args = stand_in_images.build_args(chosen) if self.substitutions else {}
        services: dict[str, dict] = {}
        for path in self.files:
            for name, service in (yaml.safe_load(path.read_text()).get("services") or {}).items():
                image = service.get("image")
                if "build" in service:
                    declared = _build_args_declared(service["build"], self.repo)
                    wanted = {arg: value for arg, value in args.items() if arg in declared}
                    services[name] = {"build": {"args": wanted}} if wanted else {}
                    ours = path.name == MODEL_SERVER_OVERRIDE.name
                    services[name]["image"] = image if ours else f"{PROJECT_PREFIX}/{name}"
                elif image in chosen and chosen[image] != image:  # a stand-in for a pulled image
                    services[name] = {"image": chosen[image]}
        path = self.work_dir / "compose.test.yaml"
        path.write_text("# Written by tests/compose/docker_host.py for a test run: image names to reuse, and\n"
                        "# stand-in base images where the official ones cannot be pulled.\n"
                        + yaml.safe_dump({"services": services}, sort_keys=True))
        return path

    def built_images(self) -> list[str]:
        return [s["image"] for s in yaml.safe_load(self.files[-1].read_text())["services"].values()
                if "build" in s or s["image"].startswith(PROJECT_PREFIX)]

    def image_sizes(self) -> dict[str, float]:
        """MB of each image the project runs."""
        sizes = {}
        for image in self.run("config", "--images").stdout.split():
            found = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                                   capture_output=True, text=True)
            if found.returncode == 0:
                sizes[image] = int(found.stdout) / 1e6
        return sizes

    def build(self) -> None:
        """`docker compose build`, once a test run per repository (the tiers share the images); the
        builds it supersedes are removed (they would pile up)."""
        built = {image: _image_id(image) for image in self.built_images()}
        if _BUILT.get(self.repo) == built and all(built.values()):
            return
        self.run("build", timeout=1800)
        _BUILT[self.repo] = {image: _image_id(image) for image in built}
        stale = [old for image, old in built.items() if old and old != _BUILT[self.repo][image]]
        if stale:
            subprocess.run(["docker", "image", "rm", *stale], capture_output=True)

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env, "HTTP_PORT": str(self.http_port), "COMPOSE_PROJECT_NAME": self.name}

    def command(self, *args: str) -> list[str]:
        return ["docker", "compose", "-p", self.name, *[a for f in self.files for a in ("-f", str(f))], *args]

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args), cwd=self.repo, env=self.environment(), capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def containers(self, service: str | None = None) -> list[dict]:
        """`docker compose ps` as dicts (Name, Service, State, Health, Publishers, ...)."""
        args = ["ps", "--format", "json"] + ([service] if service else [])
        out = self.run(*args).stdout.strip()
        if not out:
            return []
        rows = json.loads(out) if out.startswith("[") else [json.loads(line) for line in out.splitlines()]
        return sorted(rows, key=lambda row: row["Name"])

    def inspect(self, container: str) -> dict:
        out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
        return json.loads(out)[0]

    def address(self, container: str, port: int = 8000) -> str:
        """http://IP:port of a container on the project's network (this machine's own namespace)."""
        networks = self.inspect(container)["NetworkSettings"]["Networks"]
        return f"http://{next(iter(networks.values()))['IPAddress']}:{port}"

    def logs(self, tail: int = 200) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), check=False).stdout

    def down(self) -> None:
        self.run("--profile", "monitoring", "down", "--volumes", "--remove-orphans", "--timeout", "10",
                 timeout=300, check=False)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes still labelled with this project (none after `down`)."""
        label = f"label=com.docker.compose.project={self.name}"
        found = {}
        for kind, listing in (("containers", ["ps", "-a"]), ("networks", ["network", "ls"]),
                              ("volumes", ["volume", "ls"])):
            out = subprocess.run(["docker", *listing, "-q", "--filter", label], capture_output=True, text=True)
            found[kind] = out.stdout.split()
        return found


@contextlib.contextmanager
def compose_stack(work_dir: Path, *up_args: str, log=None, repo: Path = REPO_ROOT) -> Iterator[ComposeProject]:
    """The stack built and up (`docker compose up --wait`), always taken down afterwards."""
    project = ComposeProject(work_dir, repo=repo)
    started = time.monotonic()
    project.prepare(log)
    try:
        prepared = time.monotonic()
        project.build()
        built = time.monotonic()
        project.run("up", "--detach", "--wait", *up_args, timeout=600)
        project.timings = {"base images (pulled, or stand-ins found or built)": prepared - started,
                           "docker compose build": built - prepared,
                           "docker compose up --wait": time.monotonic() - built}
        if log:
            print("compose: " + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in project.timings.items()),
                  file=log, flush=True)
        yield project
    except BaseException:
        (work_dir / "compose-logs.txt").write_text(project.logs(400))
        raise
    finally:
        project.down()
