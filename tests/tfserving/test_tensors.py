"""Request tensors are checked for what they declare before anything is decoded (issue 20, item 6)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from model_server.errors import ServingError
from model_server.tensors import MAX_REQUEST_BYTES, from_json, from_tensor_protos, to_tensor_proto
from tests.tfserving.hostile import padded_predict


def declared(dims: list[int], dtype: int = types_pb2.DT_FLOAT, **fields) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims)
    return proto


def refusal(protos: dict) -> str:
    with pytest.raises(ServingError) as caught:
        from_tensor_protos(protos)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value.message


@pytest.mark.parametrize("make", [
    lambda: padded_predict().inputs["img_in"],  # one float_val over [1, 1000000000]: 4 GB
    lambda: declared([1, 1_000_000_000]),  # no value at all: zeros, 4 GB
    lambda: padded_predict((1_000_000_000,), "lstm", "nwords", types_pb2.DT_INT32).inputs["nwords"],
    lambda: padded_predict((1, 3_000_000), "lstm", "words", types_pb2.DT_STRING).inputs["words"],  # 3 M copies
    lambda: declared([2], types_pb2.DT_STRING, string_val=[b"x" * (MAX_REQUEST_BYTES // 2)] * 2),
    lambda: declared([2**32, 2**32]),  # the int64 product wraps to 0 in numpy
], ids=["float-fill", "zeros", "int-fill", "string-fill", "large-strings", "overflowing-dims"])
def test_a_tensor_declaring_more_than_the_limit_is_refused_before_decoding(make):
    assert "limit" in refusal({"x": make()})


def test_the_limit_is_on_the_whole_request_not_each_tensor():
    """Many tensors just under the limit add up (and input names are only checked after decoding)."""
    each = declared([MAX_REQUEST_BYTES // 4 // 2 + 1])
    assert "'b'" in refusal({"a": each, "b": each})
    from_tensor_protos({"a": declared([MAX_REQUEST_BYTES // 4 // 2])})


@pytest.mark.parametrize(("proto", "words"), [
    (declared([2, 3], tensor_content=b"\0" * 28), "tensor_content has 28 bytes"),  # a multiple of 4, not 24
    (declared([-1, 3]), "negative dimension"),
    (declared([1] * 255), "255 dimensions"),
    (declared([2], types_pb2.DT_STRING, string_val=[b"a", b"b", b"c"]), "3 string_val"),
    (declared([2], types_pb2.DT_STRING, tensor_content=b"ab"), "2 bytes of tensor_content"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        unknown_rank=True)), "known shape"),
    (declared([1], types_pb2.DT_INVALID), "unsupported dtype"),
    (declared([1], types_pb2.DT_RESOURCE), "unsupported dtype"),
    (declared([1], types_pb2.DT_FLOAT_REF), "unsupported dtype"),
], ids=["content-length", "negative", "rank", "more-values", "string-content", "unknown-rank", "invalid", "resource",
        "ref"])
def test_declarations_tensorflow_refuses_are_invalid_argument(proto, words):
    assert words in refusal({"x": proto})


def test_tensors_within_the_limit_decode_as_tensorflow_decodes_them():
    images = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
    protos = {
        "packed": tf.make_tensor_proto(images),
        "filled": declared([2, 3], float_val=[1.0, 2.0]),  # TensorFlow repeats the last value
        "words": tf.make_tensor_proto(np.array([[b"a", b"bc"]], dtype=object)),
        "strings_filled": declared([3], types_pb2.DT_STRING, string_val=[b"a", b"b"]),
        "empty": declared([0, 5]),
    }
    decoded = from_tensor_protos(protos)
    for name, proto in protos.items():
        np.testing.assert_array_equal(decoded[name], tf.make_ndarray(proto))
    assert decoded["filled"].tolist() == [[1, 2, 2], [2, 2, 2]]


def test_json_nested_past_the_recursion_limit_is_invalid_argument():
    value: list = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(ServingError) as caught:
        from_json(value, tf.string, "words")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("value", [
    np.random.default_rng(0).random((1, 320, 320, 1), dtype=np.float32), np.random.default_rng(1).random((3, 2)),
    np.float32(2.5).reshape(()), np.zeros((0, 2), np.float32), np.array([1, 2], np.int64), np.array([[True]]),
    np.arange(6, dtype=">f4").reshape(2, 3), np.array([b"x", b"yz"], dtype=object),
])
@pytest.mark.parametrize("packed", [False, True])
def test_outputs_in_typed_fields_or_packed(value, packed):
    """TF Serving's default is the typed fields (clients read `float_val`, `int64_val` directly);
    --enable_serialization_as_tensor_content packs them."""
    proto = tensor_pb2.TensorProto.FromString(to_tensor_proto(value, packed).SerializeToString())
    decoded = tf.make_ndarray(proto)
    assert decoded.shape == value.shape and np.array_equal(decoded, value.astype(decoded.dtype))
    assert bool(proto.tensor_content) == (packed and value.size > 0 and value.dtype != object)
