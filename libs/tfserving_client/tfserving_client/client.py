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
# gRPC balances per call only in the client (one HTTP/2 connection carries every call, so a proxy
# or a VIP balances connections): the address names every model server (`dns:///tfserving:8500`,
# every address of the name; `ipv4:a:p,b:p`), and the client keeps a channel to each
# (ModelServerClient._pick). round_robin serves a `dns:` name that could not be looked up yet.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# gRPC asks DNS again only when a connection fails, so a model server added beside healthy ones
# would never be called: the client looks the name up itself this often, opens a channel to each
# new address and closes those of addresses gone once their calls are done.
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


# A model server that has calls under way and has answered none of them for this long has stopped
# answering (a healthy one answers some call within a second under any load it takes): new calls
# go elsewhere. One whose call then ran out of time that way is passed over for EJECT_SECONDS,
# doubling while it stays so (to MAX_EJECT_SECONDS), as nginx's max_fails=1 fail_timeout.
STALL_SECONDS = 1.0
EJECT_SECONDS = 10.0
MAX_EJECT_SECONDS = 80.0


@dataclasses.dataclass(eq=False)
class _ModelServer:
    """One model server's channel, the calls under way on it, and whether it is answering."""

    target: str
    channel: grpc.Channel
    predict: Callable
    get_model_status: Callable
    in_flight: int = 0
    progress: float = 0.0  # when it last answered a call, or became busy
    avoid_until: float = 0.0
    ejections: int = 0  # in a row

    def stalled(self, now: float) -> bool:
        return self.in_flight > 0 and now - self.progress > STALL_SECONDS

    def ran_out_of_time(self, started: float, now: float) -> None:
        """A call started at `started` got no answer by its deadline: if the server answered
        nothing meanwhile either, pass it over for a while."""
        if self.progress <= started and now - started >= STALL_SECONDS:
            self.ejections += 1
            self.avoid_until = now + min(EJECT_SECONDS * 2 ** (self.ejections - 1), MAX_EJECT_SECONDS)

    def state(self) -> int | None:
        """The channel's connectivity now (grpc's codes; None if unknown, e.g. a test double)."""
        try:
            return self.channel._channel.check_connectivity_state(False)  # the public API only subscribes
        except AttributeError:
            return None


class ModelServerClient:
    """A persistent channel to each model server the address names, per process, opened on first use.

    Each call goes to the server with the fewest calls under way (ties in turn), skipping those
    known down: a server that stops answering keeps the calls it holds and gets no more, where
    round_robin would give it every other call, each to wait out its deadline.

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
        self._lock = threading.Lock()  # the servers' list
        self._counting = threading.Lock()  # the calls under way, from every thread
        self._pid: int | None = None
        self._servers: list[_ModelServer] = []
        self._resolved: frozenset | None = None  # the name's addresses behind the servers (dns: only)
        self._retired: list[tuple[float, _ModelServer]] = []  # (close after, server) no longer named
        self._turn = 0  # where the next call starts looking among equally loaded servers
        self.channels_opened = 0

    def _ensure_channel(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._servers, self._retired = [], []  # a parent's channels: never touched after a fork
            targets = server_targets(self.address)
            if dns_name(self.address):
                self._resolved = resolve(self.address)
                targets = dns_targets(self._resolved) if self._resolved else targets
                threading.Thread(target=self._follow_dns, args=(os.getpid(),), name="tfserving-dns",
                                 daemon=True).start()
            self._use(targets)
            self._pid = os.getpid()

    def _use(self, targets: list[str]) -> None:
        """Channels to exactly these servers: kept where open, opened where new; the others are
        retired, and closed once the calls under way on them are past their deadline."""
        kept = {server.target: server for server in self._servers}
        self._servers = [kept.pop(target, None) or self._open(target) for target in targets]
        close_after = time.monotonic() + self.timeout_seconds + 1
        self._retired += [(close_after, server) for server in kept.values()]

    def _open(self, target: str) -> _ModelServer:
        options = [("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.service_config", _SERVICE_CONFIG), *_CHANNEL_OPTIONS]
        channel = grpc.insecure_channel(target, options=options)
        self.channels_opened += 1
        return _ModelServer(
            target, channel,
            channel.unary_unary(PREDICT_METHOD, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                response_deserializer=predict_pb2.PredictResponse.FromString),
            channel.unary_unary(GET_MODEL_STATUS_METHOD,
                                request_serializer=get_model_status_pb2.GetModelStatusRequest.SerializeToString,
                                response_deserializer=get_model_status_pb2.GetModelStatusResponse.FromString))

    def _follow_dns(self, pid: int) -> None:
        """Every RESOLVE_EVERY_SECONDS while this process's channels live: a channel for each
        server the name gained, the lost ones' closed once their calls are done."""
        while True:
            time.sleep(RESOLVE_EVERY_SECONDS)
            with self._lock:
                if self._pid != pid or os.getpid() != pid:
                    return  # closed, or this is a forked copy of the thread's owner
                now = time.monotonic()
                done = [server for close_after, server in self._retired if close_after <= now]
                self._retired = [r for r in self._retired if r[0] > now]
                for server in done:
                    server.channel.close()
            addresses = resolve(self.address)
            with self._lock:
                if self._pid == pid and addresses and addresses != self._resolved:
                    self._resolved = addresses
                    self._use(dns_targets(addresses))

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for server in [*self._servers, *(server for _, server in self._retired)]:
                    server.channel.close()
            self._servers, self._retired = [], []
            self._pid = None

    def predict(self, model_name: str, inputs: Mapping[str, np.ndarray], *,
                signature_name: str = "serving_default", version: int | None = None,
                version_label: str | None = None, output_filter: list[str] | None = None,
                timeout_seconds: float | None = None) -> PredictResult:
        request = predict_pb2.PredictRequest(output_filter=output_filter or [])
        _fill_model_spec(request.model_spec, model_name, signature_name, version, version_label)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(to_tensor_proto(value))
        self._ensure_channel()
        response = self._call("Predict", model_name, request, timeout_seconds)
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
        response = self._call("GetModelStatus", model_name, request, timeout_seconds)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [VersionStatus(status.version, state_name(status.state), status.status.error_message)
                for status in response.model_version_status]

    def _call(self, method: str, model_name: str, request, timeout_seconds: float | None):
        """One deadline for the whole call, retries included: a caller never waits longer."""
        deadline = time.monotonic() + (timeout_seconds or self.timeout_seconds)
        attempt = 0
        server = None
        while True:
            server = self._pick(avoid=server)
            stub = server.predict if method == "Predict" else server.get_model_status
            started = time.monotonic()
            with self._counting:
                if server.in_flight == 0:
                    server.progress = started
                server.in_flight += 1
            try:
                response = stub(request, timeout=max(deadline - started, 0.001))
            except grpc.RpcError as error:
                code = error.code() or grpc.StatusCode.UNKNOWN
                self._observe(method, model_name, started, code.name)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    server.ran_out_of_time(started, time.monotonic())
                elif code not in _RETRYABLE:
                    self._answered(server)
                backoff = self.retry_backoff_seconds * (2 ** attempt)
                if (code in _RETRYABLE and attempt < self.retries and time.monotonic() + backoff < deadline
                        and self._worth_asking_again(code, server) and self.retry_budget.failed_may_retry()):
                    attempt += 1
                    time.sleep(backoff)
                    continue
                raise ModelServerError(code, error.details() or code.name) from None
            finally:
                with self._counting:
                    server.in_flight -= 1
            self._answered(server)
            self._observe(method, model_name, started, "OK")
            self.retry_budget.succeeded()
            return response

    @staticmethod
    def _answered(server: _ModelServer) -> None:
        server.progress, server.ejections = time.monotonic(), 0

    def _pick(self, avoid: _ModelServer | None = None) -> _ModelServer:
        """The server with the fewest calls under way among those answering (not known down, not
        stalled nor passed over, and not the one that just failed); failing that, among those not
        known down, then any; ties are taken in turn."""
        servers, now = self._servers, time.monotonic()
        up = [s for s in servers if s is not avoid and s.state() not in _FAILING_STATES]
        usable = ([s for s in up if s.avoid_until <= now and not s.stalled(now)] or up
                  or [s for s in servers if s is not avoid] or servers)
        self._turn += 1
        return min((usable[(self._turn + i) % len(usable)] for i in range(len(usable))),
                   key=lambda server: server.in_flight)

    def _worth_asking_again(self, code: grpc.StatusCode, server: _ModelServer) -> bool:
        """CANCELLED is never our own doing (a call ends at its deadline): a model server that
        stopped, or was killed, ended the call unanswered. A server answering with UNAVAILABLE is
        shedding load unless another is there to take the call."""
        if code == grpc.StatusCode.CANCELLED or server.state() not in _NO_RETRY_STATES:
            return True
        return any(other is not server and other.state() not in _FAILING_STATES for other in self._servers)

    def connection_failing(self) -> bool:
        """Whether the channels know every model server unreachable right now (each failed to
        connect, or lost its connection, and backs off before trying again): calls fail at once."""
        return (self._pid == os.getpid() and bool(self._servers)
                and all(server.state() in _FAILING_STATES for server in self._servers))

    def _observe(self, method: str, model_name: str, started: float, code: str) -> None:
        if self.observer is not None:
            self.observer(method, model_name, time.monotonic() - started, code)


def server_targets(address: str) -> list[str]:
    """A gRPC target per model server an address names: `ipv4:a:p,b:p` lists them; any other
    target is one (a `dns:` name's addresses come from resolve)."""
    scheme, _, rest = address.partition(":")
    if scheme in ("ipv4", "ipv6") and "," in rest:
        return [f"{scheme}:{one}" for one in rest.split(",")]
    return [address]


def dns_targets(addresses: frozenset[tuple[str, int]]) -> list[str]:
    return sorted(f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}" for host, port in addresses)


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
