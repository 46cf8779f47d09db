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


@pytest.mark.slow
@pytest.mark.docker
def test_quick_compose_cells_run_through_the_published_port(docker_host, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--modes", "compose", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = json.loads((tmp_path / "matrix.json").read_text())["cells"]
    assert {(c["variant"], c["route"]) for c in cells} == {("compose", "/lstm"), ("compose", "/cv_sod")}
    for cell in cells:
        assert cell["requests"] > 0 and cell["socket_errors"] == 0 and cell["non_2xx"] == 0, cell
        assert cell["cpu_ms_per_request"] > 0, "the containers' CPU is metered"
