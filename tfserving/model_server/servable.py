"""One loaded model version: its SavedModel, signatures, and how to run them."""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from model_server.config import BatchingParameters
from model_server.errors import invalid_argument

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's own limit


class Servable:
    """A SavedModel version ready to answer Predict calls.

    Instances are immutable once loaded; unloading just drops the manager's reference, so a
    request that already holds one finishes normally.
    """

    def __init__(self, name: str, version: int, path: Path, tags: tuple[str, ...] = ("serve",),
                 batching: BatchingParameters | None = None):
        self.name = name
        self.version = version
        self.path = path
        self.batching = batching  # its own batching_params.pbtxt, or None: the server's
        self.signature_defs = _read_signature_defs(path, set(tags))
        self._model, self._tf1_shapes = _load_saved_model(self, path, tags)
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
            declared = signature.inputs[key].tensor_shape
            if not (self._tf1_shapes and not declared.dim):  # TF1's empty shape: unknown, not a scalar
                _check_shape(key, value.shape, declared)

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on already-validated inputs; returns numpy outputs."""
        signature = self.signature(signature_name)
        function = self._functions[signature_name or DEFAULT_SIGNATURE]
        feeds = {
            key: tf.constant(value, dtype=tf.dtypes.as_dtype(signature.inputs[key].dtype))
            for key, value in inputs.items()
        }
        try:
            outputs = _call_unchecked(function, feeds)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise invalid_argument(_short(error)) from None
        return {key: value.numpy() for key, value in outputs.items()}

    def warmup_records(self) -> Iterator[prediction_log_pb2.PredictionLog]:
        """`assets.extra/tf_serving_warmup_requests`: a TFRecord file of PredictionLog, at most
        MAX_WARMUP_RECORDS of them read (TF Serving's rule: a longer file fails the load)."""
        path = self.path / WARMUP_FILE
        if not path.exists():
            return
        for count, record in enumerate(tf.data.TFRecordDataset(str(path)), 1):
            if count > MAX_WARMUP_RECORDS:
                raise ValueError(f"{path}: more than {MAX_WARMUP_RECORDS} warm-up records")
            yield prediction_log_pb2.PredictionLog.FromString(record.numpy())


def _call_unchecked(function, feeds: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Call a signature as TF Serving runs a session: the tensors go to the graph, which decides
    (the Python wrapper would refuse e.g. [3] for a [?,1] input that the graph computes fine).
    _check_shape has already refused the ranks that can abort a kernel."""
    keywords = getattr(function, "_arg_keywords", None)
    if keywords is None or set(keywords) != set(feeds) or not hasattr(function, "_call_flat"):
        return function(**feeds)
    return function._call_flat([feeds[key] for key in keywords], function.captured_inputs)


def _load_saved_model(owner: Servable, path: Path, tags: tuple[str, ...]) -> tuple[object, bool]:
    """tf.saved_model.load; but TF Serving ignores the shapes a TF1 signature declares, and
    TensorFlow's Python loader sets them on the graph's tensors, failing where they disagree
    (`Shapes must be equal rank`: TF Serving's own half_plus_three test model, whose placeholders
    and signatures carry TF1's empty "no shape", which later TensorFlow reads as a scalar). Such a
    model is loaded from a copy where an empty shape means unknown, as TF1 meant it: its other
    files linked, the copy removed with the servable. Metadata still reports the declared shapes.
    Returns the model, and whether it was loaded so (its empty shapes then check nothing)."""
    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    empty = [shape for shape in _declared_shapes(saved_model) if not shape.dim and not shape.unknown_rank]
    try:
        return tf.saved_model.load(str(path), tags=list(tags)), False
    except ValueError as error:
        if not empty:
            raise
        # The message depends on which node TensorFlow trips on first ("Shapes must be equal
        # rank", or "Shape must be rank 1 but is rank 0 for ParseExample"): retried on the cause.
        log.warning("%s: its graph and signatures declare empty shapes (%s); loading it with them unknown",
                    path, str(error).splitlines()[0][:200])
    staging = Path(tempfile.mkdtemp(prefix="savedmodel-"))
    weakref.finalize(owner, shutil.rmtree, staging, True)
    for item in path.iterdir():
        if item.name != "saved_model.pb":
            (staging / item.name).symlink_to(item.resolve())
    for shape in empty:  # TF1's "no shape" (it read as a scalar later)
        shape.unknown_rank = True
    (staging / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    return tf.saved_model.load(str(staging), tags=list(tags)), True


def _declared_shapes(saved_model: saved_model_pb2.SavedModel) -> list:
    """Every shape a SavedModel declares for its placeholders and signature tensors."""
    shapes = []
    for meta_graph in saved_model.meta_graphs:
        shapes += [node.attr["shape"].shape for node in meta_graph.graph_def.node if node.op == "Placeholder"]
        for signature in meta_graph.signature_def.values():
            shapes += [info.tensor_shape for info in (*signature.inputs.values(), *signature.outputs.values())]
    return shapes


def _read_signature_defs(path: Path, tags: set[str]) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The signatures of the MetaGraph with exactly these tags, as TF Serving reports them."""
    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == tags:
            return {
                key: signature
                for key, signature in meta_graph.signature_def.items()
                if not key.startswith("__")  # e.g. __saved_model_init_op
            }
    raise ValueError(f"{path}: no MetaGraph tagged {','.join(sorted(tags))}")


def _check_shape(key: str, shape: tuple[int, ...], expected) -> None:
    """TF Serving passes any shape on to the graph; but some kernels then abort the whole process
    on a wrong rank (cv_sod's convolution does with (320, 320, 3)), so a shape the signature rules
    out is refused, with one exception TF Serving's own tests rely on: the signature's known
    size-1 dimensions may be left out (`[3]` for `[?,1]`), which elementwise graphs take."""
    if expected.unknown_rank:
        return
    dims = [d.size for d in expected.dim]
    if _compatible(shape, dims) or _compatible(shape, [d for d in dims if d != 1]):
        return
    wanted = "[" + ",".join("?" if d == -1 else str(d) for d in dims) + "]"
    raise invalid_argument(f"input {key} has shape {list(shape)} but the signature expects {wanted}")


def _compatible(shape: tuple[int, ...], dims: list[int]) -> bool:
    return len(shape) == len(dims) and all(want in (-1, got) for want, got in zip(dims, shape))


def _dtype_of(value: np.ndarray) -> tf.dtypes.DType:
    if value.dtype == object or value.dtype.kind in "SU":
        return tf.string
    return tf.dtypes.as_dtype(value.dtype)


def _short(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0][:500] if text.strip() else type(error).__name__


def is_string(dtype: int) -> bool:
    return dtype == types_pb2.DT_STRING
