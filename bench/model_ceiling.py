"""The model ceiling: a model's SavedModel called in-process, no server, no network, at the batch
size that gives the most examples per second.

    .venv/bin/python -m bench.model_ceiling lstm|cv_sod [--seconds 10]    (prints one JSON line)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from bench.corpus import CORPUS
from model_preprocessing.text import pad_batch, segment

MODELS = Path(__file__).resolve().parents[1] / "tfserving" / "models"
BATCH_SIZES = {"lstm": [1, 8, 32, 64, 128], "cv_sod": [1, 2, 4, 8]}


def inputs_for(model: str, batch: int) -> dict[str, tf.Tensor]:
    if model == "lstm":
        words, nwords = pad_batch([segment(CORPUS[i % len(CORPUS)]) for i in range(batch)])
        return {"words": tf.constant(words.astype(bytes)), "nwords": tf.constant(nwords)}
    rng = np.random.default_rng(0)
    return {"img_in": tf.constant(rng.normal(0, 60, (batch, 320, 320, 3)).astype(np.float32))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=sorted(BATCH_SIZES))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    version = max((p for p in (MODELS / args.model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    per_batch = {}
    for batch in BATCH_SIZES[args.model]:
        inputs = inputs_for(args.model, batch)
        signature(**inputs)  # trace and warm up
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.seconds / len(BATCH_SIZES[args.model]):
            signature(**inputs)
            calls += 1
        per_batch[batch] = round(calls * batch / (time.perf_counter() - started), 1)
    best_batch = max(per_batch, key=per_batch.get)
    print(json.dumps({"model": args.model, "version": int(version.name), "best_batch": best_batch,
                      "examples_per_second": per_batch[best_batch], "per_batch": per_batch}))


if __name__ == "__main__":
    main()
