"""--monitoring_config_file: Prometheus metrics under TF Serving's names on the REST port."""

from __future__ import annotations

import re

import pytest
import requests

from model_server.monitoring import MAX_MODEL_NAME_CHARS, Metrics, read_monitoring_config
from tests.tfserving.test_grpc_conformance import lstm_request


def test_the_committed_config_enables_prometheus_at_tf_servings_path():
    from tests.conftest import MODEL_REPOSITORY

    assert read_monitoring_config(MODEL_REPOSITORY / "monitoring.config") == "/monitoring/prometheus/metrics"


@pytest.mark.parametrize(("text", "expected"), [
    ("prometheus_config { enable: true }", "/monitoring/prometheus/metrics"),
    ('prometheus_config { enable: true, path: "/m" }', "/m"),
    ("prometheus_config { enable: false }", None),
    ("", None),
])
def test_config_parsing(tmp_path, text, expected):
    path = tmp_path / "monitoring.config"
    path.write_text(text)
    assert read_monitoring_config(path) == expected


def test_latency_histogram_is_cumulative_in_microseconds():
    metrics = Metrics()
    metrics.observe("lstm", "Predict", "GRPC", "OK", 0.002)
    metrics.observe("lstm", "Predict", "GRPC", "INVALID_ARGUMENT", 20.0)
    text = metrics.exposition()
    assert ':tensorflow:serving:request_count{model_name="lstm",status="OK"} 1' in text
    assert ':tensorflow:serving:request_count{model_name="lstm",status="INVALID_ARGUMENT"} 1' in text
    buckets = [float(v) for v in re.findall(r'request_latency_bucket\{[^}]*\} (\S+)', text)]
    assert buckets == sorted(buckets) and buckets[-1] == 2
    labels = 'model_name="lstm",API="Predict",entrypoint="GRPC"'
    assert f":tensorflow:serving:request_latency_sum{{{labels}}} 20002000.0" in text


def test_counts_and_sums_are_exact_past_six_digits():
    """`:g` printed 1234567 requests as 1.23457e+06 and dropped a sum's microseconds."""
    metrics = Metrics()
    metrics.observe("lstm", "Predict", "GRPC", "OK", 0.001)
    buckets = metrics._latency[("lstm", "Predict", "GRPC")]
    buckets[0], buckets[-2], buckets[-1] = 1_234_566.0, 12_345_678.25, 1_234_567.0  # + the one observed
    text = metrics.exposition()
    labels = 'model_name="lstm",API="Predict",entrypoint="GRPC"'
    assert f":tensorflow:serving:request_latency_count{{{labels}}} 1234567" in text
    assert f":tensorflow:serving:request_latency_sum{{{labels}}} 12345678.25" in text
    assert f':tensorflow:serving:request_latency_bucket{{{labels},le="+Inf"}} 1234567' in text


def test_the_server_counts_predict_calls(serving, prediction_stub):
    if not serving.rest_url:
        pytest.skip("no REST URL for this server")
    prediction_stub.Predict(lstm_request(), timeout=10)
    text = requests.get(f"{serving.rest_url}/monitoring/prometheus/metrics", timeout=5).text
    count = re.search(r':tensorflow:serving:request_count\{model_name="lstm",status="OK"\} (\S+)', text)
    assert count and float(count.group(1)) >= 1
    assert 'request_latency_count{model_name="lstm",API="Predict",entrypoint="GRPC"}' in text


def test_long_model_names_are_counted_as_other():
    """Issue 33: 1,000 names of several MB each were kept as labels, in memory and in every scrape."""
    metrics = Metrics()
    for index in range(50):
        metrics.observe(f"{index}" + "x" * 1_000_000, "Predict", "GRPC", "NOT_FOUND", 0.001)
    metrics.observe("y" * MAX_MODEL_NAME_CHARS, "Predict", "GRPC", "NOT_FOUND", 0.001)
    text = metrics.exposition()
    assert len(text) < 100_000
    assert ':tensorflow:serving:request_count{model_name="(other)",status="NOT_FOUND"} 50' in text
    assert f'model_name="{"y" * MAX_MODEL_NAME_CHARS}"' in text


def test_callers_model_names_are_escaped_and_bounded(monkeypatch):
    monkeypatch.setattr("model_server.monitoring.MAX_LABEL_SETS", 3)
    metrics = Metrics()
    metrics.observe('a"b\nc', "Predict", "GRPC", "NOT_FOUND", 0.001)
    for name in ("x", "y", "z", "w"):
        metrics.observe(name, "Predict", "GRPC", "NOT_FOUND", 0.001)
    text = metrics.exposition()
    assert 'model_name="a\\"b\\nc"' in text and "\nc\"" not in text
    assert 'model_name="z"' not in text and 'model_name="w"' not in text
    assert ':tensorflow:serving:request_count{model_name="(other)",status="NOT_FOUND"} 2' in text
