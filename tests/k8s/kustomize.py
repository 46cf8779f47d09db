"""Just enough of `kustomize build` for the manifests in k8s/ (no kustomize binary here):
resources (files and bases), namespace, labels, images, and JSON 6902 patches by kind and name.
Anything else in a kustomization.yaml is refused, so the check cannot silently skip a feature."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonpatch
import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "patches"}
CLUSTER_SCOPED = {"Namespace"}


def build(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    documents: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            documents += build(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    documents = copy.deepcopy(documents)
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        targets = [d for d in documents if d["kind"] == patch["target"]["kind"]
                   and d["metadata"]["name"] == patch["target"]["name"]]
        if len(targets) != 1:
            raise ValueError(f"patch {patch['path']} matches {len(targets)} objects")
        documents[documents.index(targets[0])] = jsonpatch.apply_patch(targets[0], operations)
    for document in documents:
        _apply_common(document, kustomization)
    return documents


def _apply_common(document: dict, kustomization: dict) -> None:
    if "namespace" in kustomization and document["kind"] not in CLUSTER_SCOPED:
        document["metadata"]["namespace"] = kustomization["namespace"]
    for label_set in kustomization.get("labels", []):
        document["metadata"].setdefault("labels", {}).update(label_set["pairs"])
    for image in kustomization.get("images", []):
        for container in _containers(document):
            name, _, _ = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"


def _containers(document: dict) -> list[dict]:
    template = document.get("spec", {}).get("template", {}).get("spec", {})
    return template.get("containers", []) + template.get("initContainers", [])
