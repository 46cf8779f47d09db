"""One local stack for the fault, hostile-input and slow-client tests (each leaves it whole);
fault scenarios add a row each to a table printed at the end of the run."""

from __future__ import annotations

import pytest

from tests.conftest import running_stack

ROWS: list[dict[str, str]] = []


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """`./stack up` with 2 text-api instances (compose.yaml's default), through its nginx."""
    with running_stack(tmp_path_factory.mktemp("faults-stack"), "--scale", "text-api=2") as stack:
        yield stack


@pytest.fixture
def fault_table() -> list[dict[str, str]]:
    return ROWS


def pytest_terminal_summary(terminalreporter) -> None:
    if not ROWS:
        return
    terminalreporter.section("faults: what each one cost")
    terminalreporter.write_line("| scenario | load | failed | recovery |")
    terminalreporter.write_line("|---|---|---:|---|")
    for row in ROWS:
        terminalreporter.write_line(f"| {row['scenario']} | {row['load']} | {row['failed']} | {row['recovery']} |")
