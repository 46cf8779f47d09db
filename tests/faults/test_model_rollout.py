"""Model rollouts under a steady load, local mode (issue 37): a candidate version of `lstm` goes
through `python -m model_rollout` (what `./stack rollout` runs) against a real model server and a
real text-api instance, while 4 clients call /lstm. Each kind of candidate must end where it
should, with no failed request, and every reply's `model_version` tells who answered.

The rollout's pace is quickened (3 s canary steps of 20 answers, 60 shadow comparisons); its
thresholds are the defaults."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from model_rollout import controller, models_config
from model_rollout.controller import ModelServer

from service_kit.core import rollout_state as state
from tests.conftest import REPO_ROOT, copy_repository, start_model_server, wait_until
from tests.faults.load import HttpLoad, record_fault
from tests.faults.rollout_candidates import write_candidate
from tests.monitoring.test_monitoring import dashboard_queries, exported_names, metric_names
from tests.services.conftest import start_api

pytestmark = pytest.mark.slow

QUICKER = {"ROLLOUT_STEP_SECONDS": "3", "ROLLOUT_STEP_MIN_ANSWERS": "20", "ROLLOUT_SHADOW_MIN_COMPARED": "60",
           "ROLLOUT_STAGE_TIMEOUT_SECONDS": "60", "ROLLOUT_PREFLIGHT_ROUNDS": "10"}


def MODEL_SERVER_FLAGS(repository: Path) -> list[str]:  # noqa: N802 - a constant of the repository
    return ["--enable_batching", f"--batching_parameters_file={repository / 'batching.config'}"]


class Stack:
    def __init__(self, repository: Path, model_server, api) -> None:
        self.repository, self.model_server, self.api = repository, model_server, api
        self.server = self.base = None  # the model server's process, the fixture's folder

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "model_rollout", *args, "--repository", str(self.repository),
                f"--model-server={self.model_server.grpc_address}={self.model_server.rest_url}",
                f"--api={self.api.url}"]

    def rollout(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **QUICKER}, cwd=REPO_ROOT)

    def state(self) -> state.Rollout | None:
        return state.read(self.repository / "rollouts", "lstm")


@pytest.fixture(scope="module")
def rollout_stack(tmp_path_factory):
    """A model server on a copy of the repository where lstm's version is pinned (`specific`, the
    way a model is served to be rolled out), and a text-api instance following its rollouts."""
    base = tmp_path_factory.mktemp("rollout")
    repository = copy_repository(base / "models")
    config_file = repository / "models.config"
    models_config.save(config_file, models_config.serve(models_config.load(config_file), "lstm", [1], {"stable": 1}))
    target, server = start_model_server(repository, base / "model_server.log", *MODEL_SERVER_FLAGS(repository))
    api = start_api("text-api", target.grpc_address, base / "text-api.log",
                    env={"ROLLOUT_DIR": str(repository / "rollouts")})
    stack = Stack(repository, target, api)
    stack.server, stack.base = server, base
    try:
        yield stack
    finally:
        stack.api.process.stop()
        stack.server.stop()


class Stages:
    """When each stage began, as the state file said (polled every 50 ms), in time.monotonic()."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.seen = stack, []
        self.since = time.time()  # an earlier rollout's state, still in the file, is not this one's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            current = self.stack.state()
            stage = (current.stage, current.canary_percent, current.pinned) if current else None
            if current and current.started >= self.since and (not self.seen or self.seen[-1][1] != stage):
                self.seen.append((time.monotonic(), stage))

    def __enter__(self) -> Stages:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def began(self, stage: str) -> float | None:
        return next((moment for moment, (name, _, _) in self.seen if name == stage), None)


def roll_out(stack: Stack, kind: str) -> tuple[HttpLoad, Stages, subprocess.CompletedProcess, state.Rollout]:
    write_candidate(stack.repository, kind)
    try:
        with HttpLoad(stack.api.url) as load, Stages(stack) as stages:
            run = stack.rollout("lstm", "2")
            time.sleep(1)
        final = stack.state()
    finally:
        # Whatever became of it, the candidate's folder goes (a promoted one stays: see the last test).
        if stack.state() is None or stack.state().stage != "promoted":
            shutil.rmtree(stack.repository / "lstm" / "2", ignore_errors=True)
    return load, stages, run, final


def versions_between(load: HttpLoad, start: float, end: float) -> set[int | None]:
    return {o.model_version for o in load.outcomes if start <= o.started < end and o.ok}


def test_a_version_with_a_renamed_input_is_stopped_at_preflight(rollout_stack, fault_table):
    load, stages, run, final = roll_out(rollout_stack, "renamed_input")
    assert run.returncode == 1, run.stdout + run.stderr
    assert final.stage == "stopped" and "input 'words' is gone" in final.reason, final
    assert load.failed() == [], load.failed()[:5]
    assert load.versions_since(0) == {1}
    record_fault(fault_table, "rollout: a version with a renamed input (lstm 1 -> 2)", load,
                 f"stopped at preflight ({final.reason.split(': ', 1)[1]}); version 1 answered everything")


def test_a_version_that_answers_otherwise_is_caught_in_shadow_and_never_answers(rollout_stack, fault_table):
    load, stages, run, final = roll_out(rollout_stack, "opposite_on_some")
    assert run.returncode == 1, run.stdout + run.stderr
    assert final.stage == "rolled_back" and final.reason.startswith("shadow:"), final
    assert stages.began("canary") is None
    assert load.failed() == [], load.failed()[:5]
    assert load.versions_since(0) == {1}, "the candidate answered a caller"
    record_fault(fault_table, "rollout: a version that gives the opposite label on some texts", load,
                 f"rolled back in shadow ({final.reason.split(': ', 1)[1].split(';')[0]}); it answered no caller")


def test_a_version_that_fails_on_some_inputs_is_rolled_back_in_canary(rollout_stack, fault_table):
    load, stages, run, final = roll_out(rollout_stack, "errors_on_some")
    assert run.returncode == 1, run.stdout + run.stderr
    assert final.stage == "rolled_back" and "calls to the candidate failed" in final.reason, final
    assert final.canary_percent == 0 and final.history[-2]["stage"] == "canary"
    assert load.failed() == [], load.failed()[:5]  # each failed canary call was asked of the live version
    rolled_back = stages.began("rolled_back")
    assert versions_between(load, rolled_back + 1, float("inf")) == {1}
    record_fault(fault_table, "rollout: a version that fails on some texts", load,
                 f"rolled back at the canary's first step ({final.reason.split(': ', 1)[1].split(' (')[0]}); "
                 f"each failed call answered by version 1")


def test_a_slower_version_is_rolled_back_in_canary(rollout_stack, fault_table):
    load, stages, run, final = roll_out(rollout_stack, "slower")
    assert run.returncode == 1, run.stdout + run.stderr
    assert final.stage == "rolled_back" and "the live version's" in final.reason, final
    assert load.failed() == [], load.failed()[:5]
    canary, rolled_back = stages.began("canary"), stages.began("rolled_back")
    slowed = [o for o in load.outcomes if canary <= o.started < rolled_back and o.model_version == 2]
    record_fault(fault_table, "rollout: a version many times slower on texts longer than its warm-up records'",
                 load,
                 f"rolled back in canary ({final.reason.split(': ', 1)[1]}); {len(slowed)} answers came from it")


def test_two_rollouts_of_a_model_cannot_run_at_once(rollout_stack):
    write_candidate(rollout_stack.repository, "same")
    # No load: the first cannot be judged in shadow, and stops after 5 s with nothing promoted.
    first = subprocess.Popen(rollout_stack.command("lstm", "2"), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             env={**os.environ, **QUICKER, "ROLLOUT_STAGE_TIMEOUT_SECONDS": "5"})
    try:
        wait_until(lambda: rollout_stack.state() is not None and rollout_stack.state().active, 30, "the first")
        second = rollout_stack.rollout("lstm", "2")
        assert second.returncode == 2 and "another rollout of lstm is under way" in second.stdout, second.stdout
    finally:
        first.wait(120)
        shutil.rmtree(rollout_stack.repository / "lstm" / "2", ignore_errors=True)
    assert rollout_stack.state().stage == "rolled_back" and "not enough traffic" in rollout_stack.state().reason


def test_a_rollout_survives_restarts_of_the_api_and_the_model_server(rollout_stack):
    """Mid-rollout (shadow, the candidate loaded beside the live version), the API instance and
    then the model server are restarted: each reads where the rollout stands (the state file,
    models.config) and the live version keeps answering; the rollout then goes on to promotion."""
    stack = rollout_stack
    write_candidate(stack.repository, "same")
    command = subprocess.Popen(stack.command("lstm", "2"), cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, **QUICKER, "ROLLOUT_SHADOW_MIN_COMPARED": "200",
                                    "ROLLOUT_STAGE_TIMEOUT_SECONDS": "240"})
    try:
        wait_until(lambda: stack.state() is not None and stack.state().stage == "shadow", 60, "the shadow stage")
        stack.api.process.stop()
        stack.api = start_api("text-api", stack.model_server.grpc_address, stack.base / "text-api-2.log",
                              env={"ROLLOUT_DIR": str(stack.repository / "rollouts")},
                              port=int(stack.api.url.rsplit(":", 1)[1]))
        assert answering_versions(stack.api.url) == {1}, "a new worker asks for the live version"
        ports = tuple(int(url.rsplit(":", 1)[1]) for url in (stack.model_server.grpc_address,
                                                            stack.model_server.rest_url))
        stack.server.stop(signal.SIGKILL)
        stack.model_server, stack.server = start_model_server(
            stack.repository, stack.base / "model_server-2.log", *MODEL_SERVER_FLAGS(stack.repository), ports=ports)
        wait_until(lambda: answering_versions(stack.api.url) == {1}, 30, "the live version again")
        with HttpLoad(stack.api.url) as load:
            out, _ = command.communicate(timeout=180)
        assert command.returncode == 0, out
    finally:
        if command.poll() is None:
            command.kill()
    assert stack.state().stage == "promoted" and load.failed() == [], (stack.state(), load.failed()[:5])
    assert load.versions_since(time.monotonic() - 1) == {2}
    rollback_to_version_1(stack)


def answering_versions(url: str, count: int = 20) -> set[int]:
    return {requests.post(f"{url}/lstm", json={"line": "很好"}, timeout=10).json()["model_version"]
            for _ in range(count)}


def rollback_to_version_1(stack: Stack) -> None:
    """Back to lstm 1 alone, as the fixture began (another test promotes version 2 again)."""
    config_file = stack.repository / "models.config"
    controller.configure(config_file, models_config.serve(models_config.load(config_file), "lstm", [1], {"stable": 1}),
                         [ModelServer(stack.model_server.grpc_address, stack.model_server.rest_url)])
    wait_until(lambda: answering_versions(stack.api.url, 5) == {1}, 90, "version 1 alone again")
    shutil.rmtree(stack.repository / "lstm" / "2")
    state.state_file(stack.repository / "rollouts", "lstm").unlink()


def test_a_good_version_is_promoted_through_every_stage(rollout_stack, fault_table):
    load, stages, run, final = roll_out(rollout_stack, "same")
    assert run.returncode == 0, run.stdout + run.stderr
    assert final.stage == "promoted" and final.pinned is None, final
    assert [step["stage"] for step in final.history] == ["preflight", "shadow", "canary", "canary", "canary",
                                                         "promoted"]
    assert load.failed() == [], load.failed()[:5]
    canary, promoted = stages.began("canary"), stages.began("promoted")
    assert versions_between(load, 0, canary) == {1}, "the candidate answered before the canary"
    assert versions_between(load, canary, promoted) == {1, 2}
    assert versions_between(load, promoted + 1, float("inf")) == {2}
    assert rollout_stack.rollout("status").stdout.startswith("lstm: version 1 -> 2, promoted")
    record_fault(fault_table, "rollout: a good version (lstm 1 -> 2)", load,
                 f"promoted after preflight, shadow and canary at 5, 25, 50% "
                 f"({promoted - stages.began('preflight'):.0f} s); version 2 answered everything after")


def test_the_dashboards_rollout_queries_name_metrics_an_instance_exports(rollout_stack):
    exported = exported_names(requests.get(f"{rollout_stack.api.url}/metrics", timeout=5).text)
    wanted = {name for name in set().union(*map(metric_names, dashboard_queries())) if name.startswith("rollout_")}
    assert wanted and wanted <= exported, sorted(wanted - exported)
