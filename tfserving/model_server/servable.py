"""One loaded model version: its SavedModel, signatures, and how to run them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from model_server.errors import invalid_argument
from model_server.tensors import from_tensor_protos

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's own limit


class Servable:
    """A SavedModel version ready to answer Predict calls.

    Instances are immutable once loaded; unloading just drops the manager's reference, so a
    request that already holds one finishes normally.
    """

    def __init__(self, name: str, version: int, path: Path):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = _read_signature_defs(path)
        self._model = tf.saved_model.load(str(path), tags=["serve"])
        self._functions = {key: self._model.signatures[key] for key in self.signature_defs}

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        key = name or DEFAULT_SIGNATURE
        if key not in self.signature_defs:
            raise invalid_argument(f"Serving signature key \"{key}\" not found.")
        return self.signature_defs[key]

    def validate_inputs(self, signature_name: str, inputs: dict[str, np.ndarray]) -> None:
        """TF Serving's checks: the same input names as the signature, and matching dtypes."""
        signature = self.signature(signature_name)
        expected = set(signature.inputs)
        if set(inputs) != expected:
            raise invalid_argument(
                f"input size does not match signature: {len(inputs)}!={len(expected)} "
                f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(expected))}}})"
            )
        for key, value in inputs.items():
            want = tf.dtypes.as_dtype(signature.inputs[key].dtype)
            got = _dtype_of(value)
            if got != want:
                raise invalid_argument(f"Expects arg[{key}] to be {want.name} but {got.name} is provided")
            _check_shape(key, value.shape, signature.inputs[key].tensor_shape)

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on already-validated inputs; returns numpy outputs."""
        signature = self.signature(signature_name)
        function = self._functions[signature_name or DEFAULT_SIGNATURE]
        feeds = {
            key: tf.constant(value, dtype=tf.dtypes.as_dtype(signature.inputs[key].dtype))
            for key, value in inputs.items()
        }
        try:
            outputs = function(**feeds)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise invalid_argument(_short(error)) from None
        return {key: value.numpy() for key, value in outputs.items()}

    def warm_up(self, run: Callable[[str, dict[str, np.ndarray]], object]) -> int:
        """Replay `assets.extra/tf_serving_warmup_requests` as TF Serving does before AVAILABLE."""
        path = self.path / WARMUP_FILE
        if not path.exists():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{path}: only predict_log warm-up records are supported")
            request = entry.predict_log.request
            inputs = from_tensor_protos(request.inputs)
            self.validate_inputs(request.model_spec.signature_name, inputs)
            run(request.model_spec.signature_name, inputs)
            count += 1
        return count


def _read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The serving MetaGraph's signatures, as TF Serving reports them in metadata."""
    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return {
                key: signature
                for key, signature in meta_graph.signature_def.items()
                if not key.startswith("__")  # e.g. __saved_model_init_op
            }
    raise ValueError(f"{path}: no MetaGraph tagged 'serve'")


def _check_shape(key: str, shape: tuple[int, ...], expected) -> None:
    """Refuse shapes the signature rules out before TensorFlow sees them: some kernels abort
    the whole process on a wrong rank instead of returning an error."""
    if expected.unknown_rank:
        return
    dims = [d.size for d in expected.dim]
    if len(shape) != len(dims) or any(want not in (-1, got) for want, got in zip(dims, shape)):
        wanted = "[" + ",".join("?" if d == -1 else str(d) for d in dims) + "]"
        raise invalid_argument(f"input {key} has shape {list(shape)} but the signature expects {wanted}")


def _dtype_of(value: np.ndarray) -> tf.dtypes.DType:
    if value.dtype == object or value.dtype.kind in "SU":
        return tf.string
    return tf.dtypes.as_dtype(value.dtype)


def _short(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0][:500] if text.strip() else type(error).__name__


def is_string(dtype: int) -> bool:
    return dtype == types_pb2.DT_STRING
