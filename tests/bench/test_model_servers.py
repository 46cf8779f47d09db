"""bench.model_servers in its smallest form, so it cannot rot: both stacks up, every cell run, and
the second model server seen taking calls."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_one_against_two_model_servers_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.model_servers", "--rounds", "1", "--seconds", "2",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in (tmp_path / "model_servers.md").read_text().splitlines()
            if line.startswith("| `/")]
    assert [(r[0].strip(), r[2].strip()) for r in rows] == [("`/lstm`", "1"), ("`/lstm`", "2"),
                                                           ("`/cv_sod`", "1"), ("`/cv_sod`", "2")]
    for row in rows:
        assert float(row[3]) > 0 and row[7].strip() == "0", row
    for row in rows[1::2]:
        shares = [float(share.strip(" %")) for share in row[8].split("/")]
        assert len(shares) == 2 and min(shares) >= 25, f"the second model server takes calls: {row}"
