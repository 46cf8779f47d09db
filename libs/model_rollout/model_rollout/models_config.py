"""The rollout's edits of models.config, the file both the official TF Serving and ours read (and
poll, `--model_config_file_poll_wait_seconds`): which versions of a model are served, and its
version labels (`stable`, `canary`). TF Serving refuses a label on a version that is not loaded yet,
so a candidate gets its label only once it is AVAILABLE (`serve` with and without it)."""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format

from tfserving_client.protos.tensorflow_serving.config import model_server_config_pb2

ModelServerConfig = model_server_config_pb2.ModelServerConfig


def load(path: Path) -> ModelServerConfig:
    config = ModelServerConfig()
    text_format.Parse(Path(path).read_text(), config)
    return config


def save(path: Path, config: ModelServerConfig) -> None:
    """The file's leading comment kept; written whole (a model server polling it never reads half)."""
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    header = "".join(line for line in _leading_comment(lines))
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(header + text_format.MessageToString(config))
    os.replace(partial, path)


def _leading_comment(lines: list[str]) -> list[str]:
    kept = []
    for line in lines:
        if not line.startswith("#"):
            break
        kept.append(line)
    return kept


def entry(config: ModelServerConfig, model: str):
    for model_config in config.model_config_list.config:
        if model_config.name == model:
            return model_config
    raise KeyError(f"models.config serves no model named {model!r}")


def pinned_versions(config: ModelServerConfig, model: str) -> list[int] | None:
    """The versions a `specific` policy names; None for `latest` or `all` (a version copied in goes
    live as soon as it loads: nothing to roll out)."""
    policy = entry(config, model).model_version_policy
    if policy.WhichOneof("policy_choice") != "specific":
        return None
    return sorted(policy.specific.versions)


def serve(config: ModelServerConfig, model: str, versions: list[int], labels: dict[str, int]) -> ModelServerConfig:
    """A copy of `config` where `model` serves exactly `versions`, labelled `labels`."""
    changed = ModelServerConfig()
    changed.CopyFrom(config)
    model_config = entry(changed, model)
    model_config.model_version_policy.Clear()
    model_config.model_version_policy.specific.versions.extend(sorted(versions))
    model_config.version_labels.clear()
    model_config.version_labels.update(labels)
    return changed


def base_path(config: ModelServerConfig, model: str, repository: Path) -> Path:
    """The model's folder in this repository: the config names it as the server sees it (/models/lstm)."""
    return Path(repository) / Path(entry(config, model).base_path).name
