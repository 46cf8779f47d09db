"""Conversions between TensorProto, numpy and TF Serving's REST JSON encoding."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from model_server.errors import invalid_argument

# The one limit on a request: the largest gRPC message this server receives, and what a request's
# tensors may decode to. A client can send that much packed in `tensor_content`; more can only come
# from TensorFlow's fill rule (a *_val field shorter than the shape is padded with its last value,
# zeros when empty), which lets a few bytes declare gigabytes: dims [1, 1000000000] and one
# float_val made tf.make_ndarray allocate 4 GB. The API services' largest call, a cv_sod batch of
# 8 images, is 10 MB; 32 MiB takes 26 images (grpc_api.py says what it bounds).
MAX_REQUEST_BYTES = 32 * 1024 * 1024
# What one element of a string tensor costs decoded, besides its bytes: numpy's object pointer (8)
# and TensorFlow's tstring (24) when it is fed to the model.
STRING_ELEMENT_BYTES = 32
MAX_RANK = 254  # TensorFlow's TensorShape::kMaxDimensions


def from_tensor_protos(protos: Mapping[str, tensor_pb2.TensorProto]) -> dict[str, np.ndarray]:
    """Decode a request's tensors, once what they declare (dtype, shape, values carried) is checked
    against what they hold and against MAX_REQUEST_BYTES: nothing is materialised before that."""
    total, contents = 0, {}
    for name, proto in protos.items():
        nbytes, contents[name] = _checked(name, proto)
        total += nbytes
        check_request_bytes(total, name)
    return {name: _decode(proto, contents[name]) for name, proto in protos.items()}


def decoded_bytes(value: np.ndarray) -> int:
    """What an already decoded input costs, counted as `from_tensor_protos` counts declared ones."""
    if value.dtype == object:
        return value.size * STRING_ELEMENT_BYTES + sum(len(v) for v in value.flat if isinstance(v, bytes))
    return value.nbytes


def check_request_bytes(total: int, name: str) -> None:
    if total > MAX_REQUEST_BYTES:
        raise invalid_argument(
            f"input {name!r} brings the request's tensors to {total:,} bytes decoded, over this server's "
            f"limit of {MAX_REQUEST_BYTES:,} bytes (its largest gRPC message)"
        )


def _checked(name: str, proto: tensor_pb2.TensorProto) -> tuple[int, bytes]:
    """The bytes `proto` decodes to, from its declaration alone, and its tensor_content (read once:
    each read is a copy). Refuses what TensorFlow's own TensorProto parser refuses, and
    tensor_content of the wrong length."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
        itemsize = np.dtype(dtype.as_numpy_dtype).itemsize
    except (TypeError, KeyError):
        raise invalid_argument(f"input {name!r}: unsupported dtype {proto.dtype}") from None
    if dtype != dtype.base_dtype:
        raise invalid_argument(f"input {name!r}: unsupported dtype {dtype.name}")
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"input {name!r}: a request tensor must have a known shape")
    dims = [d.size for d in proto.tensor_shape.dim]
    if len(dims) > MAX_RANK:
        raise invalid_argument(f"input {name!r}: {len(dims)} dimensions, more than TensorFlow's {MAX_RANK}")
    if any(d < 0 for d in dims):
        raise invalid_argument(f"input {name!r}: negative dimension in shape {dims}")
    count, content = math.prod(dims), proto.tensor_content
    if dtype == tf.string:
        values = proto.string_val
        if content or len(values) > count:
            raise invalid_argument(f"input {name!r}: {len(values)} string_val and {len(content)} bytes of "
                                   f"tensor_content for shape {dims}")
        filled = (count - len(values)) * (len(values[-1]) if values else 0)
        return count * STRING_ELEMENT_BYTES + sum(len(v) for v in values) + filled, b""
    if content and len(content) != count * itemsize:
        raise invalid_argument(
            f"input {name!r}: tensor_content has {len(content):,} bytes where shape {dims} "
            f"of {dtype.name} needs {count * itemsize:,}"
        )
    return count * itemsize, content


def _decode(proto: tensor_pb2.TensorProto, content: bytes) -> np.ndarray:
    """tf.make_ndarray, without its second copy of tensor_content: the array reads the bytes
    (read-only; TensorFlow copies it when fed, batching when merging)."""
    dims = [d.size for d in proto.tensor_shape.dim]
    dtype = np.dtype(tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype)
    if content:
        return np.frombuffer(content, dtype=dtype).reshape(dims)
    field = _TYPED_FIELDS.get(dtype)
    if field and len(values := getattr(proto, field)) == math.prod(dims):
        # Every value given (perf_analyzer sends its images so): one copy, 0.1 ms for 307,200
        # floats where tf.make_ndarray iterates them (14 ms).
        return np.array(values, dtype=dtype).reshape(dims)
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # noqa: BLE001 - any decoding failure is a bad tensor
        raise invalid_argument(f"Unable to parse tensor proto: {error}") from None


# Where TF Serving's Tensor::AsProtoField puts each dtype's values (tensor.proto).
_TYPED_FIELDS = {
    np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val", np.dtype(np.int32): "int_val",
    np.dtype(np.int16): "int_val", np.dtype(np.int8): "int_val", np.dtype(np.uint8): "int_val",
    np.dtype(np.uint16): "int_val", np.dtype(np.int64): "int64_val", np.dtype(np.uint32): "uint32_val",
    np.dtype(np.uint64): "uint64_val", np.dtype(np.bool_): "bool_val",
}


def to_tensor_proto(value: np.ndarray, tensor_content: bool = False) -> tensor_pb2.TensorProto:
    """An output as TF Serving writes it: values in the dtype's typed field (`float_val`, ...;
    clients written for TF Serving read them so, as the source documents' client does), or, with
    --enable_serialization_as_tensor_content, packed in `tensor_content`. Strings: `string_val`."""
    field = _TYPED_FIELDS.get(value.dtype.newbyteorder("="))
    if field is None:
        return tf.make_tensor_proto(value)
    proto = tensor_pb2.TensorProto(dtype=tf.dtypes.as_dtype(value.dtype).as_datatype_enum)
    for size in value.shape:
        proto.tensor_shape.dim.add(size=size)
    little_endian = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"), copy=False)
    if tensor_content:
        proto.tensor_content = little_endian.tobytes()
    elif field in _PACKED_FIXED_FIELDS:
        # The field's wire form is the array's bytes: parsing them is 0.16 ms for cv_sod's 102,400
        # floats where float_val.extend(list) takes 5.8 ms.
        data = little_endian.tobytes()
        proto.MergeFromString(_varint(_PACKED_FIXED_FIELDS[field] << 3 | 2) + _varint(len(data)) + data)
    else:
        getattr(proto, field).extend(value.ravel().tolist())
    return proto


_PACKED_FIXED_FIELDS = {"float_val": 5, "double_val": 6}  # tensor.proto's field numbers (fixed-width)


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | 0x80 if number else low)
        if not number:
            return bytes(out)


def from_json(value: object, dtype: tf.dtypes.DType, name: str) -> np.ndarray:
    """A REST value (nested lists, `{"b64": ...}` for bytes) as an array of the signature's dtype."""
    try:
        if dtype == tf.string:
            array = np.array(_decode_strings(value), dtype=object)
        else:
            array = np.array(value, dtype=dtype.as_numpy_dtype)
    except ServingValueError as error:
        raise invalid_argument(f"{name}: {error}") from None
    except (TypeError, ValueError, OverflowError, RecursionError) as error:
        raise invalid_argument(f"Failed to process input {name!r} as {dtype.name}: {error}") from None
    if array.dtype == object and array.ndim > 0 and any(isinstance(x, list) for x in array.ravel()):
        raise invalid_argument(f"Input {name!r} is ragged: all rows must have the same length")
    return array


def to_json(value: np.ndarray, name: str) -> object:
    """Outputs as JSON: strings as text, or `{"b64": ...}` when the name ends in `_bytes`
    (TF Serving's convention) or the bytes are not UTF-8."""
    if value.dtype == object or value.dtype.kind == "S":
        return _encode_strings(value.tolist(), force_b64=name.endswith("_bytes"))
    return value.tolist()


class ServingValueError(ValueError):
    pass


def _decode_strings(value: object) -> object:
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    if isinstance(value, dict):
        return b64_bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ServingValueError(f"expected a string, got {type(value).__name__}")


def b64_bytes(value: dict) -> bytes:
    """A REST binary value, `{"b64": "<base64>"}`."""
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise ServingValueError('binary values must be written as {"b64": "<base64>"}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise ServingValueError("invalid base64 in a b64 value") from None


def _encode_strings(value: object, force_b64: bool) -> object:
    if isinstance(value, list):
        return [_encode_strings(v, force_b64) for v in value]
    if not force_b64:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}
