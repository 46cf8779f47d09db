"""The benchmark harness, in its quick form, so it cannot rot: every variant starts, wrk runs
through nginx, and the report and plots are written with real numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_quick_matrix_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "matrix.json").read_text())
    variants = {cell["variant"] for cell in data["cells"]}
    assert {"documents", "untuned", "tuned", "http-ceiling", "scale-2"} <= variants
    for cell in data["cells"]:
        assert cell["requests"] > 0 and cell["rps"] > 0, cell
        assert cell["socket_errors"] == 0 and cell["non_2xx"] == 0, cell
    assert data["ceilings"]["lstm"]["examples_per_second"] > 0
    assert "| tuned | /lstm |" in (tmp_path / "matrix.md").read_text()
    assert (tmp_path / "lstm_throughput.png").stat().st_size > 1000
