"""The committed files the roster determines, written from it by one command, so that a new service
is its folder and its compose.yaml entry, then this (tests/roster_files/test_generated_files.py checks that
every such file is this command's output):

    python -m roster_files [--repo DIR]     (./stack generate) write them, print what changed
    python -m roster_files --check          write nothing; exit 1 naming the files that differ

A file is one entry below: TARGETS (one file from the whole roster) or PER_SERVICE (one file per
service, "{name}" in its path), its repo-relative path and the function that writes its text, in
the module of its kind: k8s (the manifests), monitoring (Prometheus' jobs), docs (the services
table, the OpenAPI document), swarm (compose.swarm.yaml). A tool of the repository's: it reads the
roster (libs/service_roster) and the services' code, and nothing of the services imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from roster_files import docs, k8s, monitoring, swarm
from roster_files.common import HEADER
from service_roster import Service, load

# The targets: a file the roster determines is one entry here.
TARGETS: dict[str, Callable[[list[Service], Path], str]] = {
    (k8s.BASE / "kustomization.yaml").as_posix(): k8s.base_kustomization,
    (k8s.BASE / "ingress.yaml").as_posix(): k8s.ingress,
    (k8s.BASE / "networkpolicy.yaml").as_posix(): k8s.network_policy,
    "monitoring/prometheus.yml": monitoring.prometheus_config,
    docs.SERVICES_README: docs.services_readme,
    docs.OPENAPI: docs.openapi_document,
    swarm.SWARM_FILE: swarm.swarm_stack_file,
}
PER_SERVICE: dict[str, Callable[[Service, Path], str]] = {
    (k8s.BASE / "{name}" / "kustomization.yaml").as_posix(): k8s.service_kustomization,
}


def generated_files(repo: Path) -> dict[str, str]:
    """Every roster-derived file's repo-relative path and full text, from `repo`'s roster."""
    services = load(repo / "services")
    files = {path: write(services, repo) for path, write in TARGETS.items()}
    for pattern, write_one in PER_SERVICE.items():
        files |= {pattern.format(name=service.name): write_one(service, repo) for service in services}
    return files


def stale_files(repo: Path) -> list[str]:
    """Per-service files this command wrote for a service the roster no longer has."""
    names = {service.name for service in load(repo / "services")}
    stale = []
    for pattern in PER_SERVICE:
        position = Path(pattern).parts.index("{name}")
        for path in sorted(repo.glob(pattern.format(name="*"))):
            relative = path.relative_to(repo)
            if relative.parts[position] not in names and path.read_text().startswith(HEADER):
                stale.append(relative.as_posix())
    return stale
