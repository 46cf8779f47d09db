"""The model server's core on its own: what a request finds while a model is still loading."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from tensorflow_serving.config import model_server_config_pb2

from model_server import core
from model_server.core import ModelSpec, ServerCore
from model_server.errors import ServingError


def test_a_model_still_loading_is_not_found_as_tf_serving_says_it(monkeypatch, tmp_path):
    """TF Serving's ServingMap holds no handle for a version until it is loaded: a request for the
    model finds nothing (NOT_FOUND "Servable not found for request: Latest(m)"), not UNAVAILABLE."""
    (tmp_path / "m" / "1").mkdir(parents=True)
    release, loading = threading.Event(), threading.Event()

    class SlowServable:
        def __init__(self, *args):
            loading.set()
            release.wait(10)
            raise RuntimeError("not a real model")

    monkeypatch.setattr(core, "Servable", SlowServable)
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = "m", str(tmp_path / "m"), "tensorflow"
    server = ServerCore()
    loader = threading.Thread(target=server.apply_config, args=(config,))
    loader.start()
    try:
        assert loading.wait(10)
        assert [s.state for s in server.status("m")] == [core.State.LOADING]
        with pytest.raises(ServingError) as caught:
            server.resolve(ModelSpec("m"))
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert caught.value.message == "Servable not found for request: Latest(m)"
    finally:
        release.set()
        loader.join(10)
    deadline = time.monotonic() + 5
    while server.status("m")[0].state != core.State.END and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ServingError) as caught:
        server.resolve(ModelSpec("m"))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND, "a version that failed to load: NOT_FOUND too"
