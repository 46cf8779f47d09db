"""The open-loop harness in its quick form, so it cannot rot: the production stack under both
placements (the stack on one core and k6 on the other; both on both), k6 sending on schedule at
25% and 120% of each placement's measured capacity, where admitted requests' time went and who
refused, what a refusal costs, and the table, JSON and plot written from real answers."""

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
    assert set(data["capacity_rps"]) == {"split", "shared"} and min(data["capacity_rps"].values()) > 0
    cells = {(c["placement"], c["share"]): c for c in data["cells"]}
    assert set(cells) == {(p, s) for p in ("split", "shared") for s in (0.25, 1.2)}
    for cell in cells.values():
        assert cell["variant"] == "deadline-aware"
        assert cell["admitted"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0, cell
        assert cell["k6_cpu_ms_per_s"] > 0, "k6's own CPU is measured"
        stages = cell["stages"]
        assert set(stages) == {"outside", "preprocess", "queue", "model", "total"}, stages
        assert stages["total"][0] >= stages["model"][0] > 0, "the workers' Server-Timing is read"
        assert sum(cell["refused_by"].values()) == cell["shed"], cell["refused_by"]
    for placement in ("split", "shared"):
        light = cells[(placement, 0.25)]
        assert light["failed"] == 0 and light["unsent"] == 0, light
        assert light["admitted"] >= 0.9 * light["offered_rps"] * light["seconds"], "a light load is all answered"
        assert light["in_deadline_rps"] > 0.9 * light["admitted_rps"], "a light load is answered in time"
        overloaded = cells[(placement, 1.2)]
        assert overloaded["in_deadline_rps"] > 0 and overloaded["shed"] > 0, overloaded
        assert overloaded["refused_by"]["nginx"] > 0, "nginx's bound refuses at 120%"
    costs = {c["by"]: c for c in data["refusal_costs"]}
    assert set(costs) == {"nginx", "worker"}
    for cost in costs.values():
        assert cost["refusals"] > 0 and cost["others"] == 0, cost
    assert costs["nginx"]["api_us"] == 0, "nginx refused without the API processes (they were stopped)"
    assert costs["worker"]["api_us"] > 0, costs
    report = (tmp_path / "open_loop.md").read_text()
    assert "## split: the stack on one core, k6 on another" in report and "## What a refusal costs" in report
    assert "who refused" in report
    assert (tmp_path / "open_loop_lstm.png").stat().st_size > 1000
