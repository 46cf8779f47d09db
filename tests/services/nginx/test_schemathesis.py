"""schemathesis against the local stack through nginx: what the OpenAPI document nginx serves
promises (statuses, content types, headers, bodies, which inputs are valid) is what nginx and the
services behind it do, for generated valid and invalid requests as well as the document's examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.schemathesis_run import run_schemathesis

pytestmark = pytest.mark.slow


def test_the_stack_keeps_what_its_openapi_document_says(stack: Stack, tmp_path: Path) -> None:
    run = run_schemathesis(stack.url, tmp_path / "schemathesis")
    assert run.returncode == 0, run.failures()
