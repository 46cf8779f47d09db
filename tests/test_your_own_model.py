"""The README's "Your own model", step by step, in a copy of the repository that is what a user has (a
git clone with its own venv): a third service around a tiny SavedModel this test exports itself.
Nothing but the model, its models.config entry, the service's folder and its compose.yaml entry is
the user's to write; after `./stack generate` the suite's fast tiers pass in the copy (so CI would),
and after `./stack up` the new route answers through nginx."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests import own_model
from tests.conftest import REPO_ROOT, ManagedProcess, free_port, wait_until
from tests.own_model import MODEL, NAME, ROUTE

pytestmark = pytest.mark.slow

# The fast tiers (pyproject.toml's markers) of every folder that reads the roster, the services' list
# or the tree's layout; among them tests/test_layout.py, which checks that the copy's venv imports the
# copy's projects and services. All of `tests` passed there too (issue 22: 726 tests, 305 s on 2
# cores; these: 178 s with all of tests/services), more than the suite's 30 minutes can spare each
# run; what is left out (fuzz, bench, training, client, each service's own tests, the model server's)
# knows nothing of which services exist.
# The fast tiers that read the roster or the files made from it (a new service changes what they
# check); local mode's processes with the new service are test_the_stack_serves_the_third_model's.
FAST_TIERS = ["-m", "not slow and not docker", "tests/test_layout.py", "tests/test_hardening.py",
              "tests/test_readme_and_ci.py", "tests/libs", "--ignore", "tests/libs/test_tfserving_client_wire.py",
              "tests/services/nginx", "tests/k8s", "tests/monitoring", "tests/local_stack/test_compose_file.py",
              "tests/compose/test_compose_files.py"]


def readme_steps() -> list[str]:
    section = (REPO_ROOT / "README.md").read_text().split("## Your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d\. ", section, re.MULTILINE)


def test_readme_says_it_in_at_most_five_steps():
    assert 1 <= len(readme_steps()) <= 5


@dataclasses.dataclass(frozen=True)
class Clone:
    repo: Path
    python: Path  # the copy's venv's
    written: set[str]  # what the user wrote (steps 1-3), as git status shows it
    seconds: dict[str, float]  # what each preparation took


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Clone:
    """The README's steps 1-4 in a fresh clone-like copy, then committed: what CI would be given."""
    seconds, started = {}, time.monotonic()
    repo = own_model.copy_of_the_repository(tmp_path_factory.mktemp("own-model") / "repo")
    python = own_model.venv_for(repo)
    seconds["copy and venv"] = time.monotonic() - started
    own_model.add_third_service(repo)  # steps 1-3
    written = own_model.changed_files(repo)
    started = time.monotonic()
    # 4. ./stack generate (its bootstrap installs the copy's projects and the new service into the venv).
    generated = subprocess.run(["./stack", "generate"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stdout[-3000:] + generated.stderr[-3000:]
    seconds["./stack generate"] = time.monotonic() - started
    own_model.commit_all(repo, f"{NAME}: the {MODEL} model behind {ROUTE}")
    return Clone(repo, python, written, seconds)


def test_a_third_model_is_one_model_folder_one_service_folder_and_two_entries(clone, compose_cli):
    allowed = (f"tfserving/models/{MODEL}/", "tfserving/models/models.config", f"services/{NAME}/", "compose.yaml")
    assert clone.written and all(name.startswith(allowed) for name in clone.written), sorted(clone.written)

    # compose sees the service, built from the one API image recipe.
    configured = subprocess.run(["docker", "compose", "config", "--format", "json"], cwd=clone.repo,
                                capture_output=True, text=True, timeout=60)
    assert configured.returncode == 0, configured.stderr
    built = json.loads(configured.stdout)["services"][NAME]["build"]
    assert built["args"] == {"SERVICE": NAME} and built["dockerfile"].endswith("api.Dockerfile")


def test_the_suites_fast_tiers_pass_in_the_users_repository(clone):
    """What CI runs first, in the user's repository with the user's venv; the slow and live tiers are
    this module's own business (the stack, below) and the compose tier's."""
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    suite = subprocess.run([clone.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FAST_TIERS],
                           cwd=clone.repo, env=env, capture_output=True, text=True, timeout=1200)
    took = {**clone.seconds, "fast tiers": time.monotonic() - started}
    assert suite.returncode == 0, f"{took}\n{suite.stdout[-6000:]}{suite.stderr[-2000:]}"


def test_the_stack_serves_the_third_model(clone, tmp_path):
    """5. ./stack up: nginx routes the new route to the new service, which asks the new model."""
    port = free_port()
    stack = ManagedProcess(["./stack", "up", "--http-port", str(port), "--scale", "text-api=1",
                            "--scale", "vision-api=1"], tmp_path / "stack.log", cwd=clone.repo)
    try:
        wait_until(lambda: "ready in" in stack.log_text() or not stack.alive(), 180, "the stack with a third service")
        assert stack.alive(), stack.log_text()[-3000:]
        url = f"http://127.0.0.1:{port}"
        answer = requests.post(f"{url}{ROUTE}", json={"x": [1, 2.5, -4]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"y": [2.0, 5.0, -8.0], "model_version": 1}
        assert f"POST {ROUTE}" in requests.get(url, headers={"Accept": "application/json"}, timeout=5).json()["routes"]
        refused = requests.post(f"{url}{ROUTE}", data=b"[" * 70_000, headers={"Content-Type": "application/json"},
                                timeout=10)
        assert refused.status_code == 413 and "64 KB for /double" in refused.json()["error"]["message"]
        assert requests.post(f"{url}/lstm", json={"line": "很好"}, timeout=10).status_code == 200
    finally:
        subprocess.run(["./stack", "down"], cwd=clone.repo, capture_output=True, timeout=120)
        stack.stop()
