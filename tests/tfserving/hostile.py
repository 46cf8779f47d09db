"""Cheap requests that cost the model server dearly, and how to measure what one costs (issue 20).

The tests use the pieces; as a script it prints before/after figures for a checkout:

    .venv/bin/python -m tests.tfserving.hostile [--idle-connections 200]

(for an older checkout, put its tfserving/ and root first on Python's import path).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import requests
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import model_server
from tests.conftest import copy_repository, start_model_server

HOSTILE_DIMS = (1, 1_000_000_000)  # one float_val padded out to 4 GB by tf.make_ndarray


def padded_predict(dims: tuple[int, ...] = HOSTILE_DIMS, model: str = "cv_sod", name: str = "img_in",
                   dtype: int = types_pb2.DT_FLOAT) -> predict_pb2.PredictRequest:
    """A Predict of a few bytes whose one value TensorFlow's fill rule repeats over `dims`."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims)
    if dtype == types_pb2.DT_STRING:
        tensor.string_val.append(b"x")
    elif dtype == types_pb2.DT_INT32:
        tensor.int_val.append(1)
    else:
        tensor.float_val.append(0.0)
    request.inputs[name].CopyFrom(tensor)
    return request


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[dict]:
    """The process's peak resident memory while the block runs (Linux: clear_refs resets VmHWM)."""
    status = Path(f"/proc/{pid}/status")
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    figures: dict = {"before": psutil.Process(pid).memory_info().rss}
    yield figures
    hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    figures["peak"] = int(hwm.split()[1]) * 1024


def idle_connections(rest_url: str, count: int) -> list[socket.socket]:
    """Connections that send nothing (a slowloris client's first step); those the server's backlog
    had no room for (connect timed out) are left out."""
    host, port = rest_url.removeprefix("http://").split(":")
    opened = []
    for _ in range(count):
        with contextlib.suppress(TimeoutError):
            opened.append(socket.create_connection((host, int(port)), timeout=2))
    return opened


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _mb(value: int) -> str:
    return f"{value / 2**20:,.0f} MB"


def _answer(call) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as error:
        return error.code().name


def measure_padded(stub, pid: int) -> None:
    with peak_rss(pid) as rss:
        started = time.monotonic()
        try:
            stub.Predict(padded_predict(), timeout=120)
            answer = "OK"
        except grpc.RpcError as error:
            answer = f"{error.code().name}: {error.details()[:120]}"
        seconds = time.monotonic() - started
    print(f"Predict dims {list(HOSTILE_DIMS)}, one float_val: {answer} in {seconds:.2f} s; "
          f"server RSS {_mb(rss['before'])} -> peak {_mb(rss['peak'])}")


def measure_large(stub, pid: int, count: int, megabytes: int) -> None:
    floats = megabytes * 250_000
    large = padded_predict((1, floats))  # decoded, then refused by the signature's shape
    large.inputs["img_in"].ClearField("float_val")
    large.inputs["img_in"].tensor_content = bytes(4 * floats)
    codes: list[str] = []
    with peak_rss(pid) as rss:
        senders = [threading.Thread(target=lambda: codes.append(_answer(lambda: stub.Predict(large, timeout=300))))
                   for _ in range(count)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    print(f"{count} Predicts of {_mb(large.ByteSize())} at once: {sorted(collections.Counter(codes).items())}; "
          f"server RSS {_mb(rss['before'])} -> peak {_mb(rss['peak'])}")


def measure_idle(rest_url: str, pid: int, count: int, wait: float) -> None:
    server = psutil.Process(pid)
    threads = server.num_threads()
    sockets = idle_connections(rest_url, count)
    time.sleep(2)
    print(f"{count} idle REST connections ({len(sockets)} connected): server threads {threads} -> "
          f"{server.num_threads()}")
    started = time.monotonic()
    answered: list[str] = []
    thread = threading.Thread(target=lambda: answered.append(
        str(requests.get(f"{rest_url}/v1/models/lstm", timeout=wait).status_code)))
    thread.start()
    thread.join(wait)
    print(f"  a status GET meanwhile: {answered or ['no answer']} after {time.monotonic() - started:.1f} s")
    time.sleep(max(0.0, wait - (time.monotonic() - started)))
    closed = sum(closed_by_server(s) for s in sockets)
    print(f"  after {wait:.0f} s: {closed} of {len(sockets)} closed by the server, server threads "
          f"{server.num_threads()}")
    for sock in sockets:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-concurrent", type=int, default=32,
                        help="Predicts of --large-mb sent at once (decoded, then refused by shape); 0: none")
    parser.add_argument("--large-mb", type=int, default=32, help="their tensor_content, in MB (10^6 bytes)")
    parser.add_argument("--idle-connections", type=int, default=200, help="0: none")
    parser.add_argument("--wait", type=float, default=35.0, help="seconds to watch the idle connections")
    args = parser.parse_args()

    print(f"model_server from {Path(model_server.__file__).parent}")
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        target, process = start_model_server(copy_repository(base / "models"), base / "model_server.log",
                                             "--enable_batching",
                                             f"--batching_parameters_file={base / 'models' / 'batching.config'}")
        try:
            pid = process.process.pid
            channel = grpc.insecure_channel(target.grpc_address, options=[("grpc.max_send_message_length", -1)])
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            measure_padded(stub, pid)
            if args.large_concurrent:
                measure_large(stub, pid, args.large_concurrent, args.large_mb)
            if args.idle_connections:
                measure_idle(target.rest_url, pid, args.idle_connections, args.wait)
        finally:
            process.stop()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
