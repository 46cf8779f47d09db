"""Sentences per second through gRPC Predict: batch-1 calls with server-side batching off vs on.

    .venv/bin/python -m bench.model_server_batching [--concurrency 1 8 32 64] [--seconds 10]

Starts tfserving/model_server twice over the committed model repository (batching off, then on
with tfserving/models/batching.config), drives each with the same closed-loop gRPC load (an
asyncio client, one sentence per request, `--concurrency` requests in flight), and prints one
markdown table so the two rows are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bench.corpus import CORPUS
from local_stack.topology import free_port
from model_preprocessing.text import pad_batch, segment

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "tfserving" / "models"


def requests_for_corpus() -> list[predict_pb2.PredictRequest]:
    out = []
    for text in CORPUS:
        words, nwords = pad_batch([segment(text)])
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "lstm"
        request.inputs["words"].CopyFrom(tf.make_tensor_proto(words))
        request.inputs["nwords"].CopyFrom(tf.make_tensor_proto(nwords))
        out.append(request)
    return out


def start_server(batching: bool, log_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "model_server", f"--port={port}",
            f"--model_config_file={MODELS / 'models.config'}", f"--rebase_model_base_path=/models={MODELS}",
            "--file_system_poll_wait_seconds=0", "--listen_address=127.0.0.1"]
    if batching:
        args += ["--enable_batching", f"--batching_parameters_file={MODELS / 'batching.config'}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(log_dir / f"model_server_batching_{batching}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=90)
    finally:
        channel.close()
    return process, address


async def closed_loop(address: str, concurrency: int, seconds: float, requests) -> dict:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for request in requests:  # warm the path
            await stub.Predict(request, timeout=30)
        deadline = time.monotonic() + seconds

        async def client(index: int) -> None:
            nonlocal errors
            i = index
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    await stub.Predict(requests[i % len(requests)], timeout=10)
                    latencies.append(time.monotonic() - started)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += 1

        began = time.monotonic()
        cpu_before = time.process_time()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.monotonic() - began
    ms = np.array(latencies) * 1000
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "errors": errors,
        "client_cpu_s": time.process_time() - cpu_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    requests = requests_for_corpus()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    rows: dict[tuple[bool, int], dict] = {}
    for batching in (False, True):
        process, address = start_server(batching, log_dir)
        try:
            for concurrency in args.concurrency:
                rows[(batching, concurrency)] = asyncio.run(closed_loop(address, concurrency, args.seconds, requests))
                print(f"batching={batching} c={concurrency}: {rows[(batching, concurrency)]}", file=sys.stderr)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    lines = [
        f"Model server, `lstm`, one sentence per gRPC Predict, closed loop, {args.seconds:.0f}s per cell; "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, client on the same machine.",
        "",
        "| in flight | no batching: sentences/s | p50 ms | p99 ms | batching: sentences/s | p50 ms | p99 ms "
        "| speed-up | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for concurrency in args.concurrency:
        off, on = rows[(False, concurrency)], rows[(True, concurrency)]
        lines.append(
            f"| {concurrency} | {off['rps']:.0f} | {off['p50']:.1f} | {off['p99']:.1f} | {on['rps']:.0f} "
            f"| {on['p50']:.1f} | {on['p99']:.1f} | {on['rps'] / off['rps']:.2f}x | {off['errors'] + on['errors']} |"
        )
    lines += ["", f"Command: `.venv/bin/python -m bench.model_server_batching --concurrency "
              f"{' '.join(map(str, args.concurrency))} --seconds {args.seconds:g}`"]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
