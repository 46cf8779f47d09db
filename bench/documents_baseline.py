"""The source documents' text service, rebuilt faithfully as the benchmark's baseline.

What they did, kept: Flask's own development server (threaded), the TF Serving client imported
with TensorFlow (`tensorflow_serving.apis` + `tf.make_tensor_proto`), a NEW gRPC channel and stub
for every request, one sentence per Predict call, jieba segmentation as they wrote it.
What is left out on purpose: their `eval()` of query parameters and `DebuggedApplication
(evalex=True)` -- security defects, not performance ones. Benchmark use only; never deploy it.

    python -m bench.documents_baseline --port 5100 --model-server 127.0.0.1:8500
"""

from __future__ import annotations

import argparse
import base64
import logging

import grpc
import jieba
import tensorflow as tf
from flask import Flask, request
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

jieba.setLogLevel(logging.WARNING)


def create_app(model_server: str) -> Flask:
    app = Flask(__name__)

    def predict(words: list[str]) -> predict_pb2.PredictResponse:
        channel = grpc.insecure_channel(model_server)  # per request, as in the documents
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        predict_request = predict_pb2.PredictRequest()
        predict_request.model_spec.name = "lstm"
        predict_request.model_spec.signature_name = "serving_default"
        predict_request.inputs["words"].CopyFrom(tf.make_tensor_proto([words], shape=[1, len(words)]))
        predict_request.inputs["nwords"].CopyFrom(tf.make_tensor_proto([len(words)], shape=[1], dtype=tf.int32))
        try:
            return stub.Predict(predict_request, 10.0)
        finally:
            channel.close()

    @app.route("/lstm/predict", methods=["GET", "POST"])
    def lstm_predict():
        data = request.args.to_dict() if request.method == "GET" else request.get_json(force=True)
        if "line" not in data:
            return {"status": "no sentence in data"}
        if request.method == "GET":
            data["line"] = base64.urlsafe_b64decode(data["line"].encode()).decode()
        sentence = " ".join(jieba.cut(data["line"].strip(), cut_all=False, HMM=True))
        words = sentence.strip().split()
        if not words:
            return {"status": "no sentence in data"}
        result = predict(words)
        return {
            "status": 0,
            "classes_id": result.outputs["classes_id"].int64_val[0],
            "labels": result.outputs["labels"].string_val[0].decode(),
            "softmax": list(result.outputs["softmax"].float_val),
        }

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5100)
    parser.add_argument("--model-server", default="127.0.0.1:8500")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    jieba.initialize()
    create_app(args.model_server).run(host="127.0.0.1", port=args.port, threaded=True)
