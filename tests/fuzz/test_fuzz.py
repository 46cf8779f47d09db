"""The fuzzers in the suite (issue 20): every committed corpus input replayed through its harness
(a past finding stays a regression test), and each harness fuzzed for FUZZ_SECONDS by atheris in
a child process, whose exit status and output decide (a finding, a crash, an input past the time
or memory limit all end it non-zero).

The committed corpus is never written: the run's new inputs and findings go to a scratch folder.
A finding is reported with its reproducer; to keep it, copy it to
tests/fuzz/corpus/<harness>/finding-<what> and its replay below becomes its regression test.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from tests.fuzz import run
from tests.fuzz.run import CORPUS, HARNESSES

FUZZ_SECONDS = 15
# A harness's start before it fuzzes: importing TensorFlow or OpenCV and reading the corpus.
START_SECONDS = 90

# Findings whose fix is still to come: file -> why it fails today (the test passes once fixed).
KNOWN_FINDINGS: dict[str, str] = {}
# Decoding findings awaiting their fix: file -> why. The test below replays every finding without
# the decoding child's memory limit: the decoder's real peak. Fixed so far: OpenCV's PNG reader
# allocating a chunk's declared length before reading it (finding-png-*, 4,000,000,000 declared:
# 3.9 GB; read_header now refuses a chunk that runs past the end of the file).
DECODE_FINDINGS_AWAITING_FIX: dict[str, str] = {}


def harness(name: str):
    module_name, _ = HARNESSES[name]
    return getattr(importlib.import_module(module_name), name)


def awaiting(values: tuple, key: str, findings: dict[str, str]):
    """A test parameter, expected to fail (strictly) while `findings` says it awaits its fix."""
    marks = [pytest.mark.xfail(strict=True, reason=findings[key])] if key in findings else []
    return pytest.param(*values, id=key, marks=marks)


def corpus_inputs() -> list:
    return [awaiting((name, path), f"{name}/{path.name}", KNOWN_FINDINGS)
            for name in HARNESSES for path in sorted((CORPUS / name).iterdir())]


@pytest.mark.parametrize(("name", "path"), corpus_inputs())
def test_corpus_input_keeps_its_property(name, path):
    harness(name)(path.read_bytes())


def decode_findings() -> list:
    return [awaiting((path,), path.name, DECODE_FINDINGS_AWAITING_FIX)
            for path in sorted((CORPUS / "fuzz_image_decode").glob("finding-*"))]


@pytest.mark.parametrize("path", decode_findings())
def test_decoding_a_finding_takes_no_more_than_working_bytes_even_unbounded(path, tmp_path):
    """A decoding finding replayed without the decoding child's memory limit (in a child process):
    its real peak, not just what the service's limit lets through, stays within working_bytes()."""
    done = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "fuzz_image_decode", "-rss_limit_mb=1024",
                           f"-timeout={run.INPUT_TIMEOUT_SECONDS}", f"-artifact_prefix={tmp_path}/",
                           str(path)], capture_output=True, text=True, errors="replace", timeout=120,
                          env={**os.environ, "FUZZ_DECODE_UNCAPPED": "1"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]


def test_the_corpus_is_small_and_seeded_for_every_harness():
    for name in HARNESSES:
        files = list((CORPUS / name).iterdir())
        assert 10 <= len(files) <= 80, (name, len(files))
        assert sum(f.stat().st_size for f in files) < 1_000_000, name
    assert set(KNOWN_FINDINGS) <= {f"{p.parent.name}/{p.name}" for p in CORPUS.glob("*/finding-*")}
    assert set(DECODE_FINDINGS_AWAITING_FIX) <= {p.name for p in (CORPUS / "fuzz_image_decode").glob("finding-*")}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HARNESSES))
def test_fuzzing_finds_nothing(name, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in (CORPUS / name).iterdir()}
    try:
        done = subprocess.run(run.command(name, FUZZ_SECONDS, tmp_path), capture_output=True, text=True,
                              timeout=FUZZ_SECONDS + START_SECONDS, errors="replace")
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{name} did not end {START_SECONDS} s after its {FUZZ_SECONDS} s: "
                    f"{str(expired.stderr)[-3000:]}")
    findings = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    output = done.stdout + done.stderr
    assert done.returncode == 0 and not findings, (
        f"{name} exited {done.returncode}, findings {findings} in {tmp_path} (replay one: python -m "
        f"tests.fuzz.run {name} FILE; keep it as tests/fuzz/corpus/{name}/finding-*):\n{output[-6000:]}")
    assert "Done " in output and "cov: " in output, output[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (CORPUS / name).iterdir()} == before, "the corpus was written"
