"""The one TF Serving client every API service uses.

It speaks TF Serving's gRPC API (PredictionService.Predict, ModelService.GetModelStatus) with
protos compiled for this package, so an API worker never loads the TensorFlow runtime.
"""

from tfserving_client.client import ModelServerClient, ModelServerError, PredictResult, VersionStatus
from tfserving_client.tensors import from_tensor_proto, to_tensor_proto

__all__ = [
    "ModelServerClient",
    "ModelServerError",
    "PredictResult",
    "VersionStatus",
    "from_tensor_proto",
    "to_tensor_proto",
]
