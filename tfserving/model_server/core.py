"""The model repository as TF Serving manages it: versions, policies, labels, loading, predicting.

A model's versions are the numbered folders under its `base_path`. The version policy picks
which of them to serve (latest N, all, or specific ones). New versions are loaded and warmed
up before they take traffic; versions that leave the policy are unloaded only after their
replacement is AVAILABLE, and a request already holding a version finishes on it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import logging
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from tensorflow_serving.config import model_server_config_pb2

from model_server.batching import BatchScheduler
from model_server.config import BatchingParameters
from model_server.errors import ServingError, invalid_argument, not_found
from model_server.servable import DEFAULT_SIGNATURE, Servable

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    """ModelVersionStatus.State values from get_model_status.proto."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass
class VersionStatus:
    version: int
    state: State
    error: ServingError | None = None


@dataclasses.dataclass
class _Model:
    config: model_server_config_pb2.ModelConfig
    base_path: Path
    servables: dict[int, Servable] = dataclasses.field(default_factory=dict)
    statuses: dict[int, VersionStatus] = dataclasses.field(default_factory=dict)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which servable a request asks for: by version, by label, or the latest (neither)."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


class ServerCore:
    def __init__(
        self,
        path_rebase: tuple[str, Path] | None = None,
        batching: BatchingParameters | None = None,
        allow_labels_for_unavailable: bool = False,
    ):
        self._path_rebase = path_rebase
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        self._models: dict[str, _Model] = {}
        self._state_lock = threading.Lock()  # guards _models; held only briefly
        self._sync_lock = threading.Lock()  # one loader at a time (poller, reloads)
        self.batcher = BatchScheduler(batching) if batching else None

    # --- configuration and the file system -------------------------------------------------

    def apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Make the served models match `config`: add, update and remove models, load their
        versions, then move labels. Raises ServingError if the config cannot be applied."""
        wanted = list(config.model_config_list.config)
        names = [m.name for m in wanted]
        if len(set(names)) != len(names) or not all(names):
            raise invalid_argument("model names in the config must be unique and non-empty")
        base_paths = {m.name: self._resolve_base_path(m.base_path) for m in wanted}  # all refused, or none
        with self._sync_lock:
            with self._state_lock:
                removed = [self._models.pop(name) for name in list(self._models) if name not in names]
                for model_config in wanted:
                    base_path = base_paths[model_config.name]
                    model = self._models.get(model_config.name)
                    if model is None:
                        self._models[model_config.name] = _Model(model_config, base_path)
                    else:
                        model.config, model.base_path = model_config, base_path
            for model in removed:
                self._unload(model, set(model.servables))
            for model_config in wanted:
                self._sync_versions(self._models[model_config.name])
            for model_config in wanted:
                self._set_labels(self._models[model_config.name], dict(model_config.version_labels))

    def poll_file_system(self) -> None:
        """Pick up version folders that appeared or disappeared since the last poll."""
        with self._sync_lock:
            for model in list(self._models.values()):
                self._sync_versions(model)

    def stop(self) -> None:
        if self.batcher:
            self.batcher.stop()

    def _resolve_base_path(self, base_path: str) -> Path:
        """Container paths (e.g. /models/lstm) onto a local folder, when told to rebase them. A
        rebased path may not climb out of that folder: `..` is refused (a symlink the folder's
        owner put there is followed, as any path the server reads)."""
        if self._path_rebase:
            prefix, local = self._path_rebase
            if base_path == prefix or base_path.startswith(prefix.rstrip("/") + "/"):
                inside = Path(base_path[len(prefix) :].lstrip("/"))
                if ".." in inside.parts:
                    raise invalid_argument(
                        f"base_path {base_path!r} leaves the model repository {prefix} ({local}) with '..'"
                    )
                return local / inside
        return Path(base_path)

    def _versions_on_disk(self, model: _Model) -> set[int]:
        if not model.base_path.is_dir():
            log.warning("model %s: base path %s does not exist", model.config.name, model.base_path)
            return set()
        return {int(p.name) for p in model.base_path.iterdir() if p.is_dir() and p.name.isdigit()}

    def _aspired(self, model: _Model, on_disk: set[int]) -> set[int]:
        policy = model.config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return on_disk
        if kind == "specific":
            return on_disk & set(policy.specific.versions)
        keep = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        return set(sorted(on_disk)[-keep:])

    def _sync_versions(self, model: _Model) -> None:
        aspired = self._aspired(model, self._versions_on_disk(model))
        failed = {v for v, s in model.statuses.items() if s.state == State.END and s.error and v in aspired}
        for version in sorted(aspired - set(model.servables) - failed):
            self._load(model, version)
        # Unload only what left the policy; never the last available version of a model whose
        # replacement failed to load (availability first, as TF Serving's default policy).
        leaving = set(model.servables) - aspired
        if leaving and not (set(model.servables) & aspired):
            leaving.discard(max(leaving))
        self._unload(model, leaving)

    def _load(self, model: _Model, version: int) -> None:
        name = model.config.name
        status = VersionStatus(version, State.LOADING)
        with self._state_lock:
            model.statuses[version] = status
        log.info("Loading servable version {name: %s version: %d}", name, version)
        try:
            servable = Servable(name, version, model.base_path / str(version))
            warmed = servable.warm_up(lambda sig, inputs: self._run(servable, sig, inputs, None))
        except Exception as error:  # noqa: BLE001 - a broken version must not take the server down
            log.error("Failed to load servable version {name: %s version: %d}: %s", name, version, error)
            status.state = State.END
            status.error = ServingError(grpc.StatusCode.UNKNOWN, f"Failed to load {name} version {version}: {error}")
            return
        with self._state_lock:
            model.servables[version] = servable
            status.state = State.AVAILABLE
        log.info("Successfully loaded servable version {name: %s version: %d} (%d warm-up requests)",
                 name, version, warmed)

    def _unload(self, model: _Model, versions: set[int]) -> None:
        for version in sorted(versions):
            with self._state_lock:
                model.statuses[version] = VersionStatus(version, State.UNLOADING)
                model.servables.pop(version, None)
                model.statuses[version] = VersionStatus(version, State.END)
            log.info("Unloaded servable version {name: %s version: %d}", model.config.name, version)

    def _set_labels(self, model: _Model, labels: dict[str, int]) -> None:
        if not self._allow_labels_for_unavailable:
            for label, version in labels.items():
                if version not in model.servables and model.labels.get(label) != version:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {model.config.name}, "
                        "which is not currently available for inference",
                    )
        with self._state_lock:
            model.labels = labels

    # --- serving -----------------------------------------------------------------------------

    def resolve(self, spec: ModelSpec) -> Servable:
        with self._state_lock:
            model = self._models.get(spec.name)
            if model is None:
                raise not_found(f"Servable not found for request: Latest({spec.name})")
            if spec.label is not None:
                if spec.label not in model.labels:
                    raise invalid_argument(f"Unrecognized servable version label: {spec.label}")
                version = model.labels[spec.label]
            else:
                version = spec.version
            if version is not None:
                servable = model.servables.get(version)
                if servable is None:
                    raise not_found(f"Servable not found for request: Specific({spec.name}, {version})")
                return servable
            if model.servables:
                return model.servables[max(model.servables)]
            # As TF Serving's ServingMap: a version still loading (or that failed to) is not in the
            # map of servable handles yet, so the request finds nothing: NOT_FOUND, not UNAVAILABLE.
            raise not_found(f"Servable not found for request: Latest({spec.name})")

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        with self._state_lock:
            model = self._models.get(name)
            if model is None:
                raise not_found(f"Could not find any versions of model {name}")
            if label is not None:
                if label not in model.labels:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            if version is not None:
                if version not in model.statuses:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [dataclasses.replace(model.statuses[version])]
            return [dataclasses.replace(s) for _, s in sorted(model.statuses.items(), reverse=True)]

    def predict(
        self,
        spec: ModelSpec,
        inputs: dict[str, np.ndarray],
        output_filter: list[str] | None = None,
        timeout: float | None = None,
    ) -> tuple[Servable, dict[str, np.ndarray]]:
        servable = self.resolve(spec)
        signature_name = spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signature(signature_name)
        servable.validate_inputs(signature_name, inputs)
        for alias in output_filter or []:
            if alias not in signature.outputs:
                raise invalid_argument(f"output tensor alias not found in signature: {alias}")
        outputs = self._run(servable, signature_name, inputs, timeout)
        if output_filter:
            outputs = {k: v for k, v in outputs.items() if k in output_filter}
        return servable, outputs

    def _run(self, servable: Servable, signature_name: str, inputs: dict[str, np.ndarray],
             timeout: float | None) -> dict[str, np.ndarray]:
        if self.batcher is None:
            return servable.run(signature_name, inputs)
        future = self.batcher.submit(
            (id(servable), signature_name), lambda batch: servable.run(signature_name, batch), inputs,
            deadline=None if timeout is None else time.monotonic() + timeout, model=servable.name,
        )
        try:
            return future.result(timeout=timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()  # not run if still queued
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded while batching") from None
