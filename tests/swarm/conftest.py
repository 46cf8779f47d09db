"""The live swarm tier's stack: three hosts, a registry, a swarm, and compose.swarm.yaml deployed on
it (tests/swarm/hosts.py, tests/swarm/stack.py); all of it removed afterwards, and checked gone.

SWARM_STACK_FILE deploys another stack file instead (to see the tier fail on a broken one)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.compose.docker_host import ComposeProject
from tests.conftest import required_in_ci
from tests.swarm.hosts import SwarmLab, SwarmUnavailable, require_tools
from tests.swarm.stack import STACK_FILE, SwarmStack

SUMMARY: list[str] = []  # how long each step took


@pytest.fixture(scope="session")
def swarm(docker_host, tmp_path_factory) -> SwarmStack:
    try:
        require_tools()
    except SwarmUnavailable as error:
        required_in_ci("the live swarm tier", error)
    work = tmp_path_factory.mktemp("swarm")
    images = ComposeProject(work)
    images.prepare(sys.stderr)
    images.build()  # the compose tier's images: cached
    lab = SwarmLab(work / "lab")
    try:
        with lab:
            stack = SwarmStack(lab, images, work, Path(os.environ.get("SWARM_STACK_FILE", STACK_FILE)))
            try:
                stack.publish_images()
                stack.deploy()
                yield stack
            except BaseException:
                for host in lab.hosts:
                    (work / f"{host.name}-containers.txt").write_text(host.docker("ps", "-a", check=False).stdout)
                raise
            finally:
                SUMMARY.extend(f"{step}: {seconds:.0f} s" for step, seconds in {**lab.timings, **stack.timings}.items())
                SUMMARY.extend(stack.notes)
    finally:
        left = {kind: found for kind, found in lab.leftovers().items() if found}
        SUMMARY.append(f"left behind after teardown: {left or 'nothing'}")
    assert not left, f"the swarm lab left {left}"


def pytest_terminal_summary(terminalreporter) -> None:
    if SUMMARY:
        terminalreporter.section("docker swarm: hosts, images, deploy, teardown")
        for line in SUMMARY:
            terminalreporter.write_line(line)
