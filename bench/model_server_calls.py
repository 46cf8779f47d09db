"""What one Predict costs the model server, apart from the API: direct gRPC calls from plain Python
threads at a few concurrencies and batch sizes, against the local stack's model server, with the
server's CPU per example.

    .venv/bin/python -m bench.model_server_calls                  # lstm, ~1 minute
    .venv/bin/python -m bench.model_server_calls --model cv_sod   # 320x320 images as vision-api sends

If calls per second stay flat while the batch grows, the server's cost is per call (gRPC, tensor
conversion, hand-offs between its threads), not per example: batching in the API is what pays,
and low concurrency is bounded by the call's fixed cost (issue 25). If examples per second stay
flat instead, the cost is per example and batching in the API can buy little.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.run import cpu_seconds, stack
from local_stack import topology
from model_preprocessing.image import MODEL_SIZE
from model_preprocessing.text import pad_batch
from tfserving_client import ModelServerClient

# (concurrent callers, batch size) per model
SHAPES = {"lstm": ((1, 1), (2, 1), (10, 1), (1, 5), (2, 5), (1, 32), (2, 32)),
          "cv_sod": ((1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (4, 1), (8, 1), (2, 4))}
SENTENCE = ["这个", "产品", "质量", "很", "好"]


def inputs_for(model: str, batch: int) -> dict[str, np.ndarray]:
    if model == "lstm":
        words, nwords = pad_batch([SENTENCE] * batch)
        return {"words": words, "nwords": nwords}
    side = MODEL_SIZE
    return {"img_in": np.random.default_rng(0).normal(0, 60, (batch, side, side, 3)).astype(np.float32)}


def measure(address: str, model: str, callers: int, batch: int, seconds: float = 5.0) -> tuple[float, float]:
    """Calls per second and the median call's ms."""
    inputs = inputs_for(model, batch)
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def call_until_stop() -> None:
        client = ModelServerClient(address, timeout_seconds=5)
        client.predict(model, inputs)  # connect first
        while time.monotonic() < stop:
            started = time.perf_counter()
            client.predict(model, inputs)
            latencies.append(1000 * (time.perf_counter() - started))

    threads = [threading.Thread(target=call_until_stop) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / seconds, statistics.median(latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="lstm")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as work, \
            stack(Path(work) / "stack", topology.free_port()) as (_, pids, processes):
        address = re.search(r"gRPC (\S+),", processes[0].spec.address).group(1)
        model_server = [pids[0]]
        print(f"{args.model}, {args.seconds:g} s per shape\n")
        print("| callers | batch | calls/s | examples/s | p50 ms | server CPU ms/example |\n"
              "|---:|---:|---:|---:|---:|---:|")
        for callers, batch in SHAPES[args.model]:
            before = cpu_seconds(model_server)
            calls, p50 = measure(address, args.model, callers, batch, args.seconds)
            per_example = 1000 * (cpu_seconds(model_server) - before) / max(calls * args.seconds * batch, 1)
            print(f"| {callers} | {batch} | {calls:.0f} | {calls * batch:.1f} | {p50:.2f} | {per_example:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
