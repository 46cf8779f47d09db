"""The OpenAPI document nginx serves at /openapi.json: valid OpenAPI 3.1, written from the services'
request and reply models (service_kit.http.openapi; `./stack generate` commits it, and
tests/roster_files/test_generated_files.py compares), and listing exactly the public routes the roster's
services expose (nginx passes each service's routes and what is below them on; health and
metrics routes stay internal)."""

from __future__ import annotations

import json

from openapi_spec_validator import validate

from service_kit.http.app import service_app
from service_roster import service_class
from tests.conftest import REPO_ROOT, ROSTER
from tests.services.conftest import FakeModelClient, fake_sentiment
from text_api.sentiment import SentimentService

SPEC = json.loads((REPO_ROOT / "services" / "nginx" / "static" / "openapi.json").read_text())
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def exposed_routes() -> set[tuple[str, str]]:
    """What each service's app serves under its roster routes (the model is never called)."""
    exposed = set()
    for service in ROSTER:
        app = service_app(service_class(service), client=FakeModelClient(lambda inputs: {}))
        prefixes = tuple(service.routes)
        exposed |= {(rule.rule, method.lower()) for rule in app.url_map.iter_rules()
                    if rule.rule.startswith(prefixes) for method in rule.methods & HTTP_METHODS}
    return exposed


def documented_routes() -> set[tuple[str, str]]:
    return {(path, method) for path, methods in SPEC["paths"].items() for method in methods}


def test_the_document_is_valid_openapi_3():
    validate(SPEC)
    assert SPEC["openapi"].startswith("3.1")


def test_the_document_lists_exactly_the_public_routes():
    exposed, documented = exposed_routes(), documented_routes()
    assert exposed, "the services expose routes"
    assert documented == exposed, {"undocumented": exposed - documented, "not served": documented - exposed}


def test_every_operation_documents_its_errors_as_json():
    for path, methods in SPEC["paths"].items():
        for method, operation in methods.items():
            errors = {status: answer for status, answer in operation["responses"].items() if status >= "400"}
            assert {"400", "413", "502", "503", "504"} <= set(errors), (path, method)
            for answer in errors.values():
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            assert "Retry-After" in errors["503"]["headers"]
            timeout = next(p for p in operation["parameters"] if p["name"] == "X-Request-Timeout-Ms")
            assert timeout["schema"] == {"type": "integer", "minimum": 1}, "whole milliseconds"


def test_a_request_field_the_document_limits_is_refused_as_it_says():
    """The document's limits are the ones the service applies: a text one character over maxLength
    is refused (413), one at it is answered."""
    line = SPEC["components"]["schemas"]["OneLine"]["properties"]["line"]
    app = service_app(SentimentService, client=FakeModelClient(fake_sentiment))
    over = app.test_client().post("/lstm", json={"line": "好" * (line["maxLength"] + 1)})
    assert (over.status_code, over.json["error"]["code"]) == (413, "text_too_long")
    at = app.test_client().post("/lstm", json={"line": "好" * line["maxLength"]})
    assert at.status_code == 200, at.json
