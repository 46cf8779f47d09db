"""The open-loop harness in its quick form, so it cannot rot: three stacks (no batching,
coalescing, deadline-aware), k6 sending on schedule at 25% and 120% of the measured capacity, and
the table, JSON and plot written from real answers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_quick_open_loop_cells_run_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.open_loop", "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "open_loop.json").read_text())
    assert data["capacity_rps"] > 0
    cells = {(c["variant"], c["share"]): c for c in data["cells"]}
    variants = ("no batching", "coalescing", "deadline-aware, unbounded", "deadline-aware")
    assert set(cells) == {(v, s) for v in variants for s in (0.25, 1.2)}
    for cell in cells.values():
        assert cell["admitted"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0, cell
    for variant in variants:
        light = cells[(variant, 0.25)]
        assert light["failed"] == 0 and light["unsent"] == 0, light
        assert light["admitted"] >= 0.9 * light["offered_rps"] * light["seconds"], "a light load is all answered"
    assert light["in_deadline_rps"] > 0.9 * light["admitted_rps"], "a light load is answered in time"
    overloaded = cells[("deadline-aware", 1.2)]
    assert overloaded["in_deadline_rps"] > 0 and overloaded["shed"] > 0, overloaded
    report = (tmp_path / "open_loop.md").read_text()
    assert "| deadline-aware | 120% |" in report and "## nginx's bound against none" in report
    assert (tmp_path / "open_loop_lstm.png").stat().st_size > 1000
