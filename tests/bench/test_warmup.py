"""The warm-up harness in its shortest form (one fresh start with --enable_model_warmup=true, one with
false): it completes, writes its tables, and the servers did what the flag says: with warm-up on, each
model's log reports its records read (lstm 2, cv_sod 1, as tfserving/models ships them) before it
turned AVAILABLE; with it off, none. Timing ratios are the harness's to report, not asserted here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import warmup as bench
from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_one_start_each_way_completes_and_warmup_runs_only_when_on(tmp_path):
    out, logs = tmp_path / "warmup.md", tmp_path / "logs"
    result = subprocess.run([sys.executable, "-m", "bench.warmup", "--starts", "1", "--out", str(out),
                             "--log-dir", str(logs)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = out.read_text()
    for heading in ("## lstm", "## cv_sod", "## lstm, then a shape no warm-up record has", "## Start-up",
                    "## Every start"):
        assert f"\n{heading}\n" in table, table
    assert table.count("\n| on | 1 | ") == 2 and table.count("\n| off | 1 | ") == 2, table
    assert "| on 1 |" in table and "| off 1 |" in table, table

    on_log = (logs / "warmup-on-1.log").read_text(errors="replace")
    read = {path.rsplit("/", 2)[-2]: int(records) for path, records, _ in bench.WARMUP_READ.findall(on_log)}
    assert read == {"lstm": 2, "cv_sod": 1}, on_log[-3000:]
    for model in bench.ORDER:  # read before the version took traffic
        finished = on_log.index(f"Finished reading warmup data for model at {bench.MODELS / model / '1'}.")
        assert finished < on_log.index(f"Successfully loaded servable version {{name: {model} version: 1}}")
    off_log = (logs / "warmup-off-1.log").read_text(errors="replace")
    assert "Successfully loaded servable version {name: cv_sod version: 1}" in off_log, off_log[-3000:]
    assert "warmup" not in off_log.lower(), off_log[-3000:]
