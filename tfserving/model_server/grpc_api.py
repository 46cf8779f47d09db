"""TF Serving's gRPC services (PredictionService, ModelService) on top of ServerCore."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
import urllib.parse
from concurrent import futures

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from model_server import examples
from model_server.core import ModelSpec, ServerCore
from model_server.credentials import server_credentials
from model_server.errors import ServingError, invalid_argument
from model_server.flags import DEFAULT_GRPC_MAX_THREADS
from model_server.monitoring import METRICS
from model_server.servable import DEFAULT_SIGNATURE
from model_server.tensors import MAX_REQUEST_BYTES, from_tensor_protos, to_tensor_proto

log = logging.getLogger(__name__)

# A call's message costs about 4 times its size while it is received and decoded (gRPC's buffer,
# the bytes, the parsed message, the decoded array: with 16 threads, 96 calls of 61 MB at once
# raised the server's peak RSS by 4.3 GB), so with messages of at most MAX_REQUEST_BYTES (32 MiB)
# and 16 threads, at most 16 x 4 x 32 MiB = 2 GiB (96 calls of 32 MB: +1.7 GB), where 64 threads
# of 256 MiB messages allowed 64 GiB and more (tensors that decode larger than their message).
# TF Serving's default for --grpc_max_threads is 4 per CPU; ours is fixed, so the bound does not
# grow with the cores. Calls waiting for a thread hold what gRPC has buffered of their message
# (13 MB each, measured), so at most 3 per thread may wait; more are refused RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES
CALLS_PER_THREAD = 4


@dataclasses.dataclass(frozen=True)
class GrpcOptions:
    """The gRPC server's flags (flags.py)."""

    address: str = "0.0.0.0"
    port: int = 8500
    socket_path: str = ""
    max_threads: int = DEFAULT_GRPC_MAX_THREADS
    channel_arguments: tuple[tuple[str, int | str], ...] = ()
    allow_remote_reload_config: bool = False
    use_alts_credentials: bool = False
    ssl_config_file: str = ""
    health_service: bool = False
    tensor_content: bool = False  # Predict outputs packed, not in *_val fields

    @classmethod
    def from_flags(cls, args) -> GrpcOptions:
        return cls(args.listen_address, args.port, args.grpc_socket_path, args.grpc_max_threads,
                   tuple(args.grpc_channel_arguments), args.allow_remote_reload_config, args.use_alts_credentials,
                   args.ssl_config_file, args.enable_grpc_healthcheck_service,
                   args.enable_serialization_as_tensor_content)


def model_spec_from_proto(spec: model_pb2.ModelSpec) -> ModelSpec:
    choice = spec.WhichOneof("version_choice")
    return ModelSpec(
        name=spec.name,
        version=spec.version.value if choice == "version" else None,
        label=spec.version_label if choice == "version_label" else None,
        signature_name=spec.signature_name,
    )


def _abort_on_error(method):
    """Turn ServingError into the gRPC status TF Serving would send; never leak a traceback."""

    def wrapper(self, request, context):
        started, status = time.perf_counter(), "OK"
        try:
            return method(self, request, context)
        except ServingError as error:
            status = error.code.name
            context.abort(error.code, error.message)
        except Exception:  # noqa: BLE001
            status = "INTERNAL"
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error in the model server")
        finally:
            model_spec = getattr(request, "model_spec", None)
            if model_spec is not None and model_spec.name:
                METRICS.observe(model_spec.name, method.__name__, "GRPC", status, time.perf_counter() - started)

    wrapper.__name__ = method.__name__
    return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore, tensor_content: bool = False):
        self.core = core
        self.tensor_content = tensor_content

    @_abort_on_error
    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        inputs = from_tensor_protos(request.inputs)
        servable, outputs = self.core.predict(
            model_spec_from_proto(request.model_spec),
            inputs,
            list(request.output_filter),
            timeout=context.time_remaining(),
        )
        response = predict_pb2.PredictResponse()
        _fill_model_spec(response.model_spec, servable, request.model_spec.signature_name or DEFAULT_SIGNATURE)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(to_tensor_proto(value, self.tensor_content))
        return response

    @_abort_on_error
    def GetModelMetadata(self, request, context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise invalid_argument("Metadata field signature_def must be requested, and only it")
        servable = self.core.resolve(model_spec_from_proto(request.model_spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            signatures.signature_def[key].CopyFrom(signature)
        packed = any_pb2.Any()
        packed.Pack(signatures)
        response.metadata["signature_def"].CopyFrom(packed)
        return response

    @_abort_on_error
    def Classify(self, request, context) -> classification_pb2.ClassificationResponse:
        return self._one_task(request, context, examples.CLASSIFY_METHOD, classification_pb2.ClassificationResponse)

    @_abort_on_error
    def Regress(self, request, context) -> regression_pb2.RegressionResponse:
        return self._one_task(request, context, examples.REGRESS_METHOD, regression_pb2.RegressionResponse)

    def _one_task(self, request, context, method: str, response_type):
        servable, (result,) = self.core.infer(model_spec_from_proto(request.model_spec),
                                              [(method, request.model_spec.signature_name)],
                                              request.input, context.time_remaining())
        response = response_type(result=result)
        _fill_model_spec(response.model_spec, servable, request.model_spec.signature_name)
        return response

    @_abort_on_error
    def MultiInference(self, request, context) -> inference_pb2.MultiInferenceResponse:
        """Several Classify/Regress tasks on one model, one set of examples (multi_inference.cc)."""
        if not request.tasks:
            raise invalid_argument("MultiInferenceRequest must contain at least one task")
        if any(not task.model_spec.name for task in request.tasks):
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if len({task.model_spec.name for task in request.tasks}) != 1:
            raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        first = request.tasks[0].model_spec
        servable, results = self.core.infer(
            model_spec_from_proto(first), [(t.method_name, t.model_spec.signature_name) for t in request.tasks],
            request.input, context.time_remaining())
        response = inference_pb2.MultiInferenceResponse()
        for task, result in zip(request.tasks, results):
            entry = response.results.add()
            kind = "classification_result" if task.method_name == examples.CLASSIFY_METHOD else "regression_result"
            getattr(entry, kind).CopyFrom(result)
            _fill_model_spec(entry.model_spec, servable, task.model_spec.signature_name)
        return response


def _fill_model_spec(spec: model_pb2.ModelSpec, servable, signature_name: str) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name


def is_local_peer(peer: str) -> bool:
    """Whether a gRPC peer (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`, `unix:/path`; some gRPC
    versions percent-encode it) is this machine: loopback, an IPv4-mapped loopback, or a Unix socket."""
    peer = urllib.parse.unquote(peer)
    if peer.startswith("unix:"):
        return True
    scheme, _, address = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return False
    try:
        ip = ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServerCore, allow_remote_reload_config: bool = False):
        self.core = core
        self.allow_remote_reload_config = allow_remote_reload_config

    @_abort_on_error
    def GetModelStatus(self, request, context) -> get_model_status_pb2.GetModelStatusResponse:
        spec = model_spec_from_proto(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.core.status(spec.name, spec.version, spec.label):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = int(status.state)
            if status.error:
                entry.status.error_code = status.error.code.value[0]
                entry.status.error_message = status.error.message
        return response

    def HandleReloadConfigRequest(self, request, context) -> model_management_pb2.ReloadConfigResponse:
        """Replace the served models (an empty config unloads them all): so only from this machine,
        unless --allow_remote_reload_config."""
        if not (self.allow_remote_reload_config or is_local_peer(context.peer())):
            log.warning("refused a config reload from %s", context.peer())
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "HandleReloadConfigRequest is only accepted from this machine (loopback or a Unix socket); "
                          "start the model server with --allow_remote_reload_config to accept it from any peer")
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.core.apply_config(request.config)
        except ServingError as error:
            response.status.error_code = error.code.value[0]
            response.status.error_message = error.message
        return response


def start_grpc_server(core: ServerCore, options: GrpcOptions) -> grpc.Server:
    """TCP (unless port 0, then the Unix socket alone) with the credentials asked for; the Unix
    socket, as TF Serving's, without."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_threads, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=CALLS_PER_THREAD * options.max_threads,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *options.channel_arguments,
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, options.tensor_content), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(core, options.allow_remote_reload_config), server)
    if options.health_service:
        from grpc_health.v1 import health, health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    if options.port:
        credentials = server_credentials(options.use_alts_credentials, options.ssl_config_file)
        address = f"{options.address}:{options.port}"
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"cannot bind gRPC port {options.port}")
        log.info("Running gRPC ModelServer at %s ...", address)
    if options.socket_path:
        if server.add_insecure_port(f"unix:{options.socket_path}") == 0:
            raise OSError(f"cannot bind the gRPC Unix socket {options.socket_path}")
        log.info("Running gRPC ModelServer at UNIX socket %s ...", options.socket_path)
    server.start()
    return server
