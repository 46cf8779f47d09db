"""The OpenAPI document nginx serves at /openapi.json: valid OpenAPI 3, and listing exactly the
public routes the services expose (nginx passes /lstm... and /cv_sod... on; health and metrics
routes stay internal)."""

from __future__ import annotations

import json

from openapi_spec_validator import validate

from tests.conftest import REPO_ROOT
from tests.services.conftest import FakeModelClient, fake_saliency, fake_sentiment
from text_api import create_app as create_text_app
from text_api.settings import TextApiSettings
from vision_api import create_app as create_vision_app
from vision_api.settings import VisionApiSettings

SPEC = json.loads((REPO_ROOT / "services" / "nginx" / "static" / "openapi.json").read_text())
PUBLIC_PREFIXES = ("/lstm", "/cv_sod")  # nginx's locations that proxy to the services
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def exposed_routes() -> set[tuple[str, str]]:
    apps = [create_text_app(TextApiSettings(), client=FakeModelClient(fake_sentiment)),
            create_vision_app(VisionApiSettings(), client=FakeModelClient(fake_saliency))]
    return {(rule.rule, method.lower()) for app in apps for rule in app.url_map.iter_rules()
            if rule.rule.startswith(PUBLIC_PREFIXES) for method in rule.methods & HTTP_METHODS}


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
