"""A third API service around a tiny model, added to a copy of the repository exactly as the README's
"Your own model" says: for tests/test_your_own_model.py (local mode) and the live compose tier. The
copy is what a user has: a git clone, with a venv that imports the clone's code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO_ROOT

NAME, PACKAGE, MODEL, ROUTE = "doubler-api", "doubler_api", "doubler", "/double"

EXPORT = """
import sys
import tensorflow as tf

class Doubler(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x * 2.0}

model = Doubler()
tf.saved_model.save(model, sys.argv[1], signatures={"serving_default": model.serve})
"""

MODEL_CONFIG = f"""  config {{
    name: "{MODEL}"
    base_path: "/models/{MODEL}"
    model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 1 }} }}
  }}
"""

SERVICE_TOML = f"""name = "{NAME}"
package = "{PACKAGE}"
service = "{PACKAGE}:DoublerService"
routes = ["{ROUTE}"]
body_limit = "64k"
models = ["{MODEL}"]
index = ["POST {ROUTE}"]
"""

PACKAGE_INIT = f'''"""doubler-api: twice each number, answered by the `doubler` model."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import numpy as np
from pydantic import Field

from service_kit.core.service import ModelService
from service_kit.core.settings import ServiceSettings, env
from service_kit.http.contract import Operation, Reply, Strict
from service_roster import service_of

ROSTER_ENTRY = service_of(__file__)
JSON = "application/json"


@dataclasses.dataclass(frozen=True)
class DoublerSettings(ServiceSettings):
    model_name: str = env("MODEL_NAME", ROSTER_ENTRY.models[0])
    max_body_bytes: int = env("MAX_BODY_BYTES", ROSTER_ENTRY.body_limit_bytes)


class Numbers(Strict):
    x: Annotated[list[Annotated[float, Field(ge=-1e30, le=1e30)]], Field(min_length=1, max_length=1000)]


class Doubled(Reply):
    y: list[float]
    model_version: int | None


class DoublerService(ModelService[float, float, float]):
    """Each number is an example: one request's numbers, and other requests', go in one model call."""

    settings_class = DoublerSettings
    operations = (Operation("POST", "{ROUTE}", "Twice each number", {{JSON: Numbers}}, {{JSON: Doubled}}),)

    def decode(self, request: Numbers) -> list[float]:
        return request.x

    def to_inputs(self, numbers: list[float]) -> dict[str, np.ndarray]:
        return {{"x": np.asarray(numbers, np.float32)}}

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> list[float]:
        return [float(value) for value in outputs["y"]]

    def encode(self, request: Numbers, numbers: list[float], prediction, reply: type) -> Doubled:
        return Doubled(y=prediction.results, model_version=prediction.model_version)
'''

COMPOSE_ENTRY = f"""  {NAME}:
    <<: *api-service
    build: {{context: ., dockerfile: services/api.Dockerfile, args: {{SERVICE: {NAME}}}}}
    environment: *api-environment

"""


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
    """The README's steps 1-3 in `repo`: the model and its models.config entry, the service's folder,
    its compose.yaml entry."""
    # 1. The SavedModel, and its models.config entry.
    exported = subprocess.run([sys.executable, "-c", EXPORT, str(repo / "tfserving" / "models" / MODEL / "1")],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert exported.returncode == 0, exported.stderr[-2000:]
    config = repo / "tfserving" / "models" / "models.config"
    text = config.read_text()
    config.write_text(text[:text.rindex("}")] + MODEL_CONFIG + "}\n")
    # 2. The service's folder.
    service = repo / "services" / NAME
    (service / PACKAGE).mkdir(parents=True)
    (service / "service.toml").write_text(SERVICE_TOML)
    (service / "requirements.txt").write_text("-r ../api-requirements.txt\n")
    (service / PACKAGE / "__init__.py").write_text(PACKAGE_INIT)
    # 3. Its compose.yaml entry.
    compose = repo / "compose.yaml"
    compose.write_text(compose.read_text().replace("  nginx:\n", COMPOSE_ENTRY + "  nginx:\n", 1))
