"""Fixtures shared by every test: the repository root, free ports and real child processes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

import service_roster
from local_stack.topology import free_port
from tests.compose.docker_host import DockerUnavailable, docker_engine, require_compose_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "tfserving" / "models"
# The API services as the roster declares them (services/*/service.toml): the tests' one list.
ROSTER = service_roster.load(REPO_ROOT / "services")
API_NAMES = tuple(service.name for service in ROSTER)


def pytest_sessionstart(session) -> None:
    """A SIGTERM (a CI time-out, `kill`) stops the run the way Ctrl-C does, so fixtures still tear
    down: stacks stopped, containers removed, a dockerd started here stopped."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class ManagedProcess:
    """A child process in its own process group, always killed with its children."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                        cwd=cwd, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.alive():
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self._log.close()
        return self.process.returncode


@dataclasses.dataclass
class ServingTarget:
    grpc_address: str
    rest_url: str
    repository: Path | None  # where versions can be added; None for a server we cannot touch
    process: ManagedProcess | None = None


def start_model_server(repository: Path, log_path: Path, *extra: str,
                       ports: tuple[int, int] | None = None) -> tuple[ServingTarget, ManagedProcess]:
    """`ports` (gRPC, REST): a restart on the ports its clients know; else free ones."""
    grpc_port, rest_port = ports or (free_port(), free_port())
    process = ManagedProcess(
        [sys.executable, "-m", "model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         f"--model_config_file={repository / 'models.config'}", f"--rebase_model_base_path=/models={repository}",
         "--file_system_poll_wait_seconds=1", "--listen_address=127.0.0.1", "--max_num_load_retries=0", *extra],
        log_path,
    )
    target = ServingTarget(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}", repository, process)

    def ready() -> bool:
        assert process.alive(), process.log_text()
        return requests.get(f"{target.rest_url}/v1/models/lstm", timeout=1).ok

    try:
        wait_until(ready, 60, "the model server")
    except (TimeoutError, AssertionError):
        process.stop()
        raise
    return target, process


def copy_repository(destination: Path) -> Path:
    shutil.copytree(MODEL_REPOSITORY, destination, ignore=shutil.ignore_patterns("metrics.*"))
    return destination


@contextlib.contextmanager
def model_server_under_test(repository: Path, log_path: Path) -> Iterator[ServingTarget]:
    """The server named by TFSERVING_GRPC_ADDRESS (and TFSERVING_REST_URL,
    TFSERVING_MODEL_REPOSITORY) if set, e.g. a real TF Serving; else ours, with batching on."""
    if os.environ.get("TFSERVING_GRPC_ADDRESS"):
        given = os.environ.get("TFSERVING_MODEL_REPOSITORY")
        yield ServingTarget(os.environ["TFSERVING_GRPC_ADDRESS"], os.environ.get("TFSERVING_REST_URL", ""),
                            Path(given) if given else None)
        return
    target, process = start_model_server(
        repository, log_path, "--enable_batching", f"--batching_parameters_file={repository / 'batching.config'}",
        f"--monitoring_config_file={repository / 'monitoring.config'}")
    try:
        yield target
    finally:
        process.stop()


def api_ready(address: str) -> bool:
    """An API instance's /readyz says yes (no answer at all counts as no)."""
    try:
        return requests.get(f"{address}/readyz", timeout=2).ok
    except requests.RequestException:
        return False


class Stack:
    """`./stack up` as a user runs it (a supervising launcher), and what its state file says."""

    def __init__(self, run_dir: Path, port: int, *extra: str):
        self.run_dir = run_dir
        self.url = f"http://127.0.0.1:{port}"
        self.process = ManagedProcess(
            [sys.executable, "-m", "local_stack", "--run-dir", str(run_dir), "up", "--http-port", str(port), *extra],
            run_dir / "stack.log",
        )

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until(lambda: "ready in" in self.process.log_text() or not self.process.alive(), timeout, "the stack")
        assert self.process.alive(), self.process.log_text()

    def state(self) -> dict:
        return json.loads((self.run_dir / "stack.json").read_text())

    def service(self, name: str) -> dict:
        return self.state()["services"][name]

    def down(self) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "local_stack", "--run-dir", str(self.run_dir), "down"],
                              capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def running_stack(run_dir: Path, *extra: str) -> Iterator[Stack]:
    stack = Stack(run_dir, free_port(), *extra)
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.down()
        stack.process.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """`./stack up` as compose.yaml deploys it, shared by the tests that only use it (faults,
    client, browser) and leave it whole; tests that tear parts down start their own."""
    with running_stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture
def python() -> str:
    return sys.executable


def required_in_ci(what: str, reason: object, module_level: bool = False) -> None:
    """Tests that need something this machine may lack (Docker, a memory cgroup, kubectl) are
    skipped with a loud reason, except under CI=true, where they must run: CI installs what they
    need (scripts/bootstrap.sh --for-tests)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} must run in CI, and cannot: {reason}")
    print(f"\n*** {what.upper()} SKIPPED: {reason} ***", file=sys.stderr)
    pytest.skip(f"{what.upper()} SKIPPED: {reason}", allow_module_level=module_level)


# The Docker engine for the live compose tier (tests/compose) and the benchmark's compose mode;
# dockerd starts here when none answers.
def unavailable(error: DockerUnavailable) -> None:
    required_in_ci("the live compose tier", error)


@pytest.fixture(scope="session")
def compose_cli() -> None:
    """`docker compose` itself (enough for `config`; no engine needed)."""
    try:
        require_compose_cli()
    except DockerUnavailable as error:
        unavailable(error)


@pytest.fixture(scope="session")
def docker_host(compose_cli, tmp_path_factory):
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(docker_engine(tmp_path_factory.mktemp("dockerd")))
        except DockerUnavailable as error:
            unavailable(error)
        yield



# What each fault cost, a table per mode (the folder the test lives in), printed at the end of the run.
FAULT_TABLES: dict[str, list[dict[str, str]]] = {}
FAULT_TABLE_TITLES = {"faults": "local mode", "compose": "docker compose", "swarm": "docker swarm, 3 hosts"}


@pytest.fixture
def fault_table(request) -> list[dict[str, str]]:
    title = FAULT_TABLE_TITLES[request.node.path.parent.name]
    return FAULT_TABLES.setdefault(title, [])


def pytest_terminal_summary(terminalreporter) -> None:
    for title, rows in FAULT_TABLES.items():
        terminalreporter.section(f"faults, {title}: what each one cost")
        terminalreporter.write_line("| scenario | load | failed | recovery |")
        terminalreporter.write_line("|---|---|---:|---|")
        for row in rows:
            terminalreporter.write_line(f"| {row['scenario']} | {row['load']} | {row['failed']} | {row['recovery']} |")
