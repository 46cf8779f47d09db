"""Hot model updates seen by API callers: a steady load on text-api (gunicorn, real model server
over a private copy of the model repository) while versions come and go and labels move. Which
version answered is read from each reply's `model_version`."""

from __future__ import annotations

import shutil
import time

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.conftest import copy_repository, start_model_server, wait_until
from tests.faults.load import HttpLoad
from tests.services.conftest import start_api
from tests.tfserving.versions import add_version, reload_request, versions_in_state

pytestmark = pytest.mark.slow

POLL_SECONDS = 1  # the model server's --file_system_poll_wait_seconds here (start_model_server)
LOAD_SECONDS = 10  # loading the lstm SavedModel and warming it, with margin for a busy machine
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    base = tmp_path_factory.mktemp("hot-updates")
    repository = copy_repository(base / "models")
    target, process = start_model_server(repository, base / "model_server.log", "--enable_batching",
                                         f"--batching_parameters_file={repository / 'batching.config'}")
    yield target
    process.stop()


@pytest.fixture(scope="module")
def model_stub(serving):
    with grpc.insecure_channel(serving.grpc_address) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def text_api(serving, tmp_path_factory):
    instance = start_api("text-api", serving.grpc_address, tmp_path_factory.mktemp("text-api-latest") / "log")
    yield instance
    instance.process.stop()


def switch(load: HttpLoad, version: int, since: float) -> float:
    """Seconds until only `version` answers requests sent after `since`."""
    wait_until(lambda: load.versions_since(time.monotonic() - 0.5) == {version} and time.monotonic() > since + 0.5,
               POLL_SECONDS + LOAD_SECONDS, f"version {version} to answer")
    return time.monotonic() - since


def record(fault_table, scenario: str, load: HttpLoad, version: int, seconds: float) -> None:
    fault_table.append({"scenario": scenario, "load": f"4 clients on text-api, {load.rate():.0f} req/s, "
                        f"{len(load.outcomes)} requests", "failed": str(len(load.failed())),
                        "recovery": f"version {version} answers everything after {seconds:.1f} s"})


def test_a_new_version_folder_takes_over_then_its_removal_falls_back(serving, text_api, model_stub, fault_table):
    repository = serving.repository
    with HttpLoad(text_api.url) as load:
        assert load.versions_since(0) == {1}
        added = time.monotonic()
        add_version(repository, "lstm", 1, 2)
        seconds = switch(load, 2, added)
        time.sleep(2)  # and keeps answering
    record(fault_table, "new version folder lstm/2 appears", load, 2, seconds)
    assert load.failed() == [], load.failed()[:5]

    with HttpLoad(text_api.url) as load:
        removed = time.monotonic()
        shutil.rmtree(repository / "lstm" / "2")
        seconds = switch(load, 1, removed)
        time.sleep(2)
    record(fault_table, "version lstm/2 removed", load, 1, seconds)
    assert load.failed() == [], load.failed()[:5]
    wait_until(lambda: versions_in_state(model_stub, "lstm", AVAILABLE) == {1}, 10, "version 2 to be unloaded")


def test_moving_a_version_label_switches_the_api_without_a_restart(serving, model_stub, tmp_path, fault_table):
    repository = serving.repository
    original = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((repository / "models.config").read_text(), original)
    config = model_server_config_pb2.ModelServerConfig()
    config.CopyFrom(original)
    lstm = next(c for c in config.model_config_list.config if c.name == "lstm")
    lstm.model_version_policy.Clear()
    lstm.model_version_policy.specific.versions.extend([1, 2])
    lstm.version_labels["stable"] = 1

    def reload(new_config) -> None:
        response = model_stub.HandleReloadConfigRequest(reload_request(new_config), timeout=30)
        assert response.status.error_code == 0, response.status.error_message

    add_version(repository, "lstm", 1, 2)
    labelled = start_api("text-api", serving.grpc_address, tmp_path / "text-api.log",
                         env={"MODEL_VERSION_LABEL": "stable"})
    try:
        reload(config)
        wait_until(lambda: versions_in_state(model_stub, "lstm", AVAILABLE) == {1, 2}, LOAD_SECONDS, "both versions")
        with HttpLoad(labelled.url) as load:
            assert load.versions_since(0) == {1}
            lstm.version_labels["stable"] = 2
            moved = time.monotonic()
            reload(config)
            seconds = switch(load, 2, moved)
            time.sleep(2)
        record(fault_table, "version label stable: 1 -> 2", load, 2, seconds)
        assert load.failed() == [], load.failed()[:5]
    finally:
        labelled.process.stop()
        reload(original)
        shutil.rmtree(repository / "lstm" / "2", ignore_errors=True)
        wait_until(lambda: versions_in_state(model_stub, "lstm", AVAILABLE) == {1}, 30, "the original config")
