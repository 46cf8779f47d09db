"""The soak command in its short form, with gunicorn recycling workers every 1,000 requests: the
stack keeps answering, and what recycling used to pile up (metric files, /metrics time, open
files) stays where it was."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_a_short_soak_with_recycling_loses_nothing_and_piles_nothing_up(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.soak", "--minutes", "2", "--minute-seconds", "15",
                             "--max-requests", "1000", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    minutes = json.loads((tmp_path / "soak.json").read_text())["minutes"]
    first, last = minutes[0], minutes[-1]
    assert all(m["failed"] == 0 and m["rps"] > 0 for m in minutes), minutes
    # 4 API instances, each: its live worker's counter and histogram files and the two archives
    # (about 30 recycles each would have left 60 files apiece before).
    assert last["metric_files"] <= 4 * 5, minutes
    assert last["scrape_ms"] < 3 * first["scrape_ms"] + 20, minutes
    # Files, not sockets: sockets follow the load and nginx's keep-alive pools, which are still filling
    # after the first half-minute (131 -> 237 descriptors in one CI run with nothing leaking).
    assert last["regular_files"] <= first["regular_files"] + 20, minutes
    assert "| minute | req/s |" in (tmp_path / "soak.md").read_text()
