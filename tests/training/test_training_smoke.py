"""The training scripts still run end to end (tiny data, one epoch) and export servable models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def run_module(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def test_lstm_training_smoke(tmp_path):
    export = tmp_path / "lstm" / "1"
    run_module("training.lstm_sentiment", f"--export-dir={export}", "--limit=600", "--epochs=1", "--bag-epochs=1")
    assert (export / "saved_model.pb").exists()
    assert (export / "assets" / "vocab.words.txt").exists()
    assert (export / "assets.extra" / "tf_serving_warmup_requests").exists()
    assert 0.0 <= json.loads((tmp_path / "lstm" / "metrics.v1.json").read_text())["held_out_accuracy"] <= 1.0


def test_cv_sod_training_smoke(tmp_path):
    export = tmp_path / "cv_sod" / "1"
    run_module("training.cv_sod", f"--export-dir={export}", "--train-images=24", "--test-images=4",
               "--epochs=1", "--width=4", f"--examples-dir={tmp_path / 'examples'}")
    assert (export / "saved_model.pb").exists()
    assert json.loads((tmp_path / "cv_sod" / "metrics.v1.json").read_text())["held_out_images"] == 4
    assert len(list((tmp_path / "examples").glob("*.png"))) >= 3
