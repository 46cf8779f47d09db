"""Doors that must stay shut, checked over the product's source (the benchmark's rebuild of the
documents' design in bench/ is exempt: it is the unsafe baseline on purpose)."""

from __future__ import annotations

import re

import pytest

from service_roster import nginx_conf
from tests.conftest import REPO_ROOT, ROSTER

PRODUCT = ["services", "libs", "tfserving/model_server", "local_stack", "training"]
FORBIDDEN = {
    "pickle": r"\bimport pickle\b|\bpickle\.|\bcPickle\b|allow_pickle=True",
    "eval/exec": r"(?<![\w.])(eval|exec)\(",
    "a debug server": r"DebuggedApplication|debug\s*=\s*True|\.run\(debug|use_debugger",
    "Flask's development server": r"\bapp\.run\(|\.run\(\s*host=",
    "shell commands built from strings": r"shell\s*=\s*True|os\.system\(",
}


def product_files():
    for folder in PRODUCT:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if "/protos/" not in str(path) and "__pycache__" not in str(path):
                yield path


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_no_forbidden_calls_in_the_product(what):
    pattern = re.compile(FORBIDDEN[what])
    found = [f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
             for path in product_files()
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line) and not line.lstrip().startswith("#")]
    assert not found, f"{what} in the product:\n" + "\n".join(found)


def test_the_scan_sees_the_product():
    assert len(list(product_files())) > 30
    assert re.search(FORBIDDEN["Flask's development server"],
                     (REPO_ROOT / "bench" / "documents_baseline.py").read_text()), "the scan would catch it"


def test_limits_and_timeouts_are_documented():
    documented = (REPO_ROOT / "services" / "README.md").read_text()
    rendered = nginx_conf.render(nginx_conf.values_for_compose(ROSTER, REPO_ROOT / nginx_conf.STATIC),
                                 (REPO_ROOT / nginx_conf.TEMPLATE).read_text())
    for directive in ("client_header_timeout", "client_body_timeout", "send_timeout", "proxy_read_timeout",
                      "large_client_header_buffers", "client_max_body_size"):
        assert directive in rendered and f"`{directive}`" in documented, directive
