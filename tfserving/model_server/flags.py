"""Every flag of `tensorflow_model_server` (its main.cc), with TF Serving's defaults.

A flag is one of three kinds. HONOURED: this server does what TF Serving does with it.
NOT_APPLICABLE: it configures what a CPU Python server has not got (GPUs, TPUs, TF Lite,
other platforms, XLA, the profiler); it is accepted, so scripts written for TF Serving start
unchanged, and named in one warning at start. OURS: three flags TF Serving has not got:
`--rebase_model_base_path` maps the container paths in models.config (e.g. /models) onto a
local folder, `--listen_address` keeps local mode on loopback (TF Serving listens on all
interfaces), and `--allow_remote_reload_config` accepts ModelService.HandleReloadConfigRequest
from any peer (by default only from this machine: an empty config unloads every model).
A flag TF Serving does not know is refused (exit 2): it is a typo, never silently ignored.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HONOURED, NOT_APPLICABLE, OURS = "honoured", "not applicable", "ours"
# TF Serving sizes its thread pools at 4 per CPU; ours are fixed (grpc_api.py says why).
DEFAULT_GRPC_MAX_THREADS = 16
DEFAULT_REST_NUM_THREADS = 16
DEFAULT_REST_TIMEOUT_MS = 30000


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int_at_least(low: int, high: int | None = None, what: str = ""):
    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what or f'{low} or more'}, got {text!r}")
        return value
    return parse


_positive = _int_at_least(1, what="a positive number")
_non_negative = _int_at_least(0)
_port = _int_at_least(0, 65535, "a port (0-65535)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _rebase(text: str) -> tuple[str, Path]:
    prefix, sep, local = text.partition("=")
    if not sep or not prefix.startswith("/") or not local:
        raise argparse.ArgumentTypeError("expected CONTAINER_PREFIX=LOCAL_DIR, e.g. /models=./tfserving/models")
    return prefix, Path(local).resolve()


def channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """`grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb`: integers as integers, as
    TF Serving passes them (server.cc: parseGrpcChannelArgs, then SimpleAtoi)."""
    options = []
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        try:
            options.append((key, int(value)))
        except ValueError:
            options.append((key, value))
    return options


# name, kind, type, default, help. Bool flags take `--flag`, `--flag=true` or `--flag=false`.
FLAGS: list[tuple[str, str, object, object, str]] = [
    ("port", HONOURED, _port, 8500, "gRPC TCP port (0: no TCP port; then --grpc_socket_path is needed)"),
    ("grpc_socket_path", HONOURED, str, "", "also serve gRPC on this Unix socket"),
    ("rest_api_port", HONOURED, _port, 0, "REST port (0: no REST API)"),
    ("rest_api_num_threads", HONOURED, _positive, DEFAULT_REST_NUM_THREADS, "REST connections served at once"),
    ("rest_api_timeout_in_ms", HONOURED, _positive, DEFAULT_REST_TIMEOUT_MS,
     "REST calls: the wait for a request, its arrival, and a Predict's wait for the model"),
    ("rest_api_enable_cors_support", HONOURED, _bool, False, "CORS headers on REST answers, and preflights"),
    ("enable_batching", HONOURED, _bool, False, "batch requests to each model version"),
    ("allow_version_labels_for_unavailable_models", HONOURED, _bool, False,
     "labels may name versions not loaded yet"),
    ("batching_parameters_file", HONOURED, str, "", "text BatchingParameters"),
    ("enable_per_model_batching_parameters", HONOURED, _bool, False,
     "a version's own batching_params.pbtxt (in its folder) replaces --batching_parameters_file's queue "
     "settings for it"),
    ("model_config_file", HONOURED, str, "", "text ModelServerConfig (models.config)"),
    ("model_config_file_poll_wait_seconds", HONOURED, int, 0, "re-read --model_config_file this often (0: once)"),
    ("model_name", HONOURED, str, "default", "single-model mode: the model's name"),
    ("model_base_path", HONOURED, str, "", "single-model mode: the model's base path"),
    ("num_load_threads", HONOURED, _non_negative, 0, "versions loaded at once (0: one after another)"),
    ("num_unload_threads", HONOURED, _non_negative, 0, "accepted: unloading drops a reference, at once"),
    ("max_num_load_retries", HONOURED, _non_negative, 5, "retries of a failed load before giving up"),
    ("load_retry_interval_micros", HONOURED, int, 60_000_000, "wait between load retries (negative: none)"),
    ("file_system_poll_wait_seconds", HONOURED, int, 1,
     "look for new/removed version folders this often (0: once at start; negative: never)"),
    ("flush_filesystem_caches", NOT_APPLICABLE, _bool, True, "TensorFlow's file system caches (GCS, S3)"),
    ("tensorflow_session_parallelism", HONOURED, _non_negative, 0, "threads for both TensorFlow pools (0: auto)"),
    ("tensorflow_session_config_file", HONOURED, str, "",
     "text ConfigProto: its thread pool sizes are used, other fields warned about"),
    ("tensorflow_intra_op_parallelism", HONOURED, _non_negative, 0, "threads within one op (0: auto)"),
    ("tensorflow_inter_op_parallelism", HONOURED, _non_negative, 0, "ops run at once (0: auto)"),
    ("use_alts_credentials", HONOURED, _bool, False, "gRPC over Google ALTS"),
    ("ssl_config_file", HONOURED, str, "", "text SSLConfig: gRPC over TLS"),
    ("platform_config_file", NOT_APPLICABLE, str, "", "other serving platforms"),
    ("per_process_gpu_memory_fraction", NOT_APPLICABLE, _fraction, 0.0, "GPU memory"),
    ("saved_model_tags", HONOURED, str, "", "the MetaGraph to load, by its tags (default: serve)"),
    ("grpc_channel_arguments", HONOURED, channel_arguments, [], "gRPC server arguments, KEY=VALUE,..."),
    ("grpc_max_threads", HONOURED, _positive, DEFAULT_GRPC_MAX_THREADS, "gRPC calls served at once"),
    ("enable_model_warmup", HONOURED, _bool, True,
     "replay assets.extra/tf_serving_warmup_requests before a version takes traffic"),
    ("num_request_iterations_for_warmup", HONOURED, _non_negative, 0, "replay each warm-up record this often"),
    ("version", HONOURED, _bool, False, "print the version and exit"),
    ("monitoring_config_file", HONOURED, str, "", "text MonitoringConfig: Prometheus metrics on the REST port"),
    ("remove_unused_fields_from_bundle_metagraph", NOT_APPLICABLE, _bool, True, "the C++ MetaGraph's memory"),
    ("prefer_tflite_model", NOT_APPLICABLE, _bool, False, "TF Lite"),
    ("num_tflite_pools", NOT_APPLICABLE, int, 0, "TF Lite"),
    ("num_tflite_interpreters_per_pool", NOT_APPLICABLE, int, 1, "TF Lite"),
    ("enable_signature_method_name_check", HONOURED, _bool, False,
     "Classify/Regress need their signature's method_name"),
    ("xla_cpu_compilation_enabled", NOT_APPLICABLE, _bool, False, "XLA JIT"),
    ("xla_gpu_compilation_enabled", NOT_APPLICABLE, _bool, False, "XLA JIT"),
    ("enable_profiler", NOT_APPLICABLE, _bool, True, "TensorFlow's profiler service"),
    ("thread_pool_factory_config_file", NOT_APPLICABLE, str, "", "custom C++ thread pools"),
    ("mixed_precision", NOT_APPLICABLE, str, "", "TPU mixed precision"),
    ("skip_initialize_tpu", NOT_APPLICABLE, _bool, False, "TPU"),
    ("enable_grpc_healthcheck_service", HONOURED, _bool, False, "the standard grpc.health.v1 service"),
    ("enable_serialization_as_tensor_content", HONOURED, _bool, False,
     "Predict outputs as packed tensor_content instead of the typed *_val fields"),
    ("listen_address", OURS, str, "0.0.0.0", "address both APIs bind; local mode uses 127.0.0.1"),
    ("rebase_model_base_path", OURS, _rebase, None,
     "CONTAINER_PREFIX=LOCAL_DIR for base paths in models.config; a base path may not leave LOCAL_DIR with '..'"),
    ("allow_remote_reload_config", OURS, _bool, False,
     "accept HandleReloadConfigRequest from any peer, not only from this machine"),
]
KINDS = {name: kind for name, kind, *_ in FLAGS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorflow_model_server", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, kind, kind_type, default, text in FLAGS:
        label = "" if kind == HONOURED else f"({kind}) "
        if kind_type is _bool:
            parser.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default, help=label + text)
        else:
            parser.add_argument(f"--{name}", type=kind_type, default=default, help=label + text)
    return parser


def given(argv: list[str]) -> set[str]:
    """The flags named on the command line (whatever their value)."""
    names = set()
    for arg in argv:
        if arg.startswith("--"):
            names.add(arg[2:].split("=", 1)[0])
    return names & set(KINDS)


def not_applicable_given(argv: list[str]) -> list[str]:
    return sorted(name for name in given(argv) if KINDS[name] == NOT_APPLICABLE)


def check(args: argparse.Namespace) -> None:
    """TF Serving's start-up checks (server.cc: BuildAndStart), with its messages."""
    def fail(message: str) -> None:
        raise SystemExit(f"tensorflow_model_server: {message}")

    if args.port == 0 and not args.grpc_socket_path:
        fail("At least one of server_options.grpc_port or server_options.grpc_socket_path must be set.")
    if args.use_alts_credentials and args.ssl_config_file:
        fail("Either use_alts_credentials must be false or ssl_config_file must be empty.")
    if not args.model_base_path and not args.model_config_file:
        fail("Both server_options.model_base_path and server_options.model_config_file are empty!")
    if args.batching_parameters_file and not args.enable_batching:
        fail("server_options.batching_parameters_file is set without setting "
             "server_options.enable_batching to true.")
    if args.tensorflow_session_parallelism and args.tensorflow_intra_op_parallelism \
            and args.tensorflow_inter_op_parallelism:
        fail("Either configure server_options.tensorflow_session_parallelism or "
             "(server_options.tensorflow_intra_op_parallelism, server_options.tensorflow_inter_op_parallelism) "
             "separately. You cannot configure all.")
    if args.rest_api_port and args.rest_api_port == args.port:
        fail("server_options.http_port cannot be same as grpc_port.")
    for name in ("model_config_file", "batching_parameters_file", "monitoring_config_file", "ssl_config_file",
                 "tensorflow_session_config_file"):
        path = getattr(args, name)
        if path and not os.path.isfile(path):
            fail(f"--{name}: {path}: No such file")
