"""schemathesis against the compose stack through its published port: the same run as local mode's
(tests/services/nginx/test_schemathesis.py), on the images users run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compose.docker_host import ComposeProject
from tests.schemathesis_run import run_schemathesis

pytestmark = [pytest.mark.slow, pytest.mark.docker]


@pytest.fixture
def compose_up(compose: ComposeProject) -> ComposeProject:
    """The session's project, up: test_compose_live.py (before this file) ends by taking it down
    (test_down_leaves_no_container_network_or_volume). Started again from the images already
    built, as compose.yaml deploys it; the session fixture takes it down at the end either way."""
    if not any(container["State"] == "running" for container in compose.containers("nginx")):
        compose.run("up", "--detach", "--wait", timeout=600)
    return compose


def test_the_compose_stack_keeps_what_its_openapi_document_says(compose_up: ComposeProject, tmp_path: Path) -> None:
    run = run_schemathesis(compose_up.url, tmp_path / "schemathesis")
    assert run.returncode == 0, run.failures()
