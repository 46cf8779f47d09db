"""TF Serving's REST API (api_rest.md) on top of ServerCore.

    GET  /v1/models/NAME[/versions/N | /labels/L]            model status
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata   signatures
    POST /v1/models/NAME[/versions/N | /labels/L]:predict    row ("instances") or columnar ("inputs")

The HTTP server is the standard library's threading server: this API carries status checks
and conformance tests; the API services talk gRPC.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from model_server.core import ModelSpec, ServerCore
from model_server.errors import ServingError, invalid_argument
from model_server.monitoring import METRICS
from model_server.servable import DEFAULT_SIGNATURE
from model_server.tensors import from_json, to_json

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?$"
)


def _batch_rows(instances: list, signature) -> dict[str, np.ndarray]:
    """Row format: a list of per-example values (one input) or of {input: value} objects."""
    if not isinstance(instances, list) or not instances:
        raise invalid_argument("'instances' must be a non-empty list")
    names = list(signature.inputs)
    if all(isinstance(row, dict) for row in instances):
        keys = set(instances[0])
        if any(set(row) != keys for row in instances):
            raise invalid_argument("all instances must name the same inputs")
        columns = {key: [row[key] for row in instances] for key in keys}
    elif len(names) == 1 and not any(isinstance(row, dict) for row in instances):
        columns = {names[0]: instances}
    else:
        raise invalid_argument(f"instances must be objects naming the inputs {sorted(names)}")
    return _typed(columns, signature)


def _typed(columns: dict, signature) -> dict[str, np.ndarray]:
    arrays = {}
    for key, value in columns.items():
        if key not in signature.inputs:
            raise invalid_argument(f"input {key!r} is not in the signature (expects {sorted(signature.inputs)})")
        arrays[key] = from_json(value, tf.dtypes.as_dtype(signature.inputs[key].dtype), key)
    return arrays


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "model-server"
    core: ServerCore
    metrics_path: str | None = None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        if method == "GET" and self.metrics_path and self.path.split("?", 1)[0] == self.metrics_path:
            self._reply_text(METRICS.exposition(), "text/plain; version=0.0.4")
            return
        started, status, model = time.perf_counter(), "OK", None
        try:
            body = self._read_body()
            match = _PATH.match(self.path.split("?", 1)[0])
            if not match:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"Malformed request: {method} {self.path}"})
                return
            model = match["name"]
            spec = ModelSpec(
                name=match["name"],
                version=int(match["version"]) if match["version"] else None,
                label=match["label"],
            )
            if method == "GET" and not match["verb"]:
                payload = self._metadata(spec) if match["metadata"] else self._status(spec)
            elif method == "POST" and match["verb"] == "predict":
                payload = self._predict(spec, body)
            elif method == "POST" and match["verb"]:
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{match['verb']} is not implemented")
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"Malformed request: {method} {self.path}"})
                return
            self._reply(HTTPStatus.OK, payload)
        except ServingError as error:
            status = error.code.name
            self._reply(error.http_status, {"error": error.message})
        except Exception:  # noqa: BLE001 - never a traceback to the caller
            status = "INTERNAL"
            log.exception("unexpected error for %s %s", method, self.path)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error in the model server"})
        finally:
            if model:
                api = "Predict" if method == "POST" else "GetModelMetadata" if "/metadata" in self.path \
                    else "GetModelStatus"
                METRICS.observe(model, api, "REST", status, time.perf_counter() - started)

    def _status(self, spec: ModelSpec) -> dict:
        statuses = self.core.status(spec.name, spec.version, spec.label)
        return {
            "model_version_status": [
                {
                    "version": str(s.version),
                    "state": s.state.name,
                    "status": {
                        "error_code": s.error.tf_code_name if s.error else "OK",
                        "error_message": s.error.message if s.error else "",
                    },
                }
                for s in statuses
            ]
        }

    def _metadata(self, spec: ModelSpec) -> dict:
        servable = self.core.resolve(spec)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            signatures.signature_def[key].CopyFrom(signature)
        return {
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": json_format.MessageToDict(signatures, preserving_proto_field_name=True)},
        }

    def _predict(self, spec: ModelSpec, body: bytes) -> dict:
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise invalid_argument(f"JSON Parse error: {error}") from None
        if not isinstance(request, dict):
            raise invalid_argument("the request body must be a JSON object")
        signature_name = request.get("signature_name") or DEFAULT_SIGNATURE
        spec = ModelSpec(spec.name, spec.version, spec.label, signature_name)
        signature = self.core.resolve(spec).signature(signature_name)
        row_format = "instances" in request
        if row_format == ("inputs" in request):
            raise invalid_argument("the request must have exactly one of 'instances' or 'inputs'")
        if row_format:
            inputs = _batch_rows(request["instances"], signature)
        elif isinstance(request["inputs"], dict):
            inputs = _typed(request["inputs"], signature)
        elif len(signature.inputs) == 1:
            inputs = _typed({next(iter(signature.inputs)): request["inputs"]}, signature)
        else:
            raise invalid_argument(f"'inputs' must be an object naming the inputs {sorted(signature.inputs)}")
        _, outputs = self.core.predict(spec, inputs)
        encoded = {key: to_json(value, key) for key, value in outputs.items()}
        if not row_format:
            return {"outputs": encoded if len(encoded) != 1 else next(iter(encoded.values()))}
        rows = len(next(iter(inputs.values())))
        if len(encoded) == 1:
            return {"predictions": next(iter(encoded.values()))}
        return {"predictions": [{key: value[i] for key, value in encoded.items()} for i in range(rows)]}

    def _read_body(self) -> bytes:
        """The body, or a refusal that also closes the connection: a body left unread would be
        taken for the next request on a keep-alive connection, and read(-1) would wait for EOF."""
        declared = (self.headers.get("Content-Length") or "0").strip()
        if not declared.isdigit():
            self.close_connection = True
            raise invalid_argument(f"invalid Content-Length: {declared[:40]!r}")
        length = int(declared)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False, indent=None).encode("utf-8"), "application/json")

    def _reply_text(self, text: str, content_type: str) -> None:
        self._send(HTTPStatus.OK, text.encode("utf-8"), content_type)

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class RestServer(ThreadingHTTPServer):
    """TF Serving's REST API; and its Prometheus metrics at `metrics_path` when monitoring is on."""

    daemon_threads = True
    allow_reuse_address = True


def start_rest_server(core: ServerCore, address: str, port: int, metrics_path: str | None = None) -> RestServer:
    handler = type("Handler", (_Handler,), {"core": core, "metrics_path": metrics_path})
    server = RestServer((address, port), handler)
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    return server
