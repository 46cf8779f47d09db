"""Classify, Regress and MultiInference: tf.Example inputs in, TF Serving's result messages out.

These APIs feed a signature's one string input (`inputs`) with serialized tf.Examples, which
the graph parses itself, and read its outputs by fixed keys: `classes` and/or `scores` for
classification ([batch, num_classes]), `outputs` for regression ([batch] or [batch, 1]). The
checks and their messages are TF Serving's (servables/tensorflow/classifier.cc, regressor.cc,
util.cc), so a client sees the same refusals from either server.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from model_server.errors import invalid_argument
from model_server.tensors import ServingValueError, b64_bytes

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
INPUTS_KEY = "inputs"
CLASSES_KEY, SCORES_KEY = "classes", "scores"
OUTPUTS_KEY = "outputs"


@dataclasses.dataclass(frozen=True)
class Task:
    """What one Classify or Regress asks of a signature: its input key and the outputs to read."""

    method: str
    signature_name: str
    input_key: str
    output_keys: tuple[str, ...]


def classification_task(signature_name: str, signature: meta_graph_pb2.SignatureDef) -> Task:
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if INPUTS_KEY not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {signature_name}")
    outputs = tuple(key for key in (CLASSES_KEY, SCORES_KEY) if key in signature.outputs)
    if not outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {signature_name}")
    return Task(CLASSIFY_METHOD, signature_name, INPUTS_KEY, outputs)


def regression_task(signature_name: str, signature: meta_graph_pb2.SignatureDef) -> Task:
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if INPUTS_KEY not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {signature_name}")
    if OUTPUTS_KEY not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {signature_name}")
    return Task(REGRESS_METHOD, signature_name, INPUTS_KEY, (OUTPUTS_KEY,))


TASKS = {CLASSIFY_METHOD: classification_task, REGRESS_METHOD: regression_task}


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The request's examples as the string tensor the graph parses. With a context, each
    example is the context's bytes followed by its own: protobuf merges concatenated messages,
    so an example's feature overrides the context's of the same name (as TF Serving does)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples, context = request_input.example_list.examples, b""
    elif kind == "example_list_with_context":
        examples = request_input.example_list_with_context.examples
        context = request_input.example_list_with_context.context.SerializeToString()
    else:
        raise invalid_argument("Input is empty.")
    if not examples:
        raise invalid_argument("Input is empty.")
    return np.array([context + example.SerializeToString() for example in examples], dtype=object)


def classification_result(outputs: dict[str, np.ndarray], num_examples: int) -> classification_pb2.ClassificationResult:
    classes, scores = outputs.get(CLASSES_KEY), outputs.get(SCORES_KEY)
    for name, tensor, dtype in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}")
        is_string = tensor.dtype == object or tensor.dtype.kind in "SU"
        if (dtype == "DT_STRING") != is_string or (dtype == "DT_FLOAT" and tensor.dtype != np.float32):
            raise invalid_argument(f"Expected {name} Tensor of {dtype}. Got: {tensor.dtype}")
        if tensor.shape[0] != num_examples:
            raise invalid_argument(f"Expected {name} output batch size of {num_examples}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = _text(classes[i, c])
            if scores is not None:
                entry.score = float(scores[i, c])
    return result


def regression_result(outputs: dict[str, np.ndarray], num_examples: int) -> regression_pb2.RegressionResult:
    values = outputs[OUTPUTS_KEY]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}")
    if values.shape[0] != num_examples:
        raise invalid_argument(
            f"Input batch size did not match output batch size: {num_examples} vs. {values.shape[0]}")
    if values.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add().value = float(value)
    return result


def _text(value: object) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return raw.decode("utf-8", errors="replace")


# --- REST: {"signature_name", "context", "examples"} --------------------------------------------


def input_from_json(request: dict) -> input_pb2.Input:
    """The REST form (api_rest.md: a feature is a value or a list of values; integers become
    int64_list, other numbers float_list, strings and {"b64": ...} bytes_list) as an Input."""
    examples = request.get("examples")
    if not isinstance(examples, list) or not examples:
        raise invalid_argument("'examples' must be a non-empty list of objects")
    message = input_pb2.Input()
    if "context" in request:
        target = message.example_list_with_context
        _fill_example(target.context, request["context"], "context")
    else:
        target = message.example_list
    for index, example in enumerate(examples):
        _fill_example(target.examples.add(), example, f"examples[{index}]")
    return message


def _fill_example(example: example_pb2.Example, features: object, where: str) -> None:
    if not isinstance(features, dict):
        raise invalid_argument(f"{where} must be an object of feature names to values")
    for name, value in features.items():
        _fill_feature(example.features.feature[name], value if isinstance(value, list) else [value], f"{where}.{name}")


def _fill_feature(feature: feature_pb2.Feature, values: list, where: str) -> None:
    if not values:
        return  # an empty feature: TF Serving writes no value list either
    if all(isinstance(v, bool) for v in values) or any(isinstance(v, (list, type(None))) for v in values):
        raise invalid_argument(f"{where}: a feature is a number, a string or a flat list of one kind of them")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if any(not -(2**63) <= v < 2**63 for v in values):
            raise invalid_argument(f"{where}: integer out of the int64 range")
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(float(v) for v in values)
    elif all(isinstance(v, (str, dict)) for v in values):
        feature.bytes_list.value.extend(_bytes(v, where) for v in values)
    else:
        raise invalid_argument(f"{where}: all values of a feature must be of one kind (numbers or strings)")


def _bytes(value: str | dict, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    try:
        return b64_bytes(value)
    except ServingValueError as error:
        raise invalid_argument(f"{where}: {error}") from None


def classification_json(result: classification_pb2.ClassificationResult) -> dict:
    return {"results": [[[c.label, c.score] for c in item.classes] for item in result.classifications]}


def regression_json(result: regression_pb2.RegressionResult) -> dict:
    return {"results": [r.value for r in result.regressions]}

