"""Fixtures for the API services: a stand-in model client for unit tests of the HTTP glue, and
the real stack (model server + gunicorn instances) for integration tests."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from local_stack.topology import GUNICORN_CONFIG
from tests.conftest import (
    MODEL_REPOSITORY,
    REPO_ROOT,
    ManagedProcess,
    ServingTarget,
    free_port,
    model_server_under_test,
    wait_until,
)
from tests.memory_cgroup import MemoryCgroup
from tfserving_client import ModelServerError, PredictResult, VersionStatus


class FakeModelClient:
    """Answers like the model server, from a function; or fails with a chosen gRPC status.

    Only for tests of the HTTP layer: the integration tests use the real server.
    """

    def __init__(self, answer: Callable[[dict], dict]):
        self.answer = answer
        self.fail_with: grpc.StatusCode | None = None
        self.calls: list[dict] = []

    def connection_failing(self) -> bool:
        """As a channel that cannot reach the model server says, between its attempts to reconnect."""
        return self.fail_with == grpc.StatusCode.UNAVAILABLE

    def predict(self, model_name, inputs, **options) -> PredictResult:
        self.calls.append({"model": model_name, "inputs": inputs, **options})
        if self.fail_with is not None:
            raise ModelServerError(self.fail_with, "injected by the test")
        return PredictResult(self.answer(inputs), model_name, 1)

    def model_status(self, model_name, **options) -> list[VersionStatus]:
        if self.fail_with is not None:
            raise ModelServerError(self.fail_with, "injected by the test")
        return [VersionStatus(1, "AVAILABLE")]


def fake_sentiment(inputs: dict) -> dict:
    """POS when the first word is 喜欢 or 好, else NEG."""
    first = [row[0].decode() for row in inputs["words"]]
    positive = np.array([w in ("喜欢", "好") for w in first])
    return {"labels": np.array([b"POS" if p else b"NEG" for p in positive], dtype=object),
            "classes_id": positive.astype(np.int64),
            "softmax": np.stack([np.where(positive, 0.2, 0.9), np.where(positive, 0.8, 0.1)], 1).astype(np.float32)}


def fake_saliency(inputs: dict) -> dict:
    """Salient where the model input is brighter than its mean."""
    image = inputs["img_in"]
    return {"img_out": (image.mean(axis=3, keepdims=True) > 0).astype(np.float32)}


@pytest.fixture
def text_client_fake():
    return FakeModelClient(fake_sentiment)


@pytest.fixture
def vision_client_fake():
    return FakeModelClient(fake_saliency)


@dataclasses.dataclass
class ApiInstance:
    url: str
    process: ManagedProcess


def start_api(service: str, model_server: str, log_path: Path, workers: int = 1,
              env: dict[str, str] | None = None, cgroup: MemoryCgroup | None = None,
              port: int | None = None) -> ApiInstance:
    """Start a service's gunicorn exactly as local mode does, in its folder with the shared config
    (inside `cgroup` when given: under a container's memory limit; on `port`, a restart's, if given)."""
    port = port or free_port()
    service_dir = REPO_ROOT / "services" / service
    command = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, "--chdir", str(service_dir)]
    process = ManagedProcess(
        cgroup.command(command) if cgroup else command,
        log_path,
        env={"TFSERVING_GRPC_ADDRESS": model_server, "API_BIND": f"127.0.0.1:{port}",
             "WEB_CONCURRENCY": str(workers), "PROMETHEUS_MULTIPROC_DIR": str(log_path.parent / "metrics"),
             **(env or {})},
        cwd=service_dir,
    )
    instance = ApiInstance(f"http://127.0.0.1:{port}", process)

    def up() -> bool:
        assert process.alive(), process.log_text()[-3000:]
        return requests.get(f"{instance.url}/healthz", timeout=1).ok

    try:
        wait_until(up, 60, f"{service} on port {port}")
    except (TimeoutError, AssertionError):
        process.stop()
        raise
    return instance


@pytest.fixture(scope="session")
def model_server(tmp_path_factory) -> ServingTarget:
    """What the services talk to: the committed model repository, or TFSERVING_GRPC_ADDRESS."""
    log_path = tmp_path_factory.mktemp("services-model-server") / "model_server.log"
    with model_server_under_test(MODEL_REPOSITORY, log_path) as target:
        yield target


@pytest.fixture(scope="session")
def text_api(model_server, tmp_path_factory) -> ApiInstance:
    instance = start_api("text-api", model_server.grpc_address, tmp_path_factory.mktemp("text-api") / "log", 2)
    yield instance
    instance.process.stop()


@pytest.fixture(scope="session")
def vision_api(model_server, tmp_path_factory) -> ApiInstance:
    instance = start_api("vision-api", model_server.grpc_address, tmp_path_factory.mktemp("vision-api") / "log", 1)
    yield instance
    instance.process.stop()
