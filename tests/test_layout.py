"""The tree's structure: every Python project is installed (no PYTHONPATH assembled, no sys.path
edited), and the bootstrap installs each of them."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO_ROOT

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


def test_the_bootstrap_installs_every_python_project_of_the_tree():
    projects = {path.parent.relative_to(REPO_ROOT).as_posix() for path in REPO_ROOT.glob("**/pyproject.toml")
                if ".venv" not in path.parts and "node_modules" not in path.parts}
    bootstrap = (REPO_ROOT / "scripts" / "bootstrap.sh").read_text()
    [listed] = re.findall(r"projects=\$\(dirname (.+?)\)", bootstrap, re.DOTALL)
    patterns = [item.removesuffix("/pyproject.toml") for item in listed.replace("\\\n", " ").split()]
    covered = {p.parent.relative_to(REPO_ROOT).as_posix() for pattern in patterns
               for p in REPO_ROOT.glob(f"{pattern}/pyproject.toml" if pattern != "pyproject.toml" else pattern)}
    assert projects == covered, projects ^ covered
