"""Model rollouts under docker compose (issue 37), as the README says to run them: `docker compose
run --rm --user UID:GID rollout lstm 2` against a stack serving a copy of the model repository where
lstm is pinned, under a steady load through nginx. The rollout container reaches the model servers
and the API replicas on `models`; the API replicas read its state file from the repository they
mount read-only; the model server reads models.config every 5 s (ours refuses the reload RPC from
another container). The same candidates as local mode's (tests/faults/test_model_rollout.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from model_rollout import models_config

from service_kit.core import rollout_state as state
from tests.compose.docker_host import ComposeProject
from tests.conftest import copy_repository
from tests.faults.load import HttpLoad, record_fault
from tests.faults.rollout_candidates import write_candidate
from tests.faults.test_model_rollout import QUICKER

pytestmark = [pytest.mark.slow, pytest.mark.docker]


@pytest.fixture(scope="module")
def pinned(docker_host, tmp_path_factory):
    """The stack (2 text-api replicas) on a copy of the repository with lstm pinned to version 1."""
    work = Path(tempfile.mkdtemp(prefix="rollout-models-"))  # readable by the containers' users
    repository = copy_repository(work / "models")
    config_file = repository / "models.config"
    models_config.save(config_file, models_config.serve(models_config.load(config_file), "lstm", [1], {"stable": 1}))
    subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
    project = ComposeProject(tmp_path_factory.mktemp("compose-rollout"), env={"MODEL_REPOSITORY": str(repository)})
    project.prepare()
    try:
        project.build()
        project.run("up", "--detach", "--wait", "--scale", "vision-api=1", timeout=600)
        yield project, repository
    finally:
        project.down()
        leftovers = project.leftovers()
        shutil.rmtree(work, ignore_errors=True)
    assert leftovers == {"containers": [], "networks": [], "volumes": []}


def rollout(project: ComposeProject, *args: str) -> subprocess.CompletedProcess:
    variables = [f"--env={name}={value}" for name, value in QUICKER.items()]
    return project.run("--profile", "tools", "run", "--rm", f"--user={os.getuid()}:{os.getgid()}", *variables,
                       "rollout", *args, timeout=300, check=False)


def roll_out(project: ComposeProject, repository: Path, kind: str):
    write_candidate(repository, kind)
    subprocess.run(["chmod", "-R", "a+rX", str(repository)], check=True)
    with HttpLoad(project.url) as load:
        run = rollout(project, "lstm", "2")
    final = state.read(repository / "rollouts", "lstm")
    if final.stage != "promoted":
        shutil.rmtree(repository / "lstm" / "2")
    return load, run, final


def test_a_version_with_a_renamed_input_is_stopped_at_preflight(pinned, fault_table):
    project, repository = pinned
    load, run, final = roll_out(project, repository, "renamed_input")
    assert run.returncode == 1, run.stdout + run.stderr
    assert final.stage == "stopped" and "input 'words' is gone" in final.reason, final
    assert load.failed() == [], load.failed()[:5]
    assert load.versions_since(0) == {1}
    record_fault(fault_table, "rollout: a version with a renamed input (`docker compose run rollout lstm 2`)", load,
                 "stopped at preflight (its signature); version 1 answered everything")


def test_a_version_that_answers_otherwise_is_caught_in_shadow(pinned, fault_table):
    project, repository = pinned
    load, run, final = roll_out(project, repository, "opposite_on_some")
    assert run.returncode == 1, run.stdout + run.stderr
    assert final.stage == "rolled_back" and final.reason.startswith("shadow:"), final
    assert load.failed() == [] and load.versions_since(0) == {1}
    record_fault(fault_table, "rollout: a version that gives the opposite label on some texts", load,
                 f"rolled back in shadow ({final.reason.split(': ', 1)[1].split(' (')[0]}); it answered no caller")


def test_a_version_that_fails_on_some_inputs_is_rolled_back_in_canary(pinned, fault_table):
    project, repository = pinned
    load, run, final = roll_out(project, repository, "errors_on_some")
    assert run.returncode == 1, run.stdout + run.stderr
    assert final.stage == "rolled_back" and "calls to the candidate failed" in final.reason, final
    assert load.failed() == [], load.failed()[:5]
    answered = sum(o.model_version == 2 for o in load.outcomes)
    record_fault(fault_table, "rollout: a version that fails on some texts", load,
                 f"rolled back in canary ({final.reason.split(': ', 1)[1].split(' (')[0]}); {answered} answers "
                 f"came from it, each failed call answered by version 1")


def test_a_good_version_is_promoted_through_every_stage(pinned, fault_table):
    project, repository = pinned
    load, run, final = roll_out(project, repository, "same")
    assert run.returncode == 0, run.stdout + run.stderr
    assert final.stage == "promoted", final
    assert [step["stage"] for step in final.history] == ["preflight", "shadow", "canary", "canary", "canary",
                                                         "promoted"]
    assert load.failed() == [], load.failed()[:5]
    assert [o.model_version for o in load.outcomes if o.ok][-20:] == [2] * 20
    assert models_config.pinned_versions(models_config.load(repository / "models.config"), "lstm") == [2]
    status = rollout(project, "status")
    assert "lstm: version 1 -> 2, promoted" in status.stdout, status.stdout + status.stderr
    record_fault(fault_table, "rollout: a good version (lstm 1 -> 2)", load,
                 "promoted after preflight, shadow and canary at 5, 25, 50%; version 2 answered everything after")
