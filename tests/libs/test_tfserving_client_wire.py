"""Our TensorFlow-free protos and the official tensorflow-serving-api classes read each other's
bytes, in both directions; and the committed generated modules are what the generator makes."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.libs.wire_peer import REQUEST_INPUTS, RESPONSE_OUTPUTS, as_json

CLIENT_LIB = REPO_ROOT / "libs" / "tfserving_client"


def run_peer(role: str, given: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, "-m", "tests.libs.wire_peer", role], input=json.dumps(given or {}),
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_our_requests_parse_with_the_official_classes():
    decoded = run_peer("official-decode", run_peer("ours-encode"))
    assert decoded["model_name"] == "lstm"
    assert decoded["version_label"] == "stable"
    assert decoded["signature_name"] == "serving_default"
    assert decoded["output_filter"] == ["softmax"]
    assert decoded["status_model"] == "cv_sod" and decoded["status_version"] == 7
    assert set(decoded["inputs"]) == set(REQUEST_INPUTS)
    for name, array in REQUEST_INPUTS.items():
        expected = as_json(array)
        got = decoded["inputs"][name]
        assert got["shape"] == expected["shape"], name
        assert got["values"] == pytest.approx(expected["values"]) if array.dtype != object \
            else got["values"] == expected["values"], name
    assert decoded["inputs"]["nwords"]["dtype"] == "int32"
    assert decoded["inputs"]["img_in"]["dtype"] == "float32"


def test_official_responses_parse_with_our_classes():
    decoded = run_peer("ours-decode", run_peer("official-encode"))
    assert decoded["model_name"] == "lstm" and decoded["model_version"] == 3
    assert decoded["versions"] == {"1": "AVAILABLE", "2": "LOADING"}
    for name, array in RESPONSE_OUTPUTS.items():
        got = decoded["outputs"][name]
        assert got["shape"] == list(array.shape), name
        assert got["dtype"] == str(array.dtype), name
        if array.dtype == object:
            assert got["values"] == [v.decode() for v in array.ravel()]
        else:
            np.testing.assert_allclose(got["values"], array.ravel().tolist(), rtol=1e-6)
    assert decoded["outputs"]["constant"] == {"shape": [2, 2], "dtype": "float32", "values": [0.5] * 4}


def test_generated_protos_are_up_to_date(tmp_path):
    result = subprocess.run([sys.executable, str(CLIENT_LIB / "generate_protos.py"), str(tmp_path / "protos")],
                            capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    committed = CLIENT_LIB / "tfserving_client" / "protos"
    fresh_files = sorted(p.relative_to(tmp_path / "protos") for p in (tmp_path / "protos").rglob("*.py"))
    committed_files = sorted(p.relative_to(committed) for p in committed.rglob("*.py"))
    assert fresh_files == committed_files
    _, mismatch, errors = filecmp.cmpfiles(committed, tmp_path / "protos", [str(p) for p in fresh_files], shallow=False)
    assert not mismatch and not errors, f"regenerate with libs/tfserving_client/generate_protos.py: {mismatch}"
