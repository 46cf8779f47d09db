"""Fuzz harness of the model server's request decoding: one input is a serialized PredictRequest,
what gRPC hands the server (a message protobuf cannot parse never reaches it, and is skipped).

fuzz_tensor_proto's property: decoding the request's inputs (model_server.tensors, as the gRPC and
REST servers call it) either raises the server's ServingError or gives arrays within the server's
request limit, and never allocates more than MATERIALISED_BYTES_LIMIT on the way (an allocation past
it fails, RLIMIT_DATA, and is a finding): a few bytes declaring gigabytes must be refused before
anything is materialised (issue 20, item 6).
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import predict_pb2

from model_server import tensors
from model_server.errors import ServingError
from tests.fuzz import FuzzFinding
from tests.fuzz.process_memory import allocating_at_most

# What a request's tensors may decode to (the server's largest gRPC message).
REQUEST_BYTES_LIMIT = getattr(tensors, "MAX_REQUEST_BYTES", 64 * 2**20)
# What decoding may allocate beyond the process's heap before it: the decoded arrays, an
# intermediate copy of them (np.pad's fill, a list of string references) and some slack.
MATERIALISED_BYTES_LIMIT = 2 * REQUEST_BYTES_LIMIT + 64 * 2**20


def fuzz_tensor_proto(data: bytes) -> None:
    try:
        request = predict_pb2.PredictRequest.FromString(data)
    except (DecodeError, RuntimeError, ValueError):  # never reaches the server
        return
    try:
        with allocating_at_most(MATERIALISED_BYTES_LIMIT):
            decoded = decode_inputs(request)
    except (ServingError, MemoryError) as error:
        if _out_of_memory(error):  # tensors.py answers any failure of tf.make_ndarray as a bad tensor
            shapes = {name: [d.size for d in proto.tensor_shape.dim] for name, proto in request.inputs.items()}
            raise FuzzFinding(f"decoding inputs of shapes {shapes} ({len(data)} bytes) tried to allocate more "
                              f"than {MATERIALISED_BYTES_LIMIT:,} bytes") from error
        return
    total = sum(_decoded_bytes(value) for value in decoded.values())
    if total > REQUEST_BYTES_LIMIT:
        raise FuzzFinding(f"{len(data)} bytes decoded to {total:,} bytes, over the limit of {REQUEST_BYTES_LIMIT:,}")
    for name, value in decoded.items():
        declared = [d.size for d in request.inputs[name].tensor_shape.dim]
        if list(value.shape) != declared:
            raise FuzzFinding(f"input {name!r} declared shape {declared}, decoded to {list(value.shape)}")


def decode_inputs(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """The request's inputs as the server decodes them, whichever version of tensors.py is here."""
    if hasattr(tensors, "from_tensor_protos"):
        return tensors.from_tensor_protos(request.inputs)
    return {name: tensors.from_tensor_proto(proto) for name, proto in request.inputs.items()}


def _out_of_memory(error: BaseException | None) -> bool:
    """Whether `error`, or an exception it was raised while handling, is a MemoryError."""
    while error is not None:
        if isinstance(error, MemoryError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _decoded_bytes(value: np.ndarray) -> int:
    if value.dtype == object:
        return value.size * 8 + sum(len(v) for v in value.flat if isinstance(v, bytes))
    return value.nbytes
