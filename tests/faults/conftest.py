"""Fault scenarios add a row each to a table printed at the end of the run. They share the
session's local stack (tests/conftest.py) and leave it whole."""

from __future__ import annotations

import pytest

ROWS: list[dict[str, str]] = []


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
