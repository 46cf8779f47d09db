"""The live compose tier's stack: built and up under docker compose on the session's Docker engine
(tests/conftest.py's docker_host), taken down afterwards."""

from __future__ import annotations

import sys

import pytest

from tests.compose.docker_host import ComposeProject, compose_stack

SUMMARY: list[str] = []  # how long the stack took to build and start, and what its images weigh


@pytest.fixture(scope="session")
def compose(docker_host, tmp_path_factory) -> ComposeProject:
    """The stack as users start it: `docker compose up --wait --scale text-api=4`."""
    with compose_stack(tmp_path_factory.mktemp("compose"), "--scale", "text-api=4", log=sys.stderr) as project:
        SUMMARY.extend(f"{step}: {seconds:.0f} s" for step, seconds in project.timings.items())
        SUMMARY.extend(f"image {image}: {mb:.0f} MB" for image, mb in project.image_sizes().items())
        if project.substitutions:
            SUMMARY.append(f"used instead of official images (none could be pulled): {project.substitutions}")
        yield project


def pytest_terminal_summary(terminalreporter) -> None:
    if SUMMARY:
        terminalreporter.section("docker compose: build, start, images")
        for line in SUMMARY:
            terminalreporter.write_line(line)
