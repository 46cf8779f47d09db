"""The files the roster determines are `./stack generate`'s output (so they cannot drift from it),
and the generator gives a new service everything: its k8s objects and route, its scrape job, its
README row."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from roster_files import docs, generated_files, stale_files
from roster_files.__main__ import main as generate
from service_roster import Service
from tests.conftest import REPO_ROOT, ROSTER
from tests.libs.test_service_roster import roster_entry

# A service the roster lacks (a name no user would pick: a copy may already have tests/own_model.py's).
THIRD = dataclasses.replace(ROSTER[0], name="made-up-api", package="made_up_api", routes=("/made-up", "/made-up-too"),
                            body_limit="64k", model="made_up", preload="")
ROW = "| `made-up-api` | `made_up_api` | `/made-up`, `/made-up-too` | `made_up` | 64 KB |\n"


def add_service(repo: Path, service: Service) -> None:
    (repo / "services" / service.name).mkdir()
    (repo / "services" / service.name / "service.toml").write_text(roster_entry(service))


@pytest.mark.parametrize("path", sorted(generated_files(REPO_ROOT)))
def test_the_committed_file_is_what_the_generator_writes(path):
    committed = (REPO_ROOT / path).read_text() if (REPO_ROOT / path).is_file() else None
    assert committed == generated_files(REPO_ROOT)[path], \
        f"{path} is made from the roster: run `./stack generate` (python -m roster_files) and commit it"


def test_no_generated_file_is_left_from_a_service_that_is_gone():
    assert stale_files(REPO_ROOT) == [], "run `./stack generate`: it removes them"


def copy_for_generating(target: Path, *extra: Service) -> Path:
    """What the generator reads (the roster, the README, k8s/), copied, with `extra` roster entries
    added: the real tree is not touched."""
    for service in (REPO_ROOT / "services").glob("*/service.toml"):
        (target / service.parent.relative_to(REPO_ROOT)).mkdir(parents=True)
        shutil.copy(service, target / service.relative_to(REPO_ROOT))
    shutil.copy(REPO_ROOT / docs.SERVICES_README, target / docs.SERVICES_README)
    shutil.copy(REPO_ROOT / "compose.yaml", target / "compose.yaml")
    shutil.copytree(REPO_ROOT / "k8s", target / "k8s")
    for service in extra:
        add_service(target, service)
    return target


@pytest.fixture
def repo_with_a_third_service(tmp_path) -> Path:
    return copy_for_generating(tmp_path, THIRD)


def test_a_third_service_gets_its_route_objects_scrape_job_and_readme_row(repo_with_a_third_service):
    files = generated_files(repo_with_a_third_service)
    ingresses = {d["metadata"]["name"]: d for d in yaml.safe_load_all(files["k8s/base/ingress.yaml"])}
    ingress = ingresses[THIRD.name]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "64k"
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == list(THIRD.routes)
    assert {p["backend"]["service"]["name"] for p in paths} == {THIRD.name}

    base = yaml.safe_load(files["k8s/base/kustomization.yaml"])
    assert THIRD.name in base["resources"]
    assert {"name": "model-serving/made-up-api", "newTag": "1.0.0"} in base["images"]
    own = yaml.safe_load(files["k8s/base/made-up-api/kustomization.yaml"])
    assert own["namePrefix"] == "made-up-" and own["images"][0]["newName"] == "model-serving/made-up-api"
    assert "value: {name: MODEL_NAME, value: made_up}" in own["patches"][0]["patch"]
    assert len(own["patches"]) == 1, "no deployment-patch.yaml of its own, none taken in"
    policy = yaml.safe_load(files["k8s/base/networkpolicy.yaml"])
    assert THIRD.name in policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]

    jobs = {job["job_name"]: job for job in yaml.safe_load(files["monitoring/prometheus.yml"])["scrape_configs"]}
    assert jobs[THIRD.name]["dns_sd_configs"][0]["names"] == [THIRD.name]

    readme = files[docs.SERVICES_README]
    assert ROW in readme
    assert readme.replace(ROW, "") == (REPO_ROOT / docs.SERVICES_README).read_text(), "only the table changes"


def test_the_command_writes_checks_and_removes_what_a_gone_service_left(repo_with_a_third_service, capsys):
    repo = repo_with_a_third_service
    assert generate(["--repo", str(repo), "--check"]) == 1
    assert "k8s/base/made-up-api/kustomization.yaml" in capsys.readouterr().out
    assert generate(["--repo", str(repo)]) == 0
    assert generate(["--repo", str(repo), "--check"]) == 0
    shutil.rmtree(repo / "services" / THIRD.name)
    assert generate(["--repo", str(repo), "--check"]) == 1
    assert "no longer has" in capsys.readouterr().out
    assert generate(["--repo", str(repo)]) == 0
    assert not (repo / "k8s" / "base" / THIRD.name).exists()
    assert (repo / "k8s" / "base" / "api-service" / "kustomization.yaml").exists(), "hand-written: kept"


def test_k8s_needs_a_name_it_can_prefix(repo_with_a_third_service):
    add_service(repo_with_a_third_service, dataclasses.replace(THIRD, name="made-up", routes=("/m",)))
    with pytest.raises(ValueError, match="-api"):
        generated_files(repo_with_a_third_service)


def test_a_readme_without_the_markers_is_refused(repo_with_a_third_service):
    (repo_with_a_third_service / docs.SERVICES_README).write_text("# services\n")
    with pytest.raises(ValueError, match="roster table"):
        generated_files(repo_with_a_third_service)
