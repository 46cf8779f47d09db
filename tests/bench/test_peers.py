"""bench.peers in its quick form, so it cannot rot: the stack, LitServe and BentoML up side by side
(the peers in their own venv), every system's answers to the check sentences the same before any
load, and a cell of each at 1 and 10 connections written to the table and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_quick_peer_cells_run_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.peers", "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "answers agree: 13 sentences, ours, LitServe, BentoML" in result.stdout + result.stderr
    data = json.loads((tmp_path / "peers.json").read_text())
    cells = {(c["variant"], c["connections"]): c for c in data["cells"]}
    assert set(cells) == {(s, n) for s in ("ours", "LitServe", "BentoML") for n in (1, 10)}
    for cell in cells.values():
        assert cell["rps"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0 and cell["cpu_ms_per_request"] > 0, cell
    for system in ("ours", "LitServe", "BentoML"):
        assert cells[(system, 1)]["socket_errors"] == cells[(system, 1)]["non_2xx"] == 0, cells[(system, 1)]
    assert set(data["idle_cpu_ms_per_s"]) == {"ours", "LitServe", "BentoML"}
    report = (tmp_path / "peers.md").read_text()
    assert "| connections | ours answers/s" in report and "- c=10: LitServe" in report and "Goals (issue 35)" in report
