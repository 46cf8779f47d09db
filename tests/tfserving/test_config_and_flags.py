"""Configuration files and command-line flags, as TF Serving reads them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model_server.config import BatchingParameters, read_batching_parameters, read_model_server_config
from model_server.main import build_parser
from model_server.monitoring import read_monitoring_config
from tests.conftest import MODEL_REPOSITORY, REPO_ROOT, ROSTER


def test_committed_models_config_lists_every_roster_model_at_container_paths():
    config = read_model_server_config(MODEL_REPOSITORY / "models.config")
    models = {m.name: m for m in config.model_config_list.config}
    assert set(models) == {service.model for service in ROSTER}
    for name, model in models.items():
        assert model.base_path == f"/models/{name}"
        assert model.model_platform == "tensorflow"
        assert (MODEL_REPOSITORY / name / "1" / "saved_model.pb").exists()


def test_committed_batching_config_parses():
    params = read_batching_parameters(MODEL_REPOSITORY / "batching.config")
    assert params.pad_variable_length_inputs  # `words` needs it
    assert params.max_batch_size >= 32
    assert params.num_batch_threads >= 1


def test_batching_parser_reads_every_field(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\nnum_batch_threads { value: 2 }\n"
        "max_enqueued_batches { value: 5 }\npad_variable_length_inputs: true\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
    )
    assert read_batching_parameters(path) == BatchingParameters(8, 1000, 2, 5, True, (4, 8))


@pytest.mark.parametrize(("reader", "text"), [
    (read_batching_parameters, "max_batch_size { value: 8 }\nno_such_knob { value: 1 }\n"),
    (read_batching_parameters, "max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n"),
    (read_monitoring_config, "prometheus_config { enable: maybe }"),
    (read_monitoring_config, "prometheus_config { port: 9 }"),
    (read_monitoring_config, "something_else { }"),
])
def test_config_parsers_refuse_what_tf_serving_would(tmp_path, reader, text):
    path = tmp_path / "some.config"
    path.write_text(text)
    with pytest.raises(ValueError):
        reader(path)


def test_models_config_with_another_platform_is_refused(tmp_path):
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "x" base_path: "/m/x" model_platform: "onnx" } }')
    with pytest.raises(ValueError, match="platform"):
        read_model_server_config(path)


def test_supported_flags_parse_in_tf_serving_spelling():
    args = build_parser().parse_args([
        "--port=9000", "--rest_api_port=9001", "--model_config_file=/x/models.config",
        "--model_config_file_poll_wait_seconds=5", "--file_system_poll_wait_seconds=2",
        "--enable_batching=true", "--batching_parameters_file=/x/b.config",
        "--allow_version_labels_for_unavailable_models",
    ])
    assert (args.port, args.rest_api_port, args.enable_batching) == (9000, 9001, True)
    assert args.allow_version_labels_for_unavailable_models is True


def test_an_unknown_flag_is_an_error_not_ignored():
    result = subprocess.run(
        [sys.executable, "-m", "model_server", "--ssl_config=/x", "--model_base_path=/m"],
        capture_output=True, text=True, cwd=REPO_ROOT / "tfserving", timeout=60,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --ssl_config" in result.stderr


def test_the_limit_flags_parse_in_tf_serving_spelling():
    args = build_parser().parse_args(["--grpc_max_threads=8", "--rest_api_num_threads=4",
                                      "--rest_api_timeout_in_ms=500"])
    assert (args.grpc_max_threads, args.rest_api_num_threads, args.rest_api_timeout_in_ms) == (8, 4, 500)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--grpc_max_threads=0"])


def test_remote_config_reloads_are_our_own_opt_in_flag_and_documented():
    assert build_parser().parse_args(["--allow_remote_reload_config"]).allow_remote_reload_config is True
    assert build_parser().parse_args([]).allow_remote_reload_config is False, "reloads from this machine only"
    assert "(ours) accept HandleReloadConfigRequest from any peer" in " ".join(
        build_parser().format_help().split())
    assert "--allow_remote_reload_config" in (REPO_ROOT / "tfserving" / "README.md").read_text()
