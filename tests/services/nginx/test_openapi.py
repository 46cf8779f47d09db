"""The OpenAPI document nginx serves at /openapi.json: valid OpenAPI 3, and listing exactly the
public routes the roster's services expose (nginx passes each service's routes and what is below
them on; health and metrics routes stay internal)."""

from __future__ import annotations

import importlib
import json

from openapi_spec_validator import validate

from tests.conftest import REPO_ROOT, ROSTER
from tests.services.conftest import FakeModelClient

SPEC = json.loads((REPO_ROOT / "services" / "nginx" / "static" / "openapi.json").read_text())
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def exposed_routes() -> set[tuple[str, str]]:
    """What each service's app serves under its roster routes (the model is never called)."""
    exposed = set()
    for service in ROSTER:
        app = importlib.import_module(service.package).create_app(client=FakeModelClient(lambda inputs: {}))
        prefixes = tuple(service.routes)
        exposed |= {(rule.rule, method.lower()) for rule in app.url_map.iter_rules()
                    if rule.rule.startswith(prefixes) for method in rule.methods & HTTP_METHODS}
    return exposed


def documented_routes() -> set[tuple[str, str]]:
    return {(path, method) for path, methods in SPEC["paths"].items() for method in methods}


def test_the_document_is_valid_openapi_3():
    validate(SPEC)
    assert SPEC["openapi"].startswith("3.")


def test_the_document_lists_exactly_the_public_routes():
    exposed, documented = exposed_routes(), documented_routes()
    assert exposed, "the services expose routes"
    assert documented == exposed, {"undocumented": exposed - documented, "not served": documented - exposed}


def test_every_operation_documents_its_errors_as_json():
    for path, methods in SPEC["paths"].items():
        for method, operation in methods.items():
            errors = {status: answer for status, answer in operation["responses"].items() if status >= "400"}
            assert {"400", "503", "504"} <= set(errors), (path, method)
            for answer in errors.values():
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            assert "Retry-After" in errors["503"]["headers"]
