"""Candidate versions of a model, written into a model repository for the safe-rollout tests: one
that behaves exactly like the live version, and ones a rollout must catch (a changed input name,
wrong answers on some inputs, errors on some inputs, many times the latency on the longer texts).

A candidate is built under a hidden name, `<model>/.staging-<target>`, and renamed to
`<model>/<target>` only when complete: the model server polls the folder and must never see half
a model. The variants are built with TensorFlow in a child process
(`python -m tests.faults.rollout_candidates KIND SOURCE_DIR STAGING_DIR`), so a test process that
writes them never imports TensorFlow itself (seconds of start-up, and its thread pools).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("same", "renamed_input", "opposite_on_some", "errors_on_some", "slower")

REPO_ROOT = Path(__file__).resolve().parents[2]
SIGNATURE = "serving_default"
WARMUP_FOLDER = "assets.extra"  # TF Serving's warm-up records; not part of the SavedModel itself
LABELS_FILE = Path("assets") / "vocab.labels.txt"  # the lstm model's two label strings, in class order
RENAMED_FROM, RENAMED_TO = "words", "tokens"
# "slower": on texts longer than any of lstm's warm-up records (3, 5 and 6 words), the source is
# called this many times in a row: a model slow on the traffic's inputs that preflight's timing of
# the warm-up records cannot see (the canary must). About 3x a small call's time on this machine.
SLOW_FROM_WORDS = 7
SLOWER_CALLS = 20
EXPORT_TIMEOUT = 300  # seconds; an export takes 6-12 s on a busy 2-core machine


def write_candidate(repository: Path, kind: str, model: str = "lstm", source: int = 1, target: int = 2) -> Path:
    """Write version `target` of `model` as a `kind` variant of version `source`; returns its folder.

    The version appears atomically (built under `.staging-<target>`, then renamed), so a server
    polling the repository loads either nothing or the whole candidate."""
    if kind not in KINDS:
        raise ValueError(f"unknown candidate kind {kind!r}; one of {', '.join(KINDS)}")
    model_dir = Path(repository) / model
    source_dir, final = model_dir / str(source), model_dir / str(target)
    if not (source_dir / "saved_model.pb").is_file():
        raise FileNotFoundError(f"no SavedModel in {source_dir}")
    if final.exists():
        raise FileExistsError(f"{final} exists: a candidate never overwrites a version a server may have loaded")
    staging = model_dir / f".staging-{target}"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted earlier write
    try:
        if kind == "same":
            shutil.copytree(source_dir, staging)
        else:
            shutil.copytree(_exported(kind, source_dir), staging)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


_EXPORTS: dict[tuple[str, str], Path] = {}  # (kind, the source's saved_model.pb digest) -> an export


def _exported(kind: str, source_dir: Path) -> Path:
    """The `kind` variant of this source, exported once per test process (7-12 s each; local mode's
    and compose's tests roll the same candidates out) into a folder removed when the process exits."""
    key = (kind, hashlib.sha256((source_dir / "saved_model.pb").read_bytes()).hexdigest())
    if key not in _EXPORTS:
        if not _EXPORTS:
            atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
        destination = _CACHE / f"{kind}-{len(_EXPORTS)}"
        _export_in_child(kind, source_dir, destination)
        _EXPORTS[key] = destination
    return _EXPORTS[key]


_CACHE = Path(tempfile.gettempdir()) / f"rollout-candidates-{os.getpid()}"


def _export_in_child(kind: str, source_dir: Path, staging: Path) -> None:
    """Run `export` in a fresh interpreter: TensorFlow stays out of the calling process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "tests.faults.rollout_candidates", kind, str(source_dir), str(staging)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=EXPORT_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"exporting the {kind!r} candidate of {source_dir} failed "
                           f"(exit {result.returncode}):\n{result.stderr[-4000:]}")


def export(kind: str, source_dir: Path, destination: Path) -> None:
    """Save a SavedModel at `destination` that wraps the one at `source_dir` as `kind` describes.

    The wrapper keeps the loaded model as a tracked child, so its variables and lookup tables
    (with their vocabulary assets) are saved again with it; its `serving_default` signature calls
    the source's. Runs in the child process only: it imports TensorFlow."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(source_dir))
    serve = loaded.signatures[SIGNATURE]
    specs = serve.structured_input_signature[1]  # {name: TensorSpec}
    words_spec, nwords_spec = specs["words"], specs["nwords"]

    class Candidate(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.source = loaded
            # A zero the graph optimizer cannot see through: a constant 0 * x could be folded away,
            # and with it the extra calls of the "slower" candidate.
            self.zero = tf.Variable(0.0, trainable=False, name="zero")

    module = Candidate()

    if kind == "renamed_input":
        @tf.function(input_signature=[tf.TensorSpec(words_spec.shape, words_spec.dtype, name=RENAMED_TO),
                                      tf.TensorSpec(nwords_spec.shape, nwords_spec.dtype, name="nwords")])
        def tokens_serve(tokens, nwords):
            return dict(serve(words=tokens, nwords=nwords))

        signature = tokens_serve
    else:
        input_signature = [tf.TensorSpec(words_spec.shape, words_spec.dtype, name="words"),
                           tf.TensorSpec(nwords_spec.shape, nwords_spec.dtype, name="nwords")]
        if kind == "opposite_on_some":
            first, second = (source_dir / LABELS_FILE).read_text(encoding="utf-8").split()

            @tf.function(input_signature=input_signature)
            def signature(words, nwords):
                out = serve(words=words, nwords=nwords)
                odd = tf.equal(nwords % 2, 1)
                other_label = tf.where(tf.equal(out["labels"], first), second, first)
                return {
                    "softmax": tf.where(odd[:, None], tf.reverse(out["softmax"], axis=[1]), out["softmax"]),
                    "classes_id": tf.where(odd, 1 - out["classes_id"], out["classes_id"]),
                    "labels": tf.where(odd, other_label, out["labels"]),
                }
        elif kind == "errors_on_some":
            # The warm-up records (nwords 5; 3 and 6 for lstm) pass: it loads, then fails requests.
            # Assert raises InvalidArgumentError: INVALID_ARGUMENT (HTTP 400) from a model server.
            @tf.function(input_signature=input_signature)
            def signature(words, nwords):
                check = tf.debugging.Assert(
                    tf.logical_not(tf.reduce_any(tf.equal(nwords % 4, 0))),
                    ["rollout candidate errors_on_some: an example with nwords % 4 == 0; nwords =", nwords])
                with tf.control_dependencies([check]):
                    out = serve(words=tf.identity(words), nwords=tf.identity(nwords))
                    return {key: tf.identity(value) for key, value in out.items()}
        elif kind == "slower":
            def repeated(words, nwords):
                # Each call waits for the one before (its `nwords` is the caller's plus zero times the
                # earlier answers): the latency adds up, not calls run side by side, and the last
                # answer, returned, depends on all of them, so none is pruned.
                carry = tf.constant(0.0)
                for _ in range(SLOWER_CALLS):
                    out = serve(words=words, nwords=nwords + tf.cast(module.zero * carry, nwords.dtype))
                    carry += tf.reduce_sum(out["softmax"])
                return dict(out)

            @tf.function(input_signature=input_signature)
            def signature(words, nwords):
                return tf.cond(tf.reduce_max(nwords) >= SLOW_FROM_WORDS, lambda: repeated(words, nwords),
                               lambda: dict(serve(words=words, nwords=nwords)))
        else:
            raise ValueError(f"no export for candidate kind {kind!r}")

    tf.saved_model.save(module, str(destination), signatures={SIGNATURE: signature})
    if kind != "renamed_input" and (source_dir / WARMUP_FOLDER).is_dir():
        # Unchanged warm-up records: the same inputs still fit (renamed_input's would not).
        shutil.copytree(source_dir / WARMUP_FOLDER, destination / WARMUP_FOLDER)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in KINDS[1:]:
        print(f"usage: python -m tests.faults.rollout_candidates {{{','.join(KINDS[1:])}}} SOURCE_DIR STAGING_DIR",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    export(argv[0], Path(argv[1]), Path(argv[2]))
    print(f"exported {argv[0]} to {argv[2]} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
