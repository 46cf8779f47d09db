"""The README's "Your own model", step by step, in a copy of the repository: a third service around
a tiny SavedModel this test exports itself answers through nginx in local mode, compose's config
has it, and nothing but the model, its models.config entry, the service's folder and its
compose.yaml entry changed."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

from tests.conftest import REPO_ROOT, ManagedProcess, free_port, wait_until
from tests.own_model import MODEL, NAME, ROUTE, add_third_service, copy_of_the_repository, fingerprint

pytestmark = pytest.mark.slow


def readme_steps() -> list[str]:
    section = (REPO_ROOT / "README.md").read_text().split("## Your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d\. ", section, re.MULTILINE)


def test_readme_says_it_in_at_most_five_steps():
    assert 1 <= len(readme_steps()) <= 5


def test_a_third_model_is_one_model_folder_one_service_folder_and_two_entries(tmp_path, compose_cli):
    repo = copy_of_the_repository(tmp_path / "repo")
    before = fingerprint(repo)

    add_third_service(repo)  # the README's steps 1-3

    after = fingerprint(repo)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    allowed = (f"tfserving/models/{MODEL}/", "tfserving/models/models.config", f"services/{NAME}/", "compose.yaml")
    assert changed and all(name.startswith(allowed) for name in changed), sorted(changed)

    # compose sees the service, built from the one API image recipe.
    configured = subprocess.run(["docker", "compose", "config", "--format", "json"], cwd=repo,
                                capture_output=True, text=True, timeout=60)
    assert configured.returncode == 0, configured.stderr
    built = json.loads(configured.stdout)["services"][NAME]["build"]
    assert built["args"] == {"SERVICE": NAME} and built["dockerfile"].endswith("api.Dockerfile")

    # 4. ./stack up: nginx routes the new route to the new service, which asks the new model.
    port = free_port()
    stack = ManagedProcess([sys.executable, "-m", "local_stack", "--run-dir", str(tmp_path / "run"), "up",
                            "--http-port", str(port), "--scale", "text-api=1", "--scale", "vision-api=1"],
                           tmp_path / "stack.log", cwd=repo)
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
        subprocess.run([sys.executable, "-m", "local_stack", "--run-dir", str(tmp_path / "run"), "down"], cwd=repo,
                       capture_output=True, timeout=120)
        stack.stop()
