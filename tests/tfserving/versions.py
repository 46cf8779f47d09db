"""Model repository and model server chores shared by the hot-update tests (tfserving/ and faults/)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2


def add_version(repository: Path, model: str, source: int, target: int) -> None:
    """Copy a version folder in under a hidden name, then rename: the server never sees half a model."""
    staging = repository / model / f".staging-{target}"
    shutil.copytree(repository / model / str(source), staging)
    staging.rename(repository / model / str(target))


def versions_in_state(model_stub, model: str, state: int) -> set[int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    return {s.version for s in model_stub.GetModelStatus(request, timeout=5).model_version_status if s.state == state}


def reload_request(config) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    return request
