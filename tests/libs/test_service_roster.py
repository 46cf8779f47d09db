"""The roster (services/*/service.toml): read strictly, and what is not generated from it agrees
with it (compose.yaml, models.config). What is generated from it: nginx's config (here) and the
committed files `./stack generate` writes (tests/roster_files/test_generated_files.py)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml

import service_roster
from service_roster import Service, nginx_conf
from tests.conftest import MODEL_REPOSITORY, REPO_ROOT, ROSTER


def roster_entry(service: Service) -> str:
    """Its service.toml, with whatever fields the roster has (TOML's strings are JSON's)."""
    values = {f.name: getattr(service, f.name) for f in dataclasses.fields(service)
              if getattr(service, f.name) != f.default}
    return "".join(f"{name} = {json.dumps(list(v) if isinstance(v, tuple) else v)}\n" for name, v in values.items())


# A made-up service: today's first one, renamed and rerouted (its other fields as the roster's are).
ECHO = dataclasses.replace(ROSTER[0], name="echo-api", package="echo_api", routes=("/echo",), body_limit="64k",
                           model="echo", preload="")
ENTRY = roster_entry(ECHO)


def write_entry(tmp_path, text: str, folder: str = "echo-api"):
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / folder / "service.toml").write_text(text)
    return tmp_path / folder / "service.toml"


def test_an_entry_reads_with_its_limit_in_bytes(tmp_path):
    service = service_roster.read_service(write_entry(tmp_path, ENTRY))
    assert service.routes == ("/echo",) and service.upstream == "echo_api"
    assert service.body_limit_bytes == 64 * 1024 and service.body_limit_text == "64 KB"


@pytest.mark.parametrize(("change", "complaint"), [
    (('body_limit = "64k"', 'body_limit = "64 KB"'), "body_limit"),
    (('routes = ["/echo"]', 'routes = ["echo/"]'), "routes"),
    (('model = "echo"\n', ""), "fields"),
])
def test_a_mistyped_entry_stops_whoever_reads_it_naming_the_file(tmp_path, change, complaint):
    path = write_entry(tmp_path, ENTRY.replace(*change))
    with pytest.raises(ValueError, match=complaint) as caught:
        service_roster.read_service(path)
    assert str(path) in str(caught.value)


def test_a_service_is_named_as_its_folder(tmp_path):
    path = write_entry(tmp_path, ENTRY.replace('name = "echo-api"', 'name = "other"'))
    with pytest.raises(ValueError, match="folder") as caught:
        service_roster.load(tmp_path)
    assert str(path) in str(caught.value)


def test_two_services_cannot_claim_one_route(tmp_path):
    write_entry(tmp_path, ENTRY)
    write_entry(tmp_path, ENTRY.replace("echo-api", "echo2-api").replace("echo_api", "echo2_api"), "echo2-api")
    with pytest.raises(ValueError, match="claimed twice"):
        service_roster.load(tmp_path)


def test_every_service_folder_with_a_package_is_in_the_roster():
    folders = {path.parent.parent.name for path in (REPO_ROOT / "services").glob("*/*/__init__.py")}
    assert folders == {service.name for service in ROSTER}


def test_compose_has_each_service_with_the_model_the_roster_names():
    services = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]
    for service in ROSTER:
        assert service.name in services, f"compose.yaml has no {service.name}"
        assert services[service.name]["environment"].get("MODEL_NAME", service.model) == service.model


def test_every_model_the_roster_names_is_in_models_config():
    configured = set(re.findall(r'^\s*name:\s*"([^"]+)"', (MODEL_REPOSITORY / "models.config").read_text(), re.M))
    assert {service.model for service in ROSTER} <= configured


def test_nginx_lists_the_roster_routes_and_limits():
    conf = nginx_conf.render(nginx_conf.values_for_compose(ROSTER, REPO_ROOT / nginx_conf.STATIC),
                             (REPO_ROOT / nginx_conf.TEMPLATE).read_text())
    index = json.loads(re.search(r'"routes":(\[[^]]*\])', conf).group(1))
    assert {"POST /lstm", "GET /lstm?line=BASE64", "GET /lstm/predict?line=BASE64", "POST /lstm/predict",
            "POST /cv_sod", "GET /cv_sod?img=BASE64"} <= set(index)
    document = json.loads((REPO_ROOT / nginx_conf.STATIC / "openapi.json").read_text())
    listed = {(method, entry.split()[1].split("?")[0]) for entry in index for method in entry.split()[0].split("|")}
    assert listed == {(method.upper(), path) for path, operations in document["paths"].items()
                      for method in operations}, "GET / lists the operations of the OpenAPI document, no other"
    for service in ROSTER:
        assert f"upstream {service.upstream} {{" in conf
        assert f"server {service.name}:8000 resolve max_fails=1 fail_timeout=2s;" in conf
        for route in service.routes:
            assert f"location = {route} {{\n            client_max_body_size {service.body_limit};" in conf
        assert f"{service.body_limit_text} for {service.routes[0]}" in conf
