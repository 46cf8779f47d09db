"""A version's warm-up records (assets.extra/tf_serving_warmup_requests: PredictionLog protos in a
TFRecord file, what TF Serving replays before a version turns AVAILABLE) as PredictRequests,
without TensorFlow: the rollout's preflight times the candidate and the live version on them.

TFRecord: a little-endian uint64 length, its masked CRC32C, the data, the data's masked CRC32C
(the CRCs are not checked here: TF Serving read the file when it loaded the version). A
PredictionLog holds its PredictLog in field 6, which holds the PredictRequest in field 1."""

from __future__ import annotations

import struct
from pathlib import Path

from tfserving_client.protos.tensorflow_serving.apis import predict_pb2

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
PREDICTION_LOG_PREDICT_LOG = 6
PREDICT_LOG_REQUEST = 1


def records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    found, offset = [], 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        start = offset + 12
        if start + length + 4 > len(data):
            raise ValueError(f"{path}: a record runs past the end of the file")
        found.append(data[start:start + length])
        offset = start + length + 4
    return found


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7


def _field(message: bytes, number: int) -> bytes | None:
    """The bytes of length-delimited field `number` of a serialized message (None if absent)."""
    offset = 0
    while offset < len(message):
        key, offset = _varint(message, offset)
        wire_type = key & 7
        if wire_type == 0:
            _, offset = _varint(message, offset)
        elif wire_type == 1:
            offset += 8
        elif wire_type == 5:
            offset += 4
        elif wire_type == 2:
            length, offset = _varint(message, offset)
            if key >> 3 == number:
                return message[offset:offset + length]
            offset += length
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    return None


def predict_requests(version_folder: Path) -> list[predict_pb2.PredictRequest]:
    """The folder's warm-up Predict requests; none when it has no warm-up file."""
    path = Path(version_folder) / WARMUP_FILE
    if not path.exists():
        return []
    found = []
    for record in records(path):
        predict_log = _field(record, PREDICTION_LOG_PREDICT_LOG)
        request = _field(predict_log, PREDICT_LOG_REQUEST) if predict_log is not None else None
        if request is not None:
            found.append(predict_pb2.PredictRequest.FromString(request))
    return found
