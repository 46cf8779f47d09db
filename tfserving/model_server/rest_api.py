"""TF Serving's REST API (api_rest.md) on top of ServerCore.

    GET  /v1/models/NAME[/versions/N | /labels/L]            model status
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata   signatures
    POST /v1/models/NAME[/versions/N | /labels/L]:predict    row ("instances") or columnar ("inputs")
    POST /v1/models/NAME[/versions/N | /labels/L]:classify   {"examples": [...], "context": {...}}
    POST /v1/models/NAME[/versions/N | /labels/L]:regress    the same

The HTTP server is the standard library's threading server: this API carries status checks
and conformance tests; the API services talk gRPC. It is bounded all the same: at most
`--rest_api_num_threads` connections are served at once (the next ones wait in the listen
backlog), a connection may wait IDLE_SECONDS for its next request, which then has
`--rest_api_timeout_in_ms` to arrive, and request bodies are read and parsed within a byte budget.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from model_server import examples
from model_server.core import ModelSpec, ServerCore
from model_server.errors import ServingError, invalid_argument, unavailable
from model_server.flags import DEFAULT_REST_NUM_THREADS, DEFAULT_REST_TIMEOUT_MS
from model_server.monitoring import METRICS
from model_server.servable import DEFAULT_SIGNATURE
from model_server.tensors import check_request_bytes, decoded_bytes, from_json, to_json

log = logging.getLogger(__name__)

# JSON costs up to 26 bytes of Python objects per byte of body (measured: 16 MiB of `[],` parse to
# 411 MiB), so a body may have 16 MiB (a few cv_sod images; the API services use gRPC), and bodies
# being read and parsed at once may have 16 MiB together: at most ~420 MiB of JSON whatever the
# number of threads. (A 57 MB body of empty lists took 21 GB once fed to the lstm graph.)
MAX_BODY_BYTES = 16 * 1024 * 1024
BODY_BUDGET_BYTES = MAX_BODY_BYTES
DEFAULT_TIMEOUT_SECONDS = DEFAULT_REST_TIMEOUT_MS / 1000
# TF Serving's CORS headers (--rest_api_enable_cors_support; http_server.cc)
CORS_HEADERS = (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type"))
# How long a connection may wait for its next request, holding a thread (gunicorn's keep-alive
# default): 150 idle connections keep a new one waiting ~150 / 16 x 2 s = 19 s, not 150 / 16 x 30 s.
IDLE_SECONDS = 2.0
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


def _json_object(body: bytes) -> dict:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise invalid_argument(f"JSON Parse error: {error}") from None
    if not isinstance(request, dict):
        raise invalid_argument("the request body must be a JSON object")
    return request


def _typed(columns: dict, signature) -> dict[str, np.ndarray]:
    arrays, total = {}, 0
    for key, value in columns.items():
        if key not in signature.inputs:
            raise invalid_argument(f"input {key!r} is not in the signature (expects {sorted(signature.inputs)})")
        arrays[key] = from_json(value, tf.dtypes.as_dtype(signature.inputs[key].dtype), key)
        total += decoded_bytes(arrays[key])
        check_request_bytes(total, key)
    return arrays


class _ByteBudget:
    """Bytes that requests may hold at once; a request waits for its share, up to a timeout."""

    def __init__(self, capacity: int):
        self._free = capacity
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int, timeout: float) -> Iterator[None]:
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= nbytes, timeout):
                raise unavailable("the REST API is busy reading other large requests; try again")
            self._free -= nbytes
        try:
            yield
        finally:
            with self._cond:
                self._free += nbytes
                self._cond.notify_all()


class _DeadlineReader(io.RawIOBase):
    """A connection's reads: waiting for a request may take `idle` seconds, and receiving it
    `timeout` from its first byte, so a client sending a byte now and then (slowloris) cannot hold
    a thread for longer, however short its gaps."""

    def __init__(self, sock: socket.socket, idle: float, timeout: float):
        self._sock, self._idle, self._timeout = sock, idle, timeout
        self.deadline: float | None = None  # set when a request's first byte arrives

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._idle if self.deadline is None else self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"request not received within {self._timeout:g} s")
        self._sock.settimeout(remaining)
        received = self._sock.recv_into(buffer)
        if self.deadline is None:
            self.deadline = time.monotonic() + self._timeout
        return received


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "model-server"
    core: ServerCore
    metrics_path: str | None = None
    server: RestServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own reader, replaced by one with a deadline
        timeout = self.server.timeout_seconds
        self._reader = _DeadlineReader(self.connection, min(IDLE_SECONDS, timeout), timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = None
        super().handle_one_request()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_OPTIONS(self) -> None:
        """A CORS preflight, when CORS is on; else no such method, as TF Serving."""
        if not self.server.cors:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "OPTIONS needs --rest_api_enable_cors_support"})
            return
        self._send(HTTPStatus.OK, b"", "text/plain")

    def _dispatch(self, method: str) -> None:
        if method == "GET" and self.metrics_path and self.path.split("?", 1)[0] == self.metrics_path:
            self._reply_text(METRICS.exposition(), "text/plain; version=0.0.4")
            return
        started, status, body = time.perf_counter(), "OK", None
        try:
            length = self._content_length()
            with self.server.body_budget.hold(length, self.server.timeout_seconds):
                body = self._read_body(length)
                self._answer(method, body)
        except ServingError as error:
            status = error.code.name
            # A body left unread would be taken for the next request on a keep-alive connection.
            self.close_connection = self.close_connection or body is None
            self._reply(error.http_status, {"error": error.message})
        except Exception:  # noqa: BLE001 - never a traceback to the caller
            status = "INTERNAL"
            log.exception("unexpected error for %s %s", method, self.path)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error in the model server"})
        finally:
            match = _PATH.match(self.path.split("?", 1)[0])
            if match:
                api = ((match["verb"] or "predict").capitalize() if method == "POST"
                       else "GetModelMetadata" if match["metadata"] else "GetModelStatus")
                METRICS.observe(match["name"], api, "REST", status, time.perf_counter() - started)

    def _answer(self, method: str, body: bytes) -> None:
        """Route one request and reply; errors are raised as ServingError for `_dispatch` to answer."""
        match = _PATH.match(self.path.split("?", 1)[0])
        if not match or (method == "GET" and match["verb"]) or (method == "POST" and not match["verb"]):
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"Malformed request: {method} {self.path}"})
            return
        spec = ModelSpec(
            name=match["name"],
            version=int(match["version"]) if match["version"] else None,
            label=match["label"],
        )
        if method == "GET":
            payload = self._metadata(spec) if match["metadata"] else self._status(spec)
        elif match["verb"] == "predict":
            payload = self._predict(spec, body)
        else:
            payload = self._classify_or_regress(spec, match["verb"], body)
        self._reply(HTTPStatus.OK, payload)

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
            "metadata": {"signature_def": json_format.MessageToDict(
                signatures, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)},
        }

    def _classify_or_regress(self, spec: ModelSpec, verb: str, body: bytes) -> dict:
        request = _json_object(body)
        signature_name = request.get("signature_name") or DEFAULT_SIGNATURE
        if not isinstance(signature_name, str):
            raise invalid_argument("'signature_name' must be a string")
        method = examples.CLASSIFY_METHOD if verb == "classify" else examples.REGRESS_METHOD
        _, (result,) = self.core.infer(spec, [(method, signature_name)], examples.input_from_json(request),
                                       timeout=self.server.timeout_seconds)
        if verb == "classify":
            return examples.classification_json(result)
        return examples.regression_json(result)

    def _predict(self, spec: ModelSpec, body: bytes) -> dict:
        request = _json_object(body)
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
        _, outputs = self.core.predict(spec, inputs, timeout=self.server.timeout_seconds)
        encoded = {key: to_json(value, key) for key, value in outputs.items()}
        if not row_format:
            return {"outputs": encoded if len(encoded) != 1 else next(iter(encoded.values()))}
        rows = len(next(iter(inputs.values())))
        if len(encoded) == 1:
            return {"predictions": next(iter(encoded.values()))}
        return {"predictions": [{key: value[i] for key, value in encoded.items()} for i in range(rows)]}

    def _content_length(self) -> int:
        """The declared body length, checked: read(-1) would wait for EOF."""
        declared = (self.headers.get("Content-Length") or "0").strip()
        if not (declared.isascii() and declared.isdigit()):  # str.isdigit() takes '²' and '١' too; int() not
            raise invalid_argument(f"invalid Content-Length: {declared[:40]!r}")
        length = int(declared)
        if length > MAX_BODY_BYTES:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body over {MAX_BODY_BYTES} bytes")
        return length

    def _read_body(self, length: int) -> bytes:
        try:
            return self.rfile.read(length) if length else b""
        except TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"the request body did not arrive within {self.server.timeout_seconds:g} s") from None

    def _reply(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False, indent=None).encode("utf-8"), "application/json")

    def _reply_text(self, text: str, content_type: str) -> None:
        self._send(HTTPStatus.OK, text.encode("utf-8"), content_type)

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.connection.settimeout(self.server.timeout_seconds)  # a reply gets its own time to leave
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.server.cors:
            for name, value in CORS_HEADERS:
                self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class RestServer(ThreadingHTTPServer):
    """TF Serving's REST API; and its Prometheus metrics at `metrics_path` when monitoring is on.
    A connection gets a thread only when one of `num_threads` is free."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # connections waiting for a thread wait here, in the kernel

    def __init__(self, address: tuple[str, int], handler: type[_Handler], num_threads: int, timeout_seconds: float,
                 cors: bool = False):
        super().__init__(address, handler)
        self.cors = cors
        self.timeout_seconds = timeout_seconds
        self.body_budget = _ByteBudget(BODY_BUDGET_BYTES)
        self._threads_free = threading.BoundedSemaphore(num_threads)
        self._stopping = False

    def process_request(self, request, client_address) -> None:
        while not self._threads_free.acquire(timeout=0.5):
            if self._stopping:
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._threads_free.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._threads_free.release()

    def shutdown(self) -> None:
        self._stopping = True
        super().shutdown()


def start_rest_server(core: ServerCore, address: str, port: int, metrics_path: str | None = None,
                      num_threads: int = DEFAULT_REST_NUM_THREADS,
                      timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, cors: bool = False) -> RestServer:
    handler = type("Handler", (_Handler,), {"core": core, "metrics_path": metrics_path})
    server = RestServer((address, port), handler, num_threads, timeout_seconds, cors)
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    return server
