"""`tensorflow_model_server`: start-up as TF Serving's main.cc and server.cc do it (flags.py
lists the flags and which of them apply here)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from model_server import flags
from model_server.config import BatchingParameters, read_batching_parameters, read_model_server_config
from model_server.core import LoadOptions, ServerCore
from model_server.errors import ServingError
from model_server.grpc_api import GrpcOptions, start_grpc_server
from model_server.monitoring import read_monitoring_config
from model_server.rest_api import start_rest_server

log = logging.getLogger("model_server")
VERSION = "2.21.0-python"
# Python specialises the code a request runs after a few calls (3.11's adaptive interpreter): the
# first ten calls ramped from 5.1 to 3.6 ms for lstm, warm-up or not, until the path had run ~10.
REQUEST_PATH_WARMUP_CALLS = 16  # the TF Serving release whose APIs (tensorflow-serving-api) this speaks


def build_parser() -> argparse.ArgumentParser:
    return flags.build_parser()


def load_config(args: argparse.Namespace) -> model_server_config_pb2.ModelServerConfig:
    if args.model_config_file:
        return read_model_server_config(Path(args.model_config_file))
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = args.model_name, args.model_base_path, "tensorflow"
    return config


def configure_tensorflow(args: argparse.Namespace) -> None:
    """Thread pools, before TensorFlow runs its first op (it fixes them then)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    intra, inter = args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism
    if args.tensorflow_session_config_file:
        session = config_pb2.ConfigProto()
        _parse_text(Path(args.tensorflow_session_config_file), session, "tensorflow.ConfigProto")
        intra = intra or session.intra_op_parallelism_threads
        inter = inter or session.inter_op_parallelism_threads
        ignored = [f.name for f, _ in session.ListFields()
                   if f.name not in ("intra_op_parallelism_threads", "inter_op_parallelism_threads")]
        if ignored:
            log.warning("--tensorflow_session_config_file: only the thread pool sizes apply here; ignoring %s",
                        ", ".join(ignored))
    if args.tensorflow_session_parallelism and not (intra or inter):
        intra = inter = args.tensorflow_session_parallelism
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def _parse_text(path: Path, message, type_name: str):
    """TF Serving's ParseProtoTextFile, with its message: callers grep for it."""
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), message)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise SystemExit(f"Failed to start server. Error: INVALID_ARGUMENT: Error parsing text-format "
                         f"{type_name}: {error}") from None
    return message


def warm_request_path(core: ServerCore, args: argparse.Namespace) -> None:
    """Each version's first warm-up Predict, REQUEST_PATH_WARMUP_CALLS times, through our own gRPC
    port (or socket) before the REST API, which the health checks read, opens: TF Serving's
    warm-up readies the model; this readies the Python around it (decoding, the handler, the
    encoders), so the first caller's request costs what later ones do."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    host = "127.0.0.1" if args.listen_address in ("0.0.0.0", "") else args.listen_address
    target = f"{host}:{args.port}" if args.port else f"unix:{args.grpc_socket_path}"
    credentials = args.use_alts_credentials or args.ssl_config_file
    if credentials:
        return  # a secure port takes no insecure self-call; the models themselves are warm
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for request in core.warmup_predicts():
            for _ in range(REQUEST_PATH_WARMUP_CALLS):
                try:
                    stub.Predict(request, timeout=60)
                except grpc.RpcError as error:
                    log.warning("warm-up through gRPC: %s version %d: %s", request.model_spec.name,
                                request.model_spec.version.value, error.details())
                    break


def _every(seconds: int, action, stop: threading.Event) -> None:
    while not stop.wait(seconds):
        try:
            action()
        except Exception:  # noqa: BLE001 - a bad poll must not stop later ones
            log.exception("poll failed")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=os.environ.get("MODEL_SERVER_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s] %(message)s")
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"TensorFlow ModelServer: {VERSION}")
        return 0
    skipped = flags.not_applicable_given(argv)
    if skipped:
        log.warning("accepted and ignored (they configure what this CPU Python server has not got): %s",
                    ", ".join(f"--{name}" for name in skipped))
    flags.check(args)
    metrics_path = read_monitoring_config(Path(args.monitoring_config_file)) if args.monitoring_config_file else None
    if metrics_path and not args.rest_api_port:
        raise SystemExit("model_server: Prometheus metrics are served on the REST port; set --rest_api_port")
    batching = None
    if args.enable_batching:
        batching = (read_batching_parameters(Path(args.batching_parameters_file))
                    if args.batching_parameters_file else BatchingParameters())
        log.info("batching enabled: %s", batching)
    if args.model_config_file:
        _parse_text(Path(args.model_config_file), model_server_config_pb2.ModelServerConfig(),
                    "tensorflow.serving.ModelServerConfig")
    configure_tensorflow(args)

    started = time.monotonic()
    core = ServerCore(args.rebase_model_base_path, batching, args.allow_version_labels_for_unavailable_models,
                      LoadOptions.from_flags(args))
    config = load_config(args)
    try:
        core.apply_config(config)
    except ServingError as error:
        log.error("cannot apply the model config: %s", error.message)
        return 1
    grpc_server = start_grpc_server(core, GrpcOptions.from_flags(args))
    if args.enable_model_warmup:
        warm_request_path(core, args)
    rest_server = None
    if args.rest_api_port:
        rest_server = start_rest_server(core, args.listen_address, args.rest_api_port, metrics_path,
                                        args.rest_api_num_threads, args.rest_api_timeout_in_ms / 1000,
                                        cors=args.rest_api_enable_cors_support)
        log.info("Exporting HTTP/REST API at:%s:%d ...", args.listen_address, args.rest_api_port)
    log.info("ready in %.1fs", time.monotonic() - started)

    stop = threading.Event()
    if args.file_system_poll_wait_seconds > 0:
        threading.Thread(target=_every, args=(args.file_system_poll_wait_seconds, core.poll_file_system, stop),
                         daemon=True, name="fs-poll").start()
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        def reload_config() -> None:
            nonlocal config
            fresh = read_model_server_config(Path(args.model_config_file))
            if fresh != config:
                log.info("model config changed; applying it")
                core.apply_config(fresh)
                config = fresh
        threading.Thread(target=_every, args=(args.model_config_file_poll_wait_seconds, reload_config, stop),
                         daemon=True, name="config-poll").start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    if rest_server:
        rest_server.shutdown()
    grpc_server.stop(grace=5).wait()
    core.stop()
    return 0
