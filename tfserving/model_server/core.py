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
import re
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from tensorflow_serving.apis import input_pb2, predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from model_server import examples
from model_server.batching import BatchScheduler
from model_server.config import BatchingParameters, read_batching_parameters
from model_server.errors import ServingError, invalid_argument, not_found
from model_server.servable import DEFAULT_SIGNATURE, Servable
from model_server.tensors import from_tensor_protos

log = logging.getLogger(__name__)

# Waits longer than this are waits without a deadline: Python's lock waits overflow past
# threading.TIMEOUT_MAX (and the C runtime's time_t well before some clients' deadlines).
MAX_WAIT_SECONDS = 24 * 3600.0
_VERSION_FOLDER = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes '١' too


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
class LoadOptions:
    """How versions are loaded (TF Serving's flags of the same names; the library's defaults
    retry nothing, the command line's are TF Serving's: flags.py)."""

    saved_model_tags: tuple[str, ...] = ("serve",)
    enable_model_warmup: bool = True
    warmup_iterations: int = 1
    num_load_threads: int = 0
    max_num_load_retries: int = 0
    load_retry_interval_seconds: float = 0.0
    per_model_batching: bool = False
    signature_method_name_check: bool = False

    @classmethod
    def from_flags(cls, args) -> LoadOptions:
        return cls(
            saved_model_tags=tuple(t for t in args.saved_model_tags.split(",") if t) or ("serve",),
            enable_model_warmup=args.enable_model_warmup,
            warmup_iterations=max(1, args.num_request_iterations_for_warmup),
            num_load_threads=args.num_load_threads,
            max_num_load_retries=args.max_num_load_retries,
            load_retry_interval_seconds=max(0.0, args.load_retry_interval_micros / 1e6),
            per_model_batching=args.enable_per_model_batching_parameters,
            signature_method_name_check=args.enable_signature_method_name_check,
        )


PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"  # in a version's folder


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
        options: LoadOptions | None = None,
    ):
        self.options = options or LoadOptions()
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

    def warmup_predicts(self) -> list[predict_pb2.PredictRequest]:
        """Each available version's first Predict warm-up record, aimed at that version: replayed
        through the gRPC API itself once it listens (main.py), so that the request path around the
        model (decoding, encoding, the handler) is warm too, not only the model."""
        with self._state_lock:
            servables = [s for model in self._models.values() for s in model.servables.values()]
        requests = []
        for servable in servables:
            record = next((r for r in servable.warmup_records() if r.WhichOneof("log_type") == "predict_log"), None)
            if record is not None:
                request = predict_pb2.PredictRequest()
                request.CopyFrom(record.predict_log.request)
                request.model_spec.name = servable.name
                request.model_spec.version.value = servable.version
                requests.append(request)
        return requests

    def stop(self) -> None:
        if self.batcher:
            self.batcher.stop()

    def _resolve_base_path(self, base_path: str) -> Path:
        """Container paths (e.g. /models/lstm) onto a local folder, when told to rebase them. A
        rebased path may not leave that folder: a base path outside the prefix, or one that climbs
        out with `..`, is refused (a symlink the folder's owner put there is followed, as any path
        the server reads). Local mode lets loopback reload the config: an absolute path elsewhere
        would have served whatever folder a caller named."""
        if self._path_rebase:
            prefix, local = self._path_rebase
            if not (base_path == prefix or base_path.startswith(prefix.rstrip("/") + "/")):
                raise invalid_argument(
                    f"base_path {base_path!r} is outside the model repository {prefix} ({local})")
            inside = Path(base_path[len(prefix) :].lstrip("/"))
            if ".." in inside.parts:
                raise invalid_argument(
                    f"base_path {base_path!r} leaves the model repository {prefix} ({local}) with '..'"
                )
            return local / inside
        return Path(base_path)

    def _versions_on_disk(self, model: _Model) -> dict[int, Path]:
        """Version folders by number: `123` and `00000123` (what TF Serving's examples and many
        export scripts write) are both version 123, read from the folder as it is named."""
        if not model.base_path.is_dir():
            log.warning("model %s: base path %s does not exist", model.config.name, model.base_path)
            return {}
        found: dict[int, Path] = {}
        for folder in sorted(model.base_path.iterdir()):
            if folder.is_dir() and _VERSION_FOLDER.fullmatch(folder.name):
                version = int(folder.name)
                if version in found:
                    log.warning("model %s: %s and %s are both version %d; serving %s", model.config.name,
                                found[version].name, folder.name, version, found[version].name)
                    continue
                found[version] = folder
        return found

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
        on_disk = self._versions_on_disk(model)
        aspired = self._aspired(model, set(on_disk))
        failed = {v for v, s in model.statuses.items() if s.state == State.END and s.error and v in aspired}
        wanted = sorted(aspired - set(model.servables) - failed)
        if self.options.num_load_threads > 1 and len(wanted) > 1:
            with concurrent.futures.ThreadPoolExecutor(self.options.num_load_threads, "load") as pool:
                list(pool.map(lambda v: self._load(model, v, on_disk[v]), wanted))
        else:
            for version in wanted:
                self._load(model, version, on_disk[version])
        # Unload only what left the policy; never the last available version of a model whose
        # replacement failed to load (availability first, as TF Serving's default policy).
        leaving = set(model.servables) - aspired
        if leaving and not (set(model.servables) & aspired):
            leaving.discard(max(leaving))
        self._unload(model, leaving)

    def _load(self, model: _Model, version: int, path: Path) -> None:
        name = model.config.name
        status = VersionStatus(version, State.LOADING)
        with self._state_lock:
            model.statuses[version] = status
        log.info("Loading servable version {name: %s version: %d}", name, version)
        attempts = 1 + self.options.max_num_load_retries
        for attempt in range(1, attempts + 1):
            try:
                servable = self._loaded(name, version, path)
                break
            except Exception as error:  # noqa: BLE001 - a broken version must not take the server down
                log.error("Failed to load servable version {name: %s version: %d} (attempt %d of %d): %s",
                          name, version, attempt, attempts, error)
                if attempt == attempts:
                    status.state = State.END
                    status.error = ServingError(grpc.StatusCode.UNKNOWN,
                                                f"Failed to load {name} version {version}: {error}")
                    return
                time.sleep(self.options.load_retry_interval_seconds)
        with self._state_lock:
            model.servables[version] = servable
            status.state = State.AVAILABLE
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)

    def _loaded(self, name: str, version: int, path: Path) -> Servable:
        """A version loaded, and warmed up: it takes traffic only after its warm-up requests ran."""
        batching = None
        if self.options.per_model_batching and self.batcher and (path / PER_MODEL_BATCHING_FILE).exists():
            batching = read_batching_parameters(path / PER_MODEL_BATCHING_FILE)
        servable = Servable(name, version, path, self.options.saved_model_tags, batching)
        if self.options.enable_model_warmup:
            started, replayed = time.perf_counter(), 0
            for record in servable.warmup_records():
                for _ in range(self.options.warmup_iterations):
                    self._replay(servable, record)
                replayed += 1
            if replayed:
                log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d. "
                         "Elapsed time (microseconds): %d.", path, replayed, (time.perf_counter() - started) * 1e6)
        return servable

    def _replay(self, servable: Servable, record: prediction_log_pb2.PredictionLog) -> None:
        """One warm-up record, through the same path as a request (batching included)."""
        kind = record.WhichOneof("log_type")
        if kind == "predict_log":
            request = record.predict_log.request
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            inputs = from_tensor_protos(request.inputs)
            servable.validate_inputs(signature_name, inputs)
            self._run(servable, signature_name, inputs, None)
        elif kind in ("classify_log", "regress_log"):
            request = getattr(record, kind).request
            method = examples.CLASSIFY_METHOD if kind == "classify_log" else examples.REGRESS_METHOD
            self._infer_on(servable, [(method, request.model_spec.signature_name)], request.input, None)
        elif kind == "multi_inference_log":
            request = record.multi_inference_log.request
            tasks = [(t.method_name, t.model_spec.signature_name) for t in request.tasks]
            self._infer_on(servable, tasks, request.input, None)
        else:
            raise ValueError(f"unsupported warm-up record: {kind}")

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

    def infer(self, spec: ModelSpec, tasks: list[tuple[str, str]], request_input: input_pb2.Input,
              timeout: float | None = None) -> tuple[Servable, list]:
        """Classify, Regress or MultiInference: `tasks` are (method_name, signature_name) on one
        model's version, fed the same examples; one ClassificationResult or RegressionResult each."""
        signatures = [name or DEFAULT_SIGNATURE for _, name in tasks]
        if len(set(signatures)) != len(signatures):
            duplicate = next(name for name in signatures if signatures.count(name) > 1)
            raise invalid_argument(f"Duplicate evaluation of signature: {duplicate}")
        servable = self.resolve(spec)
        return servable, self._infer_on(servable, tasks, request_input, timeout)

    def _infer_on(self, servable: Servable, tasks: list[tuple[str, str]], request_input: input_pb2.Input,
                  timeout: float | None) -> list:
        planned = []
        for method, signature_name in tasks:
            signature_name = signature_name or DEFAULT_SIGNATURE
            if method not in examples.TASKS:
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {method}")
            signature = servable.signature(signature_name)
            if self.options.signature_method_name_check and signature.method_name != method:
                kind = "classification" if method == examples.CLASSIFY_METHOD else "regression"
                raise invalid_argument(
                    f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
            planned.append(examples.TASKS[method](signature_name, signature))
        serialized = examples.serialized_examples(request_input)
        results = []
        for task in planned:
            outputs = self._run(servable, task.signature_name, {task.input_key: serialized}, timeout)
            if task.method == examples.CLASSIFY_METHOD:
                results.append(examples.classification_result(outputs, len(serialized)))
            else:
                results.append(examples.regression_result(outputs, len(serialized)))
        return results

    def _run(self, servable: Servable, signature_name: str, inputs: dict[str, np.ndarray],
             timeout: float | None) -> dict[str, np.ndarray]:
        if self.batcher is None:
            return servable.run(signature_name, inputs)
        if timeout is not None and timeout > MAX_WAIT_SECONDS:
            timeout = None  # a far-off deadline (perf_analyzer sends ~292 years) is no deadline
        future = self.batcher.submit(
            (id(servable), signature_name), lambda batch: servable.run(signature_name, batch), inputs,
            deadline=None if timeout is None else time.monotonic() + timeout, model=servable.name,
            params=servable.batching,
        )
        try:
            return future.result(timeout=timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()  # not run if still queued
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded while batching") from None
