"""Who may replace the served models (issue 20, item 9): HandleReloadConfigRequest only from this
machine unless --allow_remote_reload_config, and no base_path out of the rebased repository."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import psutil
import pytest
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from local_stack.topology import free_port
from model_server.core import ModelSpec, ServerCore
from model_server.errors import ServingError
from model_server.grpc_api import GrpcOptions, start_grpc_server
from tests.tfserving.versions import reload_request


@pytest.mark.parametrize(("peer", "local"), [
    ("ipv4:127.0.0.1:50000", True),
    ("ipv4:127.8.9.10:50000", True),
    ("ipv6:[::1]:50000", True),
    ("ipv6:%5B::1%5D:50000", True),
    ("ipv6:[::ffff:127.0.0.1]:50000", True),
    ("unix:/run/model-server.sock", True),
    ("ipv4:192.0.2.2:50000", False),
    ("ipv4:10.0.0.7:50000", False),
    ("ipv6:[fd00::2]:50000", False),
    ("ipv6:[::ffff:10.0.0.7]:50000", False),
    ("ipv4:127.0.0.1.evil:50000", False),
    ("", False),
])
def test_which_peers_are_this_machine(peer, local):
    from model_server.grpc_api import is_local_peer

    assert is_local_peer(peer) is local


def non_loopback_address() -> str:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    pytest.skip("this machine has no non-loopback IPv4 address to call itself from")


class RecordingCore(ServerCore):
    def __init__(self):
        super().__init__()
        self.applied: list = []

    def apply_config(self, config) -> None:
        self.applied.append(config)


def reload_from(address: str, port: int) -> grpc.RpcError | None:
    """An empty config (it would unload every model) sent from `address`; the refusal, if any."""
    with grpc.insecure_channel(f"{address}:{port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = stub.HandleReloadConfigRequest(reload_request(model_server_config_pb2.ModelServerConfig()),
                                                      timeout=10)
        except grpc.RpcError as error:
            return error
    assert response.status.error_code == 0, response.status.error_message
    return None


@pytest.mark.parametrize("allow_remote", [False, True])
def test_reloading_the_config_from_another_machine_is_opt_in(allow_remote):
    remote, port, core = non_loopback_address(), free_port(), RecordingCore()
    options = {"allow_remote_reload_config": True} if allow_remote else {}  # the default refuses
    server = start_grpc_server(core, GrpcOptions("0.0.0.0", port, **options))
    try:
        refused = reload_from(remote, port)
        if allow_remote:
            assert refused is None and len(core.applied) == 1
        else:
            assert refused is not None and refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "--allow_remote_reload_config" in refused.details()
            assert core.applied == [], "nothing was applied"
        assert reload_from("127.0.0.1", port) is None, "from this machine it is accepted"
    finally:
        server.stop(0)


def config_of(**base_paths: str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in base_paths.items():
        model = config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = name, base_path, "tensorflow"
    return config


@pytest.mark.parametrize("base_path", ["/models/../etc", "/models/m/../../../home", "/models/.."])
def test_a_base_path_may_not_climb_out_of_the_rebased_repository(tmp_path, base_path):
    repository = tmp_path / "models"
    (repository / "m").mkdir(parents=True)
    core = ServerCore(path_rebase=("/models", repository))
    with pytest.raises(ServingError) as caught:
        core.apply_config(config_of(m="/models/m", escaping=base_path))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'..'" in caught.value.message and base_path in caught.value.message
    with pytest.raises(ServingError):
        core.resolve(ModelSpec("m"))  # the whole config was refused, not half applied
    assert core._resolve_base_path("/models/m/./1/..x") == repository / "m" / "1" / "..x"


@pytest.mark.parametrize("base_path", ["/elsewhere/m", "/modelsX/m", "/", "relative/m"])
def test_under_a_rebase_a_base_path_outside_the_repository_is_refused(tmp_path, base_path):
    """Issue 33: it was used as given, and local mode lets loopback reload the config: any folder of
    the machine could have been served."""
    repository = tmp_path / "models"
    (repository / "m").mkdir(parents=True)
    core = ServerCore(path_rebase=("/models", repository))
    with pytest.raises(ServingError) as caught:
        core.apply_config(config_of(m="/models/m", elsewhere=base_path))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "outside the model repository" in \
        caught.value.message
    assert ServerCore()._resolve_base_path("/elsewhere/m") == Path("/elsewhere/m"), "no rebase: as given"
