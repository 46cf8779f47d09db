"""A TF Serving gRPC client for long-lived, forked, gevent-patched API workers."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

import grpc
import numpy as np

from tfserving_client.protos.tensorflow_serving.apis import get_model_status_pb2, model_pb2, predict_pb2
from tfserving_client.tensors import from_tensor_proto, to_tensor_proto

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_STATUS_METHOD = "/tensorflow.serving.ModelService/GetModelStatus"

# Batches of 320x320 float images and their masks exceed gRPC's 4 MB default.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A model server's host lost from the network sends no RST: the calls on its connection would
# wait for their deadline, and round_robin would keep giving it every other call meanwhile. gRPC
# sets the socket's TCP_USER_TIMEOUT to the keepalive timeout: the kernel ends the connection once
# sent bytes go that long unacknowledged, and its calls are asked of another server
# (tests/libs/test_tfserving_client_balancing.py cuts a link and measures the stall).
KEEPALIVE_TIMEOUT_SECONDS = 3
# Reconnect quickly after a model server restart; gRPC's default backoff grows to 120 s.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_SECONDS * 1000),
]
# Every model server behind the address takes calls in turn. gRPC balances per call only in the
# client (one HTTP/2 connection carries every call, so a proxy or a VIP balances connections): the
# address names them all (`dns:///tfserving:8500`, every address of the name; `ipv4:a:p,b:p`), and
# round_robin sends each call to the next connected one, skipping those that are not.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# gRPC asks DNS again only when a connection fails, so a model server added beside healthy ones
# would never be called: the client looks the name up itself this often and, when the addresses
# changed, opens a new channel (the old one finishes its calls first).
RESOLVE_EVERY_SECONDS = 5.0
# Only a model server that is not there (yet), or that went away under the call, is worth asking
# again: Predict has no side effects.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
# The channel's own view, when a call failed UNAVAILABLE, says whether asking again can help:
# READY means the server answered UNAVAILABLE itself (TF Serving sheds load that way when its
# batch queue is full: a retry would add the load it is shedding), TRANSIENT_FAILURE means it is
# known to be unreachable until the next reconnect (a retry only delays the caller's 503).
# Left: IDLE and CONNECTING, a connection being (re)made. With several servers behind the
# address, READY says only that one of them is there: the retry goes to the next.
_NO_RETRY_STATES = {2, 3, 4}  # READY, TRANSIENT_FAILURE, SHUTDOWN (grpc's connectivity codes)
_READY = 2
_FAILING_STATES = {3, 4}  # TRANSIENT_FAILURE, SHUTDOWN


class RetryBudget:
    """Retries as a bounded share of the calls, as gRPC's retryThrottling: every failed call
    spends a token, every success earns back `ratio` of one; retries stop while fewer than half of
    `max_tokens` are left. A failing server then sees at most about `ratio` extra load."""

    def __init__(self, max_tokens: float = 10.0, ratio: float = 0.1):
        self.max_tokens, self.ratio = max_tokens, ratio
        self.tokens = max_tokens
        self._lock = threading.Lock()

    def succeeded(self) -> None:
        with self._lock:
            self.tokens = min(self.max_tokens, self.tokens + self.ratio)

    def failed_may_retry(self) -> bool:
        with self._lock:
            self.tokens = max(0.0, self.tokens - 1)
            return self.tokens > self.max_tokens / 2

# observer(method, model_name, seconds, status_code_name) -- for metrics, without a dependency on them.
Observer = Callable[[str, str, float, str], None]


class ModelServerError(Exception):
    """A failed call, carrying the gRPC status so the HTTP layer can pick its answer."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclasses.dataclass(frozen=True)
class PredictResult:
    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: int | None


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_message: str = ""


class ModelServerClient:
    """One persistent channel per process, opened on first use.

    Opening lazily matters: gunicorn imports the app in the master and forks workers, and a gRPC
    channel must not cross a fork. Under gevent, call `grpc.experimental.gevent.init_gevent()`
    after monkey-patching and before the first call (service_kit's worker class does).
    """

    def __init__(self, address: str, *, timeout_seconds: float = 10.0, retries: int = 2,
                 retry_backoff_seconds: float = 0.05, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 observer: Observer | None = None):
        self.address = address
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.retry_backoff_seconds = retry_backoff_seconds
        self.max_message_bytes = max_message_bytes
        self.observer = observer
        self.retry_budget = RetryBudget()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._channel: grpc.Channel | None = None
        self._predict = None
        self._get_model_status = None
        self._resolved: frozenset | None = None  # the name's addresses when the channel opened (dns: only)
        self._retired: list[tuple[float, grpc.Channel]] = []  # (close after, channel) replaced channels
        self.channels_opened = 0

    def _ensure_channel(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._retired = []  # a parent's channels: never touched after a fork
            if dns_name(self.address):
                self._resolved = resolve(self.address)
                threading.Thread(target=self._follow_dns, args=(os.getpid(),), name="tfserving-dns",
                                 daemon=True).start()
            self._open_channel()

    def _open_channel(self) -> None:
        options = [("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.service_config", _SERVICE_CONFIG), *_CHANNEL_OPTIONS]
        channel = grpc.insecure_channel(self.address, options=options)
        predict = channel.unary_unary(
            PREDICT_METHOD,
            request_serializer=predict_pb2.PredictRequest.SerializeToString,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )
        get_model_status = channel.unary_unary(
            GET_MODEL_STATUS_METHOD,
            request_serializer=get_model_status_pb2.GetModelStatusRequest.SerializeToString,
            response_deserializer=get_model_status_pb2.GetModelStatusResponse.FromString,
        )
        if self._channel is not None and self._pid == os.getpid():
            # Calls under way keep the old channel until their own deadline at the latest.
            self._retired.append((time.monotonic() + self.timeout_seconds + 1, self._channel))
        self._predict, self._get_model_status = predict, get_model_status
        self._channel, self._pid = channel, os.getpid()
        self.channels_opened += 1

    def _follow_dns(self, pid: int) -> None:
        """Every RESOLVE_EVERY_SECONDS while this process's channel lives: a new channel when the
        name's addresses changed (a model server added or gone), old channels closed once done."""
        while True:
            time.sleep(RESOLVE_EVERY_SECONDS)
            with self._lock:
                if self._pid != pid or os.getpid() != pid:
                    return  # closed, or this is a forked copy of the thread's owner
                now = time.monotonic()
                done = [channel for close_after, channel in self._retired if close_after <= now]
                self._retired = [r for r in self._retired if r[0] > now]
                for channel in done:
                    channel.close()
            addresses = resolve(self.address)
            with self._lock:
                if self._pid == pid and addresses and addresses != self._resolved:
                    self._resolved = addresses
                    self._open_channel()

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for _, channel in self._retired:
                    channel.close()
                if self._channel is not None:
                    self._channel.close()
            self._retired = []
            self._channel = self._pid = None

    def predict(self, model_name: str, inputs: Mapping[str, np.ndarray], *,
                signature_name: str = "serving_default", version: int | None = None,
                version_label: str | None = None, output_filter: list[str] | None = None,
                timeout_seconds: float | None = None) -> PredictResult:
        request = predict_pb2.PredictRequest(output_filter=output_filter or [])
        _fill_model_spec(request.model_spec, model_name, signature_name, version, version_label)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(to_tensor_proto(value))
        self._ensure_channel()
        response = self._call("Predict", model_name, self._predict, request, timeout_seconds)
        spec = response.model_spec
        return PredictResult(
            outputs={name: from_tensor_proto(tensor) for name, tensor in response.outputs.items()},
            model_name=spec.name or model_name,
            model_version=spec.version.value if spec.HasField("version") else None,
        )

    def model_status(self, model_name: str, *, timeout_seconds: float | None = None) -> list[VersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model_name
        self._ensure_channel()
        response = self._call("GetModelStatus", model_name, self._get_model_status, request, timeout_seconds)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [VersionStatus(status.version, state_name(status.state), status.status.error_message)
                for status in response.model_version_status]

    def _call(self, method: str, model_name: str, stub, request, timeout_seconds: float | None):
        """One deadline for the whole call, retries included: a caller never waits longer."""
        deadline = time.monotonic() + (timeout_seconds or self.timeout_seconds)
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                response = stub(request, timeout=max(deadline - started, 0.001))
            except grpc.RpcError as error:
                code = error.code() or grpc.StatusCode.UNKNOWN
                self._observe(method, model_name, started, code.name)
                backoff = self.retry_backoff_seconds * (2 ** attempt)
                if (code in _RETRYABLE and attempt < self.retries and time.monotonic() + backoff < deadline
                        and self._worth_asking_again(code) and self.retry_budget.failed_may_retry()):
                    attempt += 1
                    time.sleep(backoff)
                    continue
                raise ModelServerError(code, error.details() or code.name) from None
            self._observe(method, model_name, started, "OK")
            self.retry_budget.succeeded()
            return response

    def _worth_asking_again(self, code: grpc.StatusCode) -> bool:
        """CANCELLED is never our own doing (a call ends at its deadline): a model server that
        stopped, or was killed, ended the call unanswered. A server answering with UNAVAILABLE is
        shedding load unless another is there to take the call."""
        if code == grpc.StatusCode.CANCELLED:
            return True
        state = self._connectivity()
        return state not in _NO_RETRY_STATES or (state == _READY and self._servers() > 1)

    def _servers(self) -> int:
        """How many model servers the address names now (a `dns:` name's addresses at the last lookup)."""
        if self._resolved is not None:
            return len(self._resolved)
        if self.address.startswith(("ipv4:", "ipv6:")):
            return self.address.count(",") + 1
        return 1

    def connection_failing(self) -> bool:
        """Whether the channel knows the model server unreachable right now (it failed to connect,
        or lost the connection, and backs off before trying again): calls fail at once meanwhile."""
        return self._pid == os.getpid() and self._connectivity() in _FAILING_STATES

    def _connectivity(self) -> int | None:
        """The channel's connectivity state right now (grpc's codes; None if unknown, e.g. a test double)."""
        try:
            return self._channel._channel.check_connectivity_state(False)  # the public API only subscribes
        except AttributeError:
            return None

    def _observe(self, method: str, model_name: str, started: float, code: str) -> None:
        if self.observer is not None:
            self.observer(method, model_name, time.monotonic() - started, code)


def dns_name(address: str) -> tuple[str, int] | None:
    """(host, port) of a `dns:` target (`dns:///name:port`, `dns://resolver/name:port`, `dns:name:port`)."""
    if not address.startswith("dns:"):
        return None
    rest = address[4:]
    if rest.startswith("//"):
        rest = rest[2:].partition("/")[2]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def resolve(address: str) -> frozenset[tuple[str, int]] | None:
    """Every address of a `dns:` target's name now; None when the lookup failed (keep what we had)."""
    name = dns_name(address)
    if name is None:
        return None
    try:
        found = socket.getaddrinfo(name[0], name[1], type=socket.SOCK_STREAM)
    except OSError:
        return None
    return frozenset((info[4][0], info[4][1]) for info in found)


def _fill_model_spec(spec: model_pb2.ModelSpec, name: str, signature_name: str,
                     version: int | None, version_label: str | None) -> None:
    spec.name = name
    spec.signature_name = signature_name
    if version is not None and version_label is not None:
        raise ValueError("give a version or a version label, not both")
    if version is not None:
        spec.version.value = version
    elif version_label is not None:
        spec.version_label = version_label
