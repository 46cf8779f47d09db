"""Command line: the subset of `tensorflow_model_server` flags this server implements.

A flag TF Serving has but this server does not implement is rejected (argparse exits 2),
never silently ignored. Three flags are our own: `--rebase_model_base_path` maps the container
paths in models.config (e.g. /models) onto the local checkout, `--listen_address` keeps local
mode on loopback (TF Serving listens on all interfaces), and `--allow_remote_reload_config`
accepts ModelService.HandleReloadConfigRequest from any peer (by default only from this machine:
an empty config unloads every model).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from tensorflow_serving.config import model_server_config_pb2

from model_server.config import read_batching_parameters, read_model_server_config
from model_server.core import ServerCore
from model_server.errors import ServingError
from model_server.grpc_api import DEFAULT_GRPC_MAX_THREADS, start_grpc_server
from model_server.monitoring import read_monitoring_config
from model_server.rest_api import DEFAULT_NUM_THREADS, DEFAULT_TIMEOUT_SECONDS, start_rest_server

log = logging.getLogger("model_server")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _rebase(text: str) -> tuple[str, Path]:
    prefix, sep, local = text.partition("=")
    if not sep or not prefix.startswith("/") or not local:
        raise argparse.ArgumentTypeError("expected CONTAINER_PREFIX=LOCAL_DIR, e.g. /models=./tfserving/models")
    return prefix, Path(local).resolve()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model_server", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--port", type=int, default=8500, help="gRPC port")
    add("--rest_api_port", type=int, default=0, help="REST port (0: no REST API, as TF Serving)")
    add("--rest_api_num_threads", type=_positive, default=DEFAULT_NUM_THREADS,
        help="REST connections served at once; more wait (TF Serving's default: 4 per CPU)")
    add("--rest_api_timeout_in_ms", type=_positive, default=int(DEFAULT_TIMEOUT_SECONDS * 1000),
        help="REST calls: the wait for a request, its arrival, and a Predict's wait for the model")
    add("--grpc_max_threads", type=_positive, default=DEFAULT_GRPC_MAX_THREADS,
        help="gRPC calls served at once, each holding up to a 32 MiB message (TF Serving's default: 4 per CPU)")
    add("--model_config_file", default="", help="models.config (text ModelServerConfig)")
    add("--model_name", default="default", help="single-model mode: the model's name")
    add("--model_base_path", default="", help="single-model mode: the model's base path")
    add("--model_config_file_poll_wait_seconds", type=int, default=0,
        help="re-read --model_config_file this often (0: read once)")
    add("--file_system_poll_wait_seconds", type=int, default=1,
        help="look for new/removed version folders this often (0: once at start)")
    add("--enable_batching", type=_bool, nargs="?", const=True, default=False)
    add("--batching_parameters_file", default="", help="text BatchingParameters")
    add("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True, default=False)
    add("--monitoring_config_file", default="", help="text MonitoringConfig: Prometheus metrics on the REST port")
    add("--listen_address", default="0.0.0.0",
        help="(this server only) address both APIs bind; local mode uses 127.0.0.1")
    add("--rebase_model_base_path", type=_rebase, default=None,
        help="(this server only) CONTAINER_PREFIX=LOCAL_DIR for base paths in models.config; "
             "a base path may not leave LOCAL_DIR with '..'")
    add("--allow_remote_reload_config", type=_bool, nargs="?", const=True, default=False,
        help="(this server only) accept HandleReloadConfigRequest from any peer, not only from this machine")
    return parser


def load_config(args: argparse.Namespace) -> model_server_config_pb2.ModelServerConfig:
    if args.model_config_file:
        return read_model_server_config(Path(args.model_config_file))
    if not args.model_base_path:
        raise SystemExit("model_server: give --model_config_file or --model_base_path")
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = args.model_name, args.model_base_path, "tensorflow"
    return config


def _every(seconds: int, action, stop: threading.Event) -> None:
    while not stop.wait(seconds):
        try:
            action()
        except Exception:  # noqa: BLE001 - a bad poll must not stop later ones
            log.exception("poll failed")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("MODEL_SERVER_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s] %(message)s")
    args = build_parser().parse_args(argv)
    if args.batching_parameters_file and not args.enable_batching:
        raise SystemExit("model_server: --batching_parameters_file needs --enable_batching")
    metrics_path = read_monitoring_config(Path(args.monitoring_config_file)) if args.monitoring_config_file else None
    if metrics_path and not args.rest_api_port:
        raise SystemExit("model_server: Prometheus metrics are served on the REST port; set --rest_api_port")
    batching = None
    if args.enable_batching:
        from model_server.config import BatchingParameters

        batching = (read_batching_parameters(Path(args.batching_parameters_file))
                    if args.batching_parameters_file else BatchingParameters())
        log.info("batching enabled: %s", batching)

    started = time.monotonic()
    core = ServerCore(args.rebase_model_base_path, batching, args.allow_version_labels_for_unavailable_models)
    config = load_config(args)
    try:
        core.apply_config(config)
    except ServingError as error:
        log.error("cannot apply the model config: %s", error.message)
        return 1
    grpc_server = start_grpc_server(core, args.listen_address, args.port, args.grpc_max_threads,
                                    args.allow_remote_reload_config)
    log.info("Running gRPC ModelServer at %s:%d ...", args.listen_address, args.port)
    rest_server = None
    if args.rest_api_port:
        rest_server = start_rest_server(core, args.listen_address, args.rest_api_port, metrics_path,
                                        args.rest_api_num_threads, args.rest_api_timeout_in_ms / 1000)
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
