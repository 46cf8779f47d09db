"""One side of the wire-compatibility test, run in its own process so that the official
(TensorFlow) classes and ours never share a descriptor pool.

    python wire_peer.py ours-encode | official-decode | official-encode | ours-decode
JSON in on stdin, JSON out on stdout; messages travel as hex.
"""

from __future__ import annotations

import json
import sys

import numpy as np

# What each side builds; the other side must read exactly these values.
REQUEST_INPUTS = {
    "words": np.array([["很", "喜欢"], ["太", "<pad>"]], dtype=object),
    "nwords": np.array([2, 1], dtype=np.int32),
    "img_in": np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3) / 7,
    "ids": np.array([[1, -2], [3, 2**40]], dtype=np.int64),
}
RESPONSE_OUTPUTS = {
    "labels": np.array([b"POS", b"NEG"], dtype=object),
    "classes_id": np.array([1, 0], dtype=np.int64),
    "softmax": np.array([[0.25, 0.75], [0.9, 0.1]], dtype=np.float32),
    "img_out": np.linspace(0, 1, 2 * 3 * 3).astype(np.float32).reshape(2, 3, 3, 1),
}


def as_json(array: np.ndarray) -> dict:
    values = [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]
    return {"shape": list(array.shape), "dtype": str(array.dtype), "values": values}


def ours_encode() -> dict:
    from tfserving_client.client import _fill_model_spec
    from tfserving_client.protos.tensorflow_serving.apis import get_model_status_pb2, predict_pb2
    from tfserving_client.tensors import to_tensor_proto

    request = predict_pb2.PredictRequest(output_filter=["softmax"])
    _fill_model_spec(request.model_spec, "lstm", "serving_default", None, "stable")
    for name, value in REQUEST_INPUTS.items():
        request.inputs[name].CopyFrom(to_tensor_proto(value))
    status = get_model_status_pb2.GetModelStatusRequest()
    _fill_model_spec(status.model_spec, "cv_sod", "", 7, None)
    assert "tensorflow" not in sys.modules, "our protos must not import TensorFlow"
    return {"predict_request": request.SerializeToString().hex(),
            "status_request": status.SerializeToString().hex()}


def official_decode(messages: dict) -> dict:
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

    request = predict_pb2.PredictRequest.FromString(bytes.fromhex(messages["predict_request"]))
    status = get_model_status_pb2.GetModelStatusRequest.FromString(bytes.fromhex(messages["status_request"]))
    return {
        "model_name": request.model_spec.name,
        "version_label": request.model_spec.version_label,
        "signature_name": request.model_spec.signature_name,
        "output_filter": list(request.output_filter),
        "inputs": {name: as_json(tf.make_ndarray(tensor)) for name, tensor in request.inputs.items()},
        "status_model": status.model_spec.name,
        "status_version": status.model_spec.version.value,
    }


def official_encode() -> dict:
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

    response = predict_pb2.PredictResponse()
    response.model_spec.name = "lstm"
    response.model_spec.version.value = 3
    for name, value in RESPONSE_OUTPUTS.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    # The compact encoding TF may also send: one repeated value for a whole tensor.
    response.outputs["constant"].CopyFrom(tf.make_tensor_proto(0.5, dtype=tf.float32, shape=[2, 2]))
    status = get_model_status_pb2.GetModelStatusResponse()
    for version, state in ((1, "AVAILABLE"), (2, "LOADING")):
        entry = status.model_version_status.add()
        entry.version = version
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
    return {"predict_response": response.SerializeToString().hex(),
            "status_response": status.SerializeToString().hex()}


def ours_decode(messages: dict) -> dict:
    from tfserving_client.protos.tensorflow_serving.apis import get_model_status_pb2, predict_pb2
    from tfserving_client.tensors import from_tensor_proto

    response = predict_pb2.PredictResponse.FromString(bytes.fromhex(messages["predict_response"]))
    status = get_model_status_pb2.GetModelStatusResponse.FromString(bytes.fromhex(messages["status_response"]))
    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    assert "tensorflow" not in sys.modules, "our protos must not import TensorFlow"
    return {
        "model_name": response.model_spec.name,
        "model_version": response.model_spec.version.value,
        "outputs": {name: as_json(from_tensor_proto(tensor)) for name, tensor in response.outputs.items()},
        "versions": {str(s.version): state_name(s.state) for s in status.model_version_status},
    }


if __name__ == "__main__":
    role = sys.argv[1]
    given = json.loads(sys.stdin.read() or "{}")
    handlers = {"ours-encode": lambda: ours_encode(), "official-decode": lambda: official_decode(given),
                "official-encode": lambda: official_encode(), "ours-decode": lambda: ours_decode(given)}
    print(json.dumps(handlers[role]()))
