"""The rollout candidates (tests/faults/rollout_candidates.py) are what they claim: written whole
under their version number, and each answering as its kind says, compared with the source version
by TensorFlow in a child process (this process never imports it)."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MODEL_REPOSITORY, REPO_ROOT
from tests.faults.rollout_candidates import KINDS, write_candidate

pytestmark = pytest.mark.slow

TARGETS = {kind: number for number, kind in enumerate(KINDS, start=2)}

# Run in a child: loads version 1 and every candidate, answers a padded batch (nwords 2, 3, 4, 6, 1,
# 5) and, where that fails, the rows whose nwords is no multiple of 4; times a larger batch.
CHECK = r"""
import json, sys, time
import numpy as np
import tensorflow as tf

model_dir, versions = sys.argv[1], json.loads(sys.argv[2])
sentences = [["很", "好"], ["太", "差", "了"], ["这个", "产品", "很", "好"], ["质量", "太差", "了", "，", "不", "推荐"],
             ["好"], ["物流", "很快", "，", "包装", "也"]]
width = max(map(len, sentences))
words = np.array([s + ["<pad>"] * (width - len(s)) for s in sentences], dtype=object)
nwords = np.array([len(s) for s in sentences], dtype=np.int32)
safe = nwords % 4 != 0
long_words = np.array([(["这个", "产品", "很", "好", "用"] * 8)[:39]] * 8, dtype=object)
long_nwords = np.full(8, 39, dtype=np.int32)  # no multiple of 4: errors_on_some answers it


def answer(function, key, rows):
    out = function(**{key: tf.constant(words[rows]), "nwords": tf.constant(nwords[rows])})
    return {name: value.numpy().tolist() if value.dtype != tf.string else [v.decode() for v in value.numpy()]
            for name, value in out.items()}


def best_ms(function, key):
    feeds = {key: tf.constant(long_words), "nwords": tf.constant(long_nwords)}
    function(**feeds)
    times = []
    for _ in range(10):
        started = time.perf_counter()
        function(**feeds)
        times.append(time.perf_counter() - started)
    return min(times) * 1000


report = {"nwords": nwords.tolist(), "safe": safe.tolist()}
for name, version in [("source", 1), *versions.items()]:
    function = tf.saved_model.load(f"{model_dir}/{version}").signatures["serving_default"]
    inputs = function.structured_input_signature[1]
    entry = {"inputs": {k: [s.dtype.name, s.shape.as_list()] for k, s in inputs.items()},
             "outputs": {k: [s.dtype.name, s.shape.as_list()] for k, s in function.structured_outputs.items()}}
    key = "tokens" if "tokens" in inputs else "words"
    try:
        entry["answers"] = answer(function, key, slice(None))
    except tf.errors.OpError as error:
        entry["error"] = type(error).__name__
        entry["safe_answers"] = answer(function, key, safe)
    entry["ms"] = best_ms(function, key)
    report[name] = entry
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    repository = tmp_path_factory.mktemp("rollout") / "models"
    shutil.copytree(MODEL_REPOSITORY / "lstm" / "1", repository / "lstm" / "1")
    return repository, {kind: write_candidate(repository, kind, target=TARGETS[kind]) for kind in KINDS}


@pytest.fixture(scope="module")
def report(written) -> dict:
    repository, _ = written
    result = subprocess.run([sys.executable, "-c", CHECK, str(repository / "lstm"), json.dumps(TARGETS)],
                            cwd=REPO_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_same_answers(got: dict, want: dict) -> None:
    assert got["labels"] == want["labels"]
    assert got["classes_id"] == want["classes_id"]
    np.testing.assert_allclose(got["softmax"], want["softmax"], atol=1e-6)


def test_each_version_appears_whole_under_its_number(written):
    repository, paths = written
    assert sorted(p.name for p in (repository / "lstm").iterdir()) == sorted(["1", *map(str, TARGETS.values())])
    for kind, path in paths.items():
        assert path == repository / "lstm" / str(TARGETS[kind])
        assert (path / "saved_model.pb").is_file() and (path / "variables" / "variables.index").is_file()
        assert sorted(p.name for p in (path / "assets").iterdir()) == ["vocab.labels.txt", "vocab.words.txt"]
        assert (path / "assets.extra").exists() == (kind != "renamed_input"), kind
    same = filecmp.dircmp(repository / "lstm" / "1", paths["same"])
    assert not (same.left_only or same.right_only or same.diff_files)
    with pytest.raises(FileExistsError):
        write_candidate(repository, "same", target=TARGETS["slower"])
    with pytest.raises(ValueError):
        write_candidate(repository, "nonsense", target=99)


def test_the_writer_keeps_tensorflow_out_of_its_process(tmp_path):
    shutil.copytree(MODEL_REPOSITORY / "lstm" / "1", tmp_path / "lstm" / "1")
    script = ("import sys; from pathlib import Path; from tests.faults.rollout_candidates import write_candidate; "
              "write_candidate(Path(sys.argv[1]), 'same'); assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO_ROOT, check=True, timeout=60)


def test_same_and_renamed_input_answer_like_the_source(report):
    source = report["source"]
    assert report["same"]["inputs"] == source["inputs"]
    renamed = report["renamed_input"]["inputs"]
    assert renamed == {"tokens": source["inputs"]["words"], "nwords": source["inputs"]["nwords"]}
    for kind in ("same", "renamed_input"):
        assert report[kind]["outputs"] == source["outputs"], kind
        assert_same_answers(report[kind]["answers"], source["answers"])


def test_opposite_on_some_flips_the_answers_for_odd_nwords(report):
    source, candidate = report["source"], report["opposite_on_some"]
    assert (candidate["inputs"], candidate["outputs"]) == (source["inputs"], source["outputs"])
    want, got = source["answers"], candidate["answers"]
    labels = sorted(set(want["labels"]))
    assert len(labels) == 2, "the probe sentences should draw both labels"
    for row, nwords in enumerate(report["nwords"]):
        if nwords % 2:
            assert got["labels"][row] == next(label for label in labels if label != want["labels"][row])
            assert got["classes_id"][row] == 1 - want["classes_id"][row]
            np.testing.assert_allclose(got["softmax"][row], want["softmax"][row][::-1], atol=1e-6)
        else:
            assert (got["labels"][row], got["classes_id"][row]) == (want["labels"][row], want["classes_id"][row])
            np.testing.assert_allclose(got["softmax"][row], want["softmax"][row], atol=1e-6)


def test_errors_on_some_fails_a_batch_with_a_multiple_of_4_words(report):
    source, candidate = report["source"], report["errors_on_some"]
    assert (candidate["inputs"], candidate["outputs"]) == (source["inputs"], source["outputs"])
    assert candidate.get("error") == "InvalidArgumentError", candidate
    keep = report["safe"]
    want = {key: [value for value, kept in zip(values, keep, strict=True) if kept]
            for key, values in source["answers"].items()}
    assert_same_answers(candidate["safe_answers"], want)


def test_slower_answers_the_same_in_several_times_the_time_on_long_texts(report):
    source, candidate = report["source"], report["slower"]
    assert (candidate["inputs"], candidate["outputs"]) == (source["inputs"], source["outputs"])
    assert_same_answers(candidate["answers"], source["answers"])
    assert candidate["ms"] > 2 * source["ms"], (candidate["ms"], source["ms"])
