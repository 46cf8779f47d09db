"""The README's two fresh-machine commands exist and CI runs the same test command."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO_ROOT / "README.md").read_text()
    fresh_machine = readme.split("## On a fresh machine", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^(\./stack \w+)", fresh_machine, re.MULTILINE)
    assert commands == ["./stack up", "./stack test"]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "exec ./stack test" in ci


def test_every_relative_link_in_the_readmes_resolves():
    for readme in [REPO_ROOT / "README.md", *REPO_ROOT.glob("*/README.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme.read_text()):
            assert (readme.parent / target).exists(), f"{readme.name}: {target}"
