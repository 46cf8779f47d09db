"""Fixtures shared by every test: the repository root, free ports and real child processes."""

from __future__ import annotations

import contextlib
import dataclasses
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

from local_stack.topology import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "tfserving" / "models"


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
        full_env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tfserving'}",
                    "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
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


def start_model_server(repository: Path, log_path: Path, *extra: str) -> tuple[ServingTarget, ManagedProcess]:
    grpc_port, rest_port = free_port(), free_port()
    process = ManagedProcess(
        [sys.executable, "-m", "model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         f"--model_config_file={repository / 'models.config'}", f"--rebase_model_base_path=/models={repository}",
         "--file_system_poll_wait_seconds=1", "--listen_address=127.0.0.1", *extra],
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
        repository, log_path, "--enable_batching", f"--batching_parameters_file={repository / 'batching.config'}")
    try:
        yield target
    finally:
        process.stop()


@pytest.fixture
def python() -> str:
    return sys.executable
