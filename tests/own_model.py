"""A third API service around a tiny model (examples/doubler), added to a copy of the repository exactly
as the README's "Your own model" says: for tests/test_your_own_model.py (local mode) and the live
compose tier. The copy is what a user has: a git clone, with a venv that imports the clone's code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO_ROOT

NAME, MODEL, ROUTE = "doubler-api", "doubler", "/double"
EXAMPLE = REPO_ROOT / "examples" / MODEL  # the files the README's steps make, ready to copy


# A commit the same whoever runs it, whatever their git config (no hooks, no signing, no identity asked).
GIT_ENVIRONMENT = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
                   "GIT_AUTHOR_NAME": "Own Model", "GIT_AUTHOR_EMAIL": "own-model@example.invalid",
                   "GIT_COMMITTER_NAME": "Own Model", "GIT_COMMITTER_EMAIL": "own-model@example.invalid",
                   "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z"}


def git(repo: Path, *args: str) -> str:
    """git in `repo` only: none of the caller's GIT_* variables (a hook's GIT_DIR would point at this one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENVIRONMENT
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--no-verify", "--message", message)


def copy_of_the_repository(target: Path) -> Path:
    """The working tree as git sees it (tracked and new files, ignored ones left out), committed in a
    new git repository: a user's clone is one, and the suite asks git what is tracked."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git(target, "init", "--quiet", "--initial-branch", "main")
    commit_all(target, "The repository as cloned")
    return target


def changed_files(repo: Path) -> set[str]:
    """What `git status` shows changed since the last commit, untracked files one by one."""
    return {line[3:] for line in git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()}


def third_party_folders() -> list[str]:
    """Where this interpreter finds its third-party packages: its venv's site-packages and the other
    folders on its path but this tree's code and the standard library (what a venv it borrows from
    lends it)."""
    stdlib = [Path(sysconfig.get_path(name)) for name in ("stdlib", "platstdlib")]

    def lends(folder: Path) -> bool:
        return folder.is_relative_to(Path(sys.prefix).resolve()) or not any(
            folder.is_relative_to(other) for other in [REPO_ROOT, *stdlib])

    return [folder for folder in sys.path if folder and Path(folder).is_dir() and lends(Path(folder).resolve())]


def lend_commands(venv: Path) -> None:
    """This venv's commands in `venv` too (the suite runs hadolint, gixy and others from its venv's
    bin): console scripts written again for `venv`'s python, as pip would have written them there,
    anything else (binaries, perf_analyzer's wrapper) linked."""
    for command in (Path(sys.prefix) / "bin").iterdir():
        lent = venv / "bin" / command.name
        if lent.exists() or lent.is_symlink() or not command.is_file():
            continue  # a folder there (a __pycache__ Python left beside a script it imported) is no command
        with command.open("rb") as file:
            shebang = file.readline(256)
            interpreter = Path(shebang.removeprefix(b"#!").decode(errors="replace").strip())
            if shebang.startswith(b"#!") and interpreter.parent == command.parent:
                lent.write_bytes(b"#!" + bytes(venv / "bin" / "python") + b"\n" + file.read())
                lent.chmod(0o755)
            else:
                lent.symlink_to(command.resolve())


def venv_for(repo: Path) -> Path:
    """`repo/.venv` with this venv's third-party packages and commands and none of its own projects: a
    new venv whose .pth file names the folders of third_party_folders(). A folder a .pth line names is
    only put on the path, its own .pth files (this venv's editable installs of REPO_ROOT) are not run,
    so `repo`'s projects and services import from `repo` once `repo`'s own bootstrap has installed
    them; the requirements stamp says which requirements those packages are, so that bootstrap goes
    straight to the projects unless `repo`'s differ. Returns the venv's python."""
    venv = repo / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    own_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    (Path(own_site) / "third-party-packages.pth").write_text("".join(f"{d}\n" for d in third_party_folders()))
    shutil.copy2(Path(sys.prefix) / ".requirements.sha256", venv / ".requirements.sha256")
    lend_commands(venv)
    return python


def add_third_service(repo: Path) -> None:
    """The README's steps 1-3 in `repo`, with the files of examples/doubler: the model and its
    models.config entry, the service's folder, its compose.yaml entry."""
    # 1. The SavedModel, and its models.config entry.
    exported = subprocess.run([sys.executable, str(EXAMPLE / "export_model.py"),
                               str(repo / "tfserving" / "models" / MODEL / "1")],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert exported.returncode == 0, exported.stderr[-2000:]
    config = repo / "tfserving" / "models" / "models.config"
    text = config.read_text()
    config.write_text(text[:text.rindex("}")] + (EXAMPLE / "models.config.entry").read_text() + "}\n")
    # 2. The service's folder.
    shutil.copytree(EXAMPLE / NAME, repo / "services" / NAME, ignore=shutil.ignore_patterns("__pycache__"))
    # 3. Its compose.yaml entry.
    compose = repo / "compose.yaml"
    entry = (EXAMPLE / "compose.entry.yaml").read_text() + "\n"
    compose.write_text(compose.read_text().replace("  nginx:\n", entry + "  nginx:\n", 1))
