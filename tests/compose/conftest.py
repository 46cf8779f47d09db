"""The live compose tier's stack: built and up under docker compose on the session's Docker engine
(tests/conftest.py's docker_host), taken down afterwards."""

from __future__ import annotations

import sys

import pytest

from tests.compose.docker_host import ComposeProject, compose_stack


@pytest.fixture(scope="session")
def compose(docker_host, tmp_path_factory) -> ComposeProject:
    """The stack as users start it: `docker compose up --wait --scale text-api=4`."""
    with compose_stack(tmp_path_factory.mktemp("compose"), "--scale", "text-api=4", log=sys.stderr) as project:
        yield project
