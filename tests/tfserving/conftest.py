"""The model server under test: ours by default, or any TF Serving given by environment.

    TFSERVING_GRPC_ADDRESS=host:8500 TFSERVING_REST_URL=http://host:8501 \
    TFSERVING_MODEL_REPOSITORY=/path/the/server/reads   pytest tests/tfserving

Without the variables, a session-wide instance of tfserving/model_server is started on free
ports over a copy of the committed model repository (tests add and remove versions in it).
"""

from __future__ import annotations

import grpc
import pytest
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from tests.conftest import ServingTarget, copy_repository, model_server_under_test


@pytest.fixture(scope="session")
def serving(tmp_path_factory) -> ServingTarget:
    base = tmp_path_factory.mktemp("serving")
    with model_server_under_test(copy_repository(base / "models"), base / "model_server.log") as target:
        yield target


@pytest.fixture(scope="session")
def channel(serving) -> grpc.Channel:
    channel = grpc.insecure_channel(
        serving.grpc_address,
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )
    yield channel
    channel.close()


@pytest.fixture(scope="session")
def prediction_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="session")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)
