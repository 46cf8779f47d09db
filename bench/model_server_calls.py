"""What one Predict costs the model server, apart from the API: direct gRPC calls from plain Python
threads at a few concurrencies and batch sizes, against the local stack's model server.

    .venv/bin/python -m bench.model_server_calls          # ~1 minute

If calls per second stay flat while the batch grows, the server's cost is per call (gRPC, tensor
conversion, hand-offs between its threads), not per example: batching in the API is what pays,
and low concurrency is bounded by the call's fixed cost (issue 25).
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.run import stack
from local_stack import topology
from model_preprocessing.text import pad_batch
from tfserving_client import ModelServerClient

SHAPES = ((1, 1), (2, 1), (10, 1), (1, 5), (2, 5), (1, 32), (2, 32))  # (concurrent callers, batch size)
SENTENCE = ["这个", "产品", "质量", "很", "好"]


def measure(address: str, callers: int, batch: int, seconds: float = 5.0) -> tuple[float, float]:
    """Calls per second and the median call's ms."""
    words, nwords = pad_batch([SENTENCE] * batch)
    inputs = {"words": words, "nwords": nwords}
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def call_until_stop() -> None:
        client = ModelServerClient(address, timeout_seconds=5)
        client.predict("lstm", inputs)  # connect first
        while time.monotonic() < stop:
            started = time.perf_counter()
            client.predict("lstm", inputs)
            latencies.append(1000 * (time.perf_counter() - started))

    threads = [threading.Thread(target=call_until_stop) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / seconds, statistics.median(latencies)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as work, \
            stack(Path(work) / "stack", topology.free_port()) as (_, _, processes):
        address = re.search(r"gRPC (\S+),", processes[0].spec.address).group(1)
        print("| callers | batch | calls/s | examples/s | p50 ms |\n|---:|---:|---:|---:|---:|")
        for callers, batch in SHAPES:
            calls, p50 = measure(address, callers, batch)
            print(f"| {callers} | {batch} | {calls:.0f} | {calls * batch:.0f} | {p50:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
