"""A third API service around a tiny model, added to a copy of the repository exactly as the README's
"Your own model" says: for tests/test_your_own_model.py (local mode) and the live compose tier."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
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
routes = ["{ROUTE}"]
body_limit = "64k"
models = ["{MODEL}"]
index = ["POST {ROUTE}"]
"""

PACKAGE_INIT = '''"""doubler-api: twice each number, answered by the `doubler` model."""

from __future__ import annotations

import dataclasses

import numpy as np
from flask import Blueprint, Flask, current_app, jsonify, request

from service_kit.http.app import create_service_app
from service_kit.http.inputs import json_body
from service_kit.core.model_endpoint import InvalidInput, ModelEndpoint
from service_kit.core.settings import ServiceSettings, env
from service_roster import service_of

ROSTER_ENTRY = service_of(__file__)


@dataclasses.dataclass(frozen=True)
class DoublerSettings(ServiceSettings):
    model_name: str = env("MODEL_NAME", ROSTER_ENTRY.models[0])
    max_body_bytes: int = env("MAX_BODY_BYTES", ROSTER_ENTRY.body_limit_bytes)


class Doubler(ModelEndpoint[float, float]):
    def to_inputs(self, examples: list[float]) -> dict[str, np.ndarray]:
        return {"x": np.asarray(examples, np.float32)}

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> list[float]:
        return [float(value) for value in outputs["y"]]


blueprint = Blueprint("doubler_api", __name__)


@blueprint.post("/double")
def double():
    numbers = json_body(request).get("x")
    if not isinstance(numbers, list) or not numbers or not all(isinstance(v, (int, float)) for v in numbers):
        raise InvalidInput("invalid_field", '"x" must be a non-empty list of numbers')
    prediction = current_app.extensions["doubler"].predict(numbers)
    return jsonify(y=prediction.results, model_version=prediction.model_version)


def create_app(settings: DoublerSettings | None = None, client=None) -> Flask:
    settings = settings or DoublerSettings.from_env()
    app = create_service_app(__name__, settings, client)
    app.extensions["doubler"] = Doubler(app.extensions["model_client"], settings)
    app.register_blueprint(blueprint)
    return app
'''

COMPOSE_ENTRY = f"""  {NAME}:
    <<: *api-service
    build: {{context: ., dockerfile: services/api.Dockerfile, args: {{SERVICE: {NAME}}}}}
    environment: *api-environment

"""


def copy_of_the_repository(target: Path) -> Path:
    """The working tree as git sees it (tracked and new files, ignored ones left out)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def fingerprint(tree: Path) -> dict[str, str]:
    return {path.relative_to(tree).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in tree.rglob("*") if path.is_file() and "__pycache__" not in path.parts}


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
