"""Hot model updates: versions appearing and disappearing, labels moving, all under load.

Each scenario keeps a steady stream of Predict calls going and counts every failure; the
answering version is read from the response's model_spec.
"""

from __future__ import annotations

import collections
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from tests.conftest import wait_until
from tests.tfserving.test_grpc_conformance import lstm_request
from tests.tfserving.versions import add_version, reload_request, versions_in_state

POLL_PLUS_LOAD_SECONDS = 30


class SteadyLoad:
    """A few threads calling Predict back to back; records answering versions and errors."""

    def __init__(self, stub, threads: int = 4, **spec):
        self.stub, self.spec = stub, spec
        self.versions: collections.deque = collections.deque(maxlen=40)
        self.errors: list[str] = []
        self.ok = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.stub.Predict(lstm_request(**self.spec), timeout=10)
                self.versions.append(response.model_spec.version.value)
                self.ok += 1
            except grpc.RpcError as error:
                self.errors.append(f"{error.code()}: {error.details()}")

    def recent(self) -> set[int]:
        return set(list(self.versions)[-8:])

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        wait_until(lambda: self.ok > 10, 20, "the load to start")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@pytest.fixture
def repository(serving) -> Path:
    if serving.repository is None:
        pytest.skip("set TFSERVING_MODEL_REPOSITORY to the folder the server reads to run hot-update tests")
    return serving.repository


def test_new_version_takes_over_and_removal_falls_back_without_failures(repository, prediction_stub, model_stub):
    with SteadyLoad(prediction_stub) as load:
        assert load.recent() == {1}
        add_version(repository, "lstm", 1, 2)
        wait_until(lambda: load.recent() == {2}, POLL_PLUS_LOAD_SECONDS, "version 2 to answer")
        shutil.rmtree(repository / "lstm" / "2")
        wait_until(lambda: load.recent() == {1}, POLL_PLUS_LOAD_SECONDS, "version 1 to answer again")
    assert load.errors == []
    assert load.ok > 50
    assert versions_in_state(model_stub, "lstm", get_model_status_pb2.ModelVersionStatus.AVAILABLE) == {1}


def test_labels_move_between_versions_without_failures(repository, prediction_stub, model_stub):
    original = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((repository / "models.config").read_text(), original)

    def reload(config) -> None:
        response = model_stub.HandleReloadConfigRequest(
            reload_request(config), timeout=POLL_PLUS_LOAD_SECONDS
        )
        assert response.status.error_code == 0, response.status.error_message

    add_version(repository, "lstm", 1, 2)
    try:
        serve_both = model_server_config_pb2.ModelServerConfig()
        serve_both.CopyFrom(original)
        lstm = next(c for c in serve_both.model_config_list.config if c.name == "lstm")
        lstm.model_version_policy.Clear()
        lstm.model_version_policy.all.SetInParent()
        reload(serve_both)
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        wait_until(lambda: versions_in_state(model_stub, "lstm", available) == {1, 2}, POLL_PLUS_LOAD_SECONDS,
                   "both versions to be available")

        lstm.version_labels["stable"] = 1
        lstm.version_labels["canary"] = 2
        reload(serve_both)
        with SteadyLoad(prediction_stub, version_label="stable") as stable:
            wait_until(lambda: stable.recent() == {1}, 10, "stable -> 1")
            lstm.version_labels["stable"] = 2  # promote the canary
            reload(serve_both)
            wait_until(lambda: stable.recent() == {2}, 10, "stable -> 2")
        assert stable.errors == []

        canary = prediction_stub.Predict(lstm_request(version_label="canary"), timeout=10)
        assert canary.model_spec.version.value == 2
        with pytest.raises(grpc.RpcError) as caught:
            prediction_stub.Predict(lstm_request(version_label="no_such_label"), timeout=10)
        assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    finally:
        reload(original)
        shutil.rmtree(repository / "lstm" / "2", ignore_errors=True)
        wait_until(
            lambda: versions_in_state(model_stub, "lstm", get_model_status_pb2.ModelVersionStatus.AVAILABLE) == {1},
            POLL_PLUS_LOAD_SECONDS, "the original config to be back",
        )


def test_label_to_unavailable_version_is_refused(repository, model_stub):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((repository / "models.config").read_text(), config)
    next(c for c in config.model_config_list.config if c.name == "lstm").version_labels["stable"] = 42
    response = model_stub.HandleReloadConfigRequest(reload_request(config), timeout=30)
    assert response.status.error_code != 0
    time.sleep(0.2)
    assert versions_in_state(model_stub, "lstm", get_model_status_pb2.ModelVersionStatus.AVAILABLE) == {1}
