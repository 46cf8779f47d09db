"""The tree's structure: nothing assembles a PYTHONPATH or edits sys.path; instead the bootstrap
installs every Python project (a folder with a pyproject.toml) editable and puts every roster
service's folder on the venv's path (a service has no packaging of its own), and the venv running
the tests imports all of them from this tree."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import site
import subprocess
import tomllib
from pathlib import Path

from tests.conftest import REPO_ROOT, ROSTER

SOURCE_SUFFIXES = (".py", ".sh", ".toml", ".yaml", ".yml", "Dockerfile", "stack", "run")


def tracked_sources() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if name.endswith(SOURCE_SUFFIXES)
            and not name.startswith("bench/results/") and (REPO_ROOT / name).is_file()]


def test_nothing_assembles_a_pythonpath_or_edits_sys_path():
    this_file = "tests/test_layout.py"
    offenders = []
    for name in tracked_sources():
        text = (REPO_ROOT / name).read_text(errors="replace")
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        if name != this_file and re.search(r"sys\.path\.(insert|append)|PYTHONPATH\s*[=:\"']|\bpythonpath\s*=", code):
            offenders.append(name)
    assert not offenders, offenders


def python_projects() -> set[str]:
    return {path.parent.relative_to(REPO_ROOT).as_posix() for path in REPO_ROOT.glob("**/pyproject.toml")
            if ".venv" not in path.parts and "node_modules" not in path.parts}


def test_the_bootstrap_installs_every_python_project_of_the_tree():
    """A pyproject.toml the bootstrap does not list (a service's too: services are not projects) is a
    package that imports here only by accident."""
    bootstrap = (REPO_ROOT / "scripts" / "bootstrap.sh").read_text()
    [listed] = re.findall(r"projects=\$\(dirname (.+?)\)", bootstrap, re.DOTALL)
    patterns = [item.removesuffix("/pyproject.toml") for item in listed.replace("\\\n", " ").split()]
    covered = {p.parent.relative_to(REPO_ROOT).as_posix() for pattern in patterns
               for p in REPO_ROOT.glob(f"{pattern}/pyproject.toml" if pattern != "pyproject.toml" else pattern)}
    projects = python_projects()
    assert projects == covered, projects ^ covered


def test_every_project_and_service_is_imported_from_this_tree():
    """What the bootstrap did, seen from the venv running the tests: each project an editable install of
    its folder here, each roster service's package found in its folder here (a venv made for another
    checkout, or a service the bootstrap has not yet seen, would import another tree's code or none)."""
    elsewhere = {}
    for project in python_projects():
        name = tomllib.loads((REPO_ROOT / project / "pyproject.toml").read_text())["project"]["name"]
        # In the venv's own site-packages: the root project's build leaves a bare egg-info on the path.
        installed = importlib.metadata.distributions(name=name, path=site.getsitepackages())
        direct_urls = [json.loads(dist.read_text("direct_url.json") or "{}") for dist in installed]
        if direct_urls != [{"url": (REPO_ROOT / project).as_uri(), "dir_info": {"editable": True}}]:
            elsewhere[name] = direct_urls
    for service in ROSTER:
        spec = importlib.util.find_spec(service.package)
        if spec is None or not Path(spec.origin).is_relative_to(REPO_ROOT / "services" / service.name):
            elsewhere[service.package] = spec and spec.origin
    assert not elsewhere, elsewhere
