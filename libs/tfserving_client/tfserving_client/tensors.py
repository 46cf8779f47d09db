"""numpy <-> TensorProto without TensorFlow.

Numeric tensors travel as packed little-endian `tensor_content` (one memcpy each way, instead
of one protobuf field per element); strings use `string_val`, the only encoding TF accepts for
DT_STRING.
"""

from __future__ import annotations

import numpy as np

from tfserving_client.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_DTYPES: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype("<f4"),
    types_pb2.DT_DOUBLE: np.dtype("<f8"),
    types_pb2.DT_HALF: np.dtype("<f2"),
    types_pb2.DT_INT8: np.dtype("i1"),
    types_pb2.DT_UINT8: np.dtype("u1"),
    types_pb2.DT_INT16: np.dtype("<i2"),
    types_pb2.DT_UINT16: np.dtype("<u2"),
    types_pb2.DT_INT32: np.dtype("<i4"),
    types_pb2.DT_UINT32: np.dtype("<u4"),
    types_pb2.DT_INT64: np.dtype("<i8"),
    types_pb2.DT_UINT64: np.dtype("<u8"),
    types_pb2.DT_BOOL: np.dtype("?"),
}
_TF_DTYPE = {np_dtype.newbyteorder("<") if np_dtype.itemsize > 1 else np_dtype: tf_dtype
             for tf_dtype, np_dtype in _DTYPES.items()}

# Where TF puts each dtype when it does not use tensor_content.
_VALUE_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
}


def to_tensor_proto(value: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode an array; object/bytes/str arrays become DT_STRING."""
    array = np.asarray(value)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n)
                                                   for n in array.shape])
    if array.dtype.kind in "OSU":
        strings = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in array.ravel().tolist()]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=strings)
    little_endian = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    tf_dtype = _TF_DTYPE.get(little_endian)
    if tf_dtype is None:
        raise TypeError(f"no TensorFlow dtype for numpy {array.dtype}")
    content = np.ascontiguousarray(array, dtype=little_endian).tobytes()
    return tensor_pb2.TensorProto(dtype=tf_dtype, tensor_shape=shape, tensor_content=content)


def from_tensor_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode either encoding TF Serving may send (packed content, or repeated *_val fields,
    where one value may stand for a whole tensor of equal elements)."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if proto.dtype == types_pb2.DT_STRING:
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
        return _fill(values, count, object).reshape(shape)
    dtype = _DTYPES.get(proto.dtype)
    if dtype is None:
        raise TypeError(f"unsupported tensor dtype {types_pb2.DataType.Name(proto.dtype)}")
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    values = getattr(proto, _VALUE_FIELD[proto.dtype])
    if proto.dtype == types_pb2.DT_HALF:
        flat = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.array(values, dtype=dtype)
    return _fill(flat, count, dtype).reshape(shape)


def _fill(values: np.ndarray, count: int, dtype) -> np.ndarray:
    if len(values) == count:
        return values
    if len(values) == 0:
        return np.zeros(count, dtype=dtype) if dtype is not object else np.full(count, b"", dtype=object)
    if len(values) < count:  # TF's compact form: the last value repeats
        return np.concatenate([values, np.repeat(values[-1:], count - len(values))])
    raise ValueError(f"tensor has {len(values)} values for a shape of {count} elements")
