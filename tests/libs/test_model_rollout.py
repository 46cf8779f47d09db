"""model_rollout's pieces without processes: the state file and how a worker reads it, the
thresholds, models.config edits, warm-up records, signature comparison, the evidence read from
metrics; and service_kit's side of a rollout (RolloutCalls) against a fake model server."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from model_rollout import evidence, models_config, signatures, warmup_records
from model_rollout.settings import RolloutSettings
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from service_kit.core import metrics
from service_kit.core import rollout_state as state
from service_kit.core.rollout import Comparison, RolloutCalls
from tests.conftest import REPO_ROOT
from tfserving_client import ModelServerError, PredictResult


def test_a_worker_sees_a_new_state_and_keeps_the_last_one_it_could_read(tmp_path):
    watcher = state.Watcher(tmp_path, "lstm")
    assert watcher.current(now=0.0) is None
    state.write(tmp_path, state.Rollout("lstm", live=1, candidate=2, stage="preflight", pinned=1))
    assert watcher.current(now=0.1) is None  # looked again only every WATCH_SECONDS
    assert watcher.current(now=1.0).pinned == 1
    state.state_file(tmp_path, "lstm").write_text("{half a file")
    assert watcher.current(now=2.0).pinned == 1, "an unreadable file must not unpin the live version"
    state.state_file(tmp_path, "lstm").unlink()
    assert watcher.current(now=3.0) is None


def test_a_rollout_nobody_watches_sends_the_candidate_nothing():
    rollout = state.Rollout("lstm", 1, 2, "canary", pinned=1, shadow_percent=25, canary_percent=5)
    assert (rollout.shadow_share(), rollout.canary_share()) == (0.25, 0.05)
    stale = rollout.heartbeat + state.HEARTBEAT_STALE_SECONDS + 1
    assert (rollout.shadow_share(stale), rollout.canary_share(stale)) == (0.0, 0.0)
    rollout.record("rolled_back", "why")
    assert (rollout.active, rollout.canary_share()) == (False, 0.0)


def test_thresholds_come_from_the_environment():
    settings = RolloutSettings.from_env({"ROLLOUT_CANARY_STEPS": "1, 10", "ROLLOUT_MIN_AGREEMENT": "0.9"})
    assert settings.canary_percents == [1.0, 10.0] and settings.min_agreement == 0.9
    with pytest.raises(ValueError, match="ROLLOUT_STEP_SECONDS"):
        RolloutSettings.from_env({"ROLLOUT_STEP_SECONDS": "soon"})
    with pytest.raises(ValueError, match="ROLLOUT_CANARY_STEPS"):
        _ = RolloutSettings(canary_steps="5,100").canary_percents


def test_models_config_serves_the_versions_given_and_keeps_its_header(tmp_path):
    path = tmp_path / "models.config"
    path.write_text((REPO_ROOT / "tfserving" / "models" / "models.config").read_text())
    config = models_config.load(path)
    assert models_config.pinned_versions(config, "lstm") is None  # `latest`: nothing to roll out
    models_config.save(path, models_config.serve(config, "lstm", [2, 1], {"stable": 1, "canary": 2}))
    text = path.read_text()
    assert text.startswith("# TF Serving model configuration")
    again = models_config.load(path)
    assert models_config.pinned_versions(again, "lstm") == [1, 2]
    assert dict(models_config.entry(again, "lstm").version_labels) == {"stable": 1, "canary": 2}
    assert models_config.pinned_versions(again, "cv_sod") is None, "the other model is left alone"
    assert models_config.base_path(again, "lstm", tmp_path) == tmp_path / "lstm"


def test_the_warm_up_records_read_without_tensorflow():
    requests = warmup_records.predict_requests(REPO_ROOT / "tfserving" / "models" / "lstm" / "1")
    assert len(requests) == 2 and set(requests[0].inputs) == {"words", "nwords"}
    assert warmup_records.predict_requests(REPO_ROOT / "tfserving") == []


def _metadata(inputs: dict[str, tuple[str, int]], outputs: dict[str, tuple[str, int]]) -> dict:
    def side(tensors):
        return {name: {"dtype": dtype, "tensor_shape": {"dim": [{"size": "-1"}] * rank}}
                for name, (dtype, rank) in tensors.items()}
    return {"metadata": {"signature_def": {"signature_def": {"serving_default": {
        "inputs": side(inputs), "outputs": side(outputs)}}}}}


def test_a_signature_change_a_caller_would_notice_is_named():
    live = _metadata({"words": ("DT_STRING", 2), "nwords": ("DT_INT32", 1)}, {"softmax": ("DT_FLOAT", 2)})
    assert signatures.differences(live, live) == []
    more_outputs = _metadata({"words": ("DT_STRING", 2), "nwords": ("DT_INT32", 1)},
                             {"softmax": ("DT_FLOAT", 2), "logits": ("DT_FLOAT", 2)})
    assert signatures.differences(live, more_outputs) == []
    renamed = _metadata({"tokens": ("DT_STRING", 2), "nwords": ("DT_INT64", 1)}, {"softmax": ("DT_FLOAT", 1)})
    found = signatures.differences(live, renamed)
    assert any("'words' is gone" in f for f in found) and any("'tokens' is new" in f for f in found)
    assert any("DT_INT32 became DT_INT64" in f for f in found) and any("rank 2 became 1" in f for f in found)
    assert signatures.differences(live, live, "other") == ["the candidate has no signature 'other'"]


def test_evidence_sums_what_concerns_the_candidate():
    registry = CollectorRegistry()
    calls = Counter("rollout_calls_total", "", ["model", "version", "role", "outcome"], registry=registry)
    compared = Counter("rollout_shadow_compared_total", "", ["model", "version", "agreed"], registry=registry)
    seconds = Histogram("rollout_call_seconds", "", ["model", "role"], registry=registry)
    calls.labels("lstm", "2", "canary", "ok").inc(8)
    calls.labels("lstm", "2", "canary", "error").inc(2)
    calls.labels("cv_sod", "2", "canary", "error").inc(5)  # another model's
    compared.labels("lstm", "2", "true").inc(9)
    compared.labels("lstm", "2", "false").inc(1)
    compared.labels("lstm", "3", "false").inc(50)  # another candidate's
    seconds.labels("lstm", "live").observe(0.002)
    seconds.labels("lstm", "canary").observe(0.006)
    seen = evidence.read_metrics(generate_latest(registry).decode(), "lstm", 2)
    assert (seen.canary_answers, seen.canary_errors, seen.canary_error_rate) == (8, 2, 0.2)
    assert (seen.compared, seen.agreement) == (10, 0.9)
    assert seen.latency_factor() == pytest.approx(3.0)
    assert (seen - seen).compared == 0 and (evidence.Evidence() - seen).canary_errors == 0


class FakeModelServer:
    """Answers `ask` as a model server with a live and a candidate version would."""

    def __init__(self, failing: set[int] = frozenset()):
        self.asked: list[int | None] = []
        self.failing = failing

    def __call__(self, inputs, version, deadline):
        self.asked.append(version)
        if version in self.failing:
            raise ModelServerError(grpc.StatusCode.INVALID_ARGUMENT, "assertion failed")
        value = np.asarray(inputs["x"], dtype=float) * (10 if version == 2 else 1)
        return PredictResult({"y": value}, "m", version)


def _calls(server: FakeModelServer, tmp_path, model: str, waiting: int = 0) -> RolloutCalls:
    return RolloutCalls(model, str(tmp_path), server, lambda outputs, count: list(outputs["y"]),
                        lambda live, candidate: Comparison(live == candidate, abs(live - candidate)),
                        waiting=lambda: waiting)


def _count(metric, **labels) -> float:
    return metric.labels(**labels)._value.get()


def test_a_failed_canary_call_is_answered_by_the_live_version(tmp_path):
    server = FakeModelServer(failing={2})
    calls = _calls(server, tmp_path, "fake_canary")
    rollout = state.Rollout("fake_canary", 1, 2, "canary", pinned=1, canary_percent=99.999)
    results, version = calls.predict(rollout, {"x": np.array([1.0, 2.0])}, 2, time.monotonic() + 1)
    assert (list(results), version, server.asked) == ([1.0, 2.0], 1, [2, 1])
    assert _count(metrics.ROLLOUT_CALLS, model="fake_canary", version="2", role="canary", outcome="error") == 1


def test_shadow_compares_off_the_callers_path_and_is_shed_first(tmp_path):
    server = FakeModelServer()
    calls = _calls(server, tmp_path, "fake_shadow")
    rollout = state.Rollout("fake_shadow", 1, 2, "shadow", pinned=1, shadow_percent=99.999)
    results, version = calls.predict(rollout, {"x": np.array([0.0, 3.0])}, 2, time.monotonic() + 1)
    assert (list(results), version) == ([0.0, 3.0], 1)
    deadline = time.monotonic() + 5
    while _count(metrics.ROLLOUT_SHADOW_COMPARED, model="fake_shadow", version="2", agreed="false") < 1:
        assert time.monotonic() < deadline, "the shadow comparison never came"
        time.sleep(0.01)
    assert _count(metrics.ROLLOUT_SHADOW_COMPARED, model="fake_shadow", version="2", agreed="true") == 1  # 0 * 10
    assert _count(metrics.ROLLOUT_SHADOW_DISTANCE, model="fake_shadow", version="2") == 27
    busy = _calls(server, tmp_path, "fake_shed", waiting=3)
    busy.predict(state.Rollout("fake_shed", 1, 2, "shadow", pinned=1, shadow_percent=99.999),
                 {"x": np.array([1.0])}, 1, time.monotonic() + 1)
    assert _count(metrics.ROLLOUT_SHADOW_SHED, model="fake_shed", reason="requests_waiting") == 1


def test_the_live_version_is_asked_by_number_while_the_candidate_is_loaded(tmp_path):
    server = FakeModelServer()
    calls = _calls(server, tmp_path, "fake_pin")
    for stage, pinned in (("preflight", 1), ("rolled_back", 1), ("promoted", None)):
        calls.predict(state.Rollout("fake_pin", 1, 2, stage, pinned=pinned), {"x": np.array([1.0])}, 1,
                      time.monotonic() + 1)
    assert server.asked == [1, 1, None]
