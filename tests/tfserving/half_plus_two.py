"""Small SavedModels shaped like the ones TF Serving's own integration tests serve, written by us.

`y = 0.5 * x + 2` exported the TF1 way (placeholders, a tf.Example parser, SignatureDefs with
method names), into a zero-padded version folder as TF Serving's examples write them:

    serving_default   x [?,1] float  -> y [?,1]                         (Predict)
    classify_x_to_y   inputs: serialized tf.Example with x -> scores    (Classify)
    classify_classes  the same -> classes (labels) and scores, 2 classes (Classify)
    regress_x_to_y    the same -> outputs                               (Regress)

and warm-up records (`assets.extra/tf_serving_warmup_requests`) when asked for.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

VERSION_FOLDER = "00000123"
VERSION = 123


def export_half_plus_two(base_path: Path, add: float = 2.0, warmup_records: int = 0) -> Path:
    export_dir = base_path / VERSION_FOLDER
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        a, b = tf.Variable(0.5, name="a"), tf.Variable(add, name="b")
        serialized = v1.placeholder(tf.string, name="tf_example")
        parsed = v1.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        x = v1.placeholder(tf.float32, shape=[None, 1], name="x")
        y = tf.add(tf.multiply(a, x), b, name="y")
        y_from_example = tf.add(tf.multiply(a, parsed["x"]), b, name="y_from_example")
        scores = tf.concat([y_from_example, 1 - y_from_example], axis=1)
        labels = tf.tile(tf.constant([["yes", "no"]]), [tf.shape(serialized)[0], 1])
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def
        signatures = {
            "serving_default": signature({"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict"),
            "classify_x_to_y": signature({"inputs": info(serialized)}, {"scores": info(y_from_example)},
                                         "tensorflow/serving/classify"),
            "classify_classes": signature({"inputs": info(serialized)},
                                          {"classes": info(labels), "scores": info(scores)},
                                          "tensorflow/serving/classify"),
            "regress_x_to_y": signature({"inputs": info(serialized)}, {"outputs": info(y_from_example)},
                                        "tensorflow/serving/regress"),
        }
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()
    if warmup_records:
        write_warmup(export_dir, warmup_records)
    return export_dir


def write_warmup(export_dir: Path, records: int) -> None:
    extra = export_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        for _ in range(records):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "half_plus_two"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], tf.float32))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
