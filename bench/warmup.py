"""What TF Serving-style warm-up buys: the first Predict after a fresh start, warm-up on vs off.

    .venv/bin/python -m bench.warmup              # 5 starts each, interleaved on/off (~2 minutes on 2 cores)
    .venv/bin/python -m bench.warmup --starts 1   # one of each (the test's form)

Each start is a fresh tfserving/model_server process with compose.yaml's `tfserving` command (its
ports replaced by free loopback ports, /models rebased onto tfserving/models, as local mode runs it)
and `--enable_model_warmup=true` (TF Serving's default: each version replays its
assets.extra/tf_serving_warmup_requests before it turns AVAILABLE) or `=false`. Starts alternate
on, off, on, off...

Once REST /v1/models/lstm and /v1/models/cv_sod both say AVAILABLE (polled every 50 ms: the time
from process start to ready), the client (tfserving_client, as the API services call the server)
opens its channel and sends GetModelStatus for each model, timed apart, so that the first Predict
does not pay for connecting. Then, per model (lstm, then cv_sod), the first Predict, timed
client-side, and 30 more one after another; steady state is the median of the last 20.

Inputs, on purpose not the shapes of the warm-up records (lstm's: batches [1, 5] and [2, 6] words;
cv_sod's: one [1, 320, 320, 3] image, the only shape it takes):
  lstm    bench/corpus.py's first sentence segmented as text-api does: words [1, 8], nwords [1]
  cv_sod  bench/images/coffee_600x400.jpg prepared as vision-api does: img_in [1, 320, 320, 3]
and then, on the warm server, lstm with a shape no record has: 8 texts of two reviews (words [8, 18]),
its first Predict and the median of the 10 after it. The server's own request_latency (Prometheus,
read between calls) splits each first call into the server's part and the rest.

Found (2026-12-02, 2 shared cores, five runs of 5 + 5 starts): warm-up takes the first Predict from
200-290 ms to 1.4-1.7x steady state for lstm (~5 ms vs ~3 ms) and 1.0-1.3x for cv_sod (~30 ms vs ~26
ms), for ~0.3 s of replay per model at load. Without it, lstm's first batch of 8 texts still costs ~50
ms more after 31 batch-1 calls; the shipped batch-of-2 record covers that (1.4x with warm-up). What
is left of lstm's first call is no shape's: the second call costs about as much (the first ten calls
ramp down to steady state, warm-up on or off), and records of exactly the request's shape, 16 records
(batches 1, 2, 4, 8 x 5-40 words, `--repository` a copy of tfserving/models) or 10 replays of each
(--num_request_iterations_for_warmup=10) leave it as it is. The shipped records are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import requests

from bench.corpus import CORPUS
from bench.perf_analyzer import _available
from bench.run import machine, stop_process_group
from local_stack import compose_file
from local_stack.topology import free_port
from model_preprocessing.image import MODEL_SIZE, model_input, to_rgb8
from model_preprocessing.text import pad_batch, segment
from tfserving_client import ModelServerClient

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "tfserving" / "models"
RESULTS = REPO_ROOT / "bench" / "results" / "warmup.md"
ORDER = ("lstm", "cv_sod")
SENTENCE = CORPUS[0]  # 8 words once segmented: the records have 5 and 6
IMAGE = REPO_ROOT / "bench" / "images" / "coffee_600x400.jpg"
STEADY_CALLS, STEADY_KEPT = 30, 20
# Then, on the warm server, a shape no record has: 8 texts of two reviews each (13-19 words, padded).
LATER_TEXTS = [CORPUS[i] + CORPUS[i + 1] for i in range(8)]
LATER_CALLS = 10
# A request after a pause costs more than back-to-back ones on any warm server (CPU caches, thread
# wake-ups): the first request comes after one, so it is also compared with calls after the same pause.
IDLE_CALLS, IDLE_SECONDS = 5, 1.0
LATENCY_SUM = ':tensorflow:serving:request_latency_sum{{model_name="{model}",API="Predict",entrypoint="GRPC"}} '
LOAD_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*"
                       r"(?:Loading servable version|Successfully loaded servable version)", re.MULTILINE)
WARMUP_READ = re.compile(r"Finished reading warmup data for model at (\S+)\. Number of warmup records read: "
                         r"(\d+)\. Elapsed time \(microseconds\): (\d+)")


def say(message: str) -> None:
    print(f"bench.warmup: {message}", file=sys.stderr, flush=True)


def inputs() -> dict[str, dict[str, np.ndarray]]:
    words, nwords = pad_batch([segment(SENTENCE)])
    image = model_input(to_rgb8(cv2.imread(str(IMAGE), cv2.IMREAD_UNCHANGED), MODEL_SIZE))[None]
    later_words, later_nwords = pad_batch([segment(text) for text in LATER_TEXTS])
    return {"lstm": {"words": words, "nwords": nwords}, "cv_sod": {"img_in": image},
            "lstm later": {"words": later_words, "nwords": later_nwords}}


def shapes(model_inputs: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {list(value.shape)}" for name, value in model_inputs.items())


@dataclasses.dataclass
class Start:
    warmup: bool
    index: int  # 1.. within its kind
    log: Path
    ready_s: float = 0.0  # process start to every model AVAILABLE
    load_s: float = 0.0  # the server's log: first "Loading servable" to last "Successfully loaded"
    connect_ms: float = 0.0  # channel + one GetModelStatus per model
    first_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    server_first_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # its request_latency
    second_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    steady_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # median of the last 20
    idle_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # median of calls after IDLE_SECONDS
    calls_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # every call, in order
    server_steady_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # its mean over the last 20
    later_first_ms: float = 0.0  # lstm, the new shape's first call after the steady state
    later_steady_ms: float = 0.0  # and the median of the 10 after it
    warmup_records: dict[str, int] = dataclasses.field(default_factory=dict)  # from the server's log
    warmup_ms: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "on" if self.warmup else "off"


def server_args(grpc_port: int, rest_port: int, warmup: bool, repository: Path = MODELS) -> list[str]:
    """compose.yaml's tfserving command as local mode runs it (/models rebased onto `repository`), and the
    warm-up switch."""
    flags = compose_file.load(repository=repository).model_server_flags
    return [sys.executable, "-m", "model_server", "--listen_address=127.0.0.1", f"--port={grpc_port}",
            f"--rest_api_port={rest_port}", *flags,
            f"--rebase_model_base_path={compose_file.CONTAINER_MODEL_ROOT}={repository}",
            f"--enable_model_warmup={'true' if warmup else 'false'}"]


@contextlib.contextmanager
def fresh_server(start: Start, repository: Path = MODELS) -> Iterator[tuple[str, str]]:
    """A new model server process, ready; stopped (its process group) on the way out, whatever happened.
    Yields its gRPC address and REST URL, and sets start.ready_s."""
    grpc_port = free_port()
    rest_port = free_port(exclude={grpc_port})
    rest_url = f"http://127.0.0.1:{rest_port}"
    with open(start.log, "wb") as out:
        began = time.monotonic()
        process = subprocess.Popen(server_args(grpc_port, rest_port, start.warmup, repository), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=REPO_ROOT)
    try:
        while not all(_available(rest_url, model) for model in ORDER):
            if process.poll() is not None:
                raise RuntimeError(f"the model server exited ({process.returncode}):\n{_tail(start.log)}")
            if time.monotonic() - began > 180:
                raise TimeoutError(f"the model server did not serve {ORDER} in 180 s:\n{_tail(start.log)}")
            time.sleep(0.05)
        start.ready_s = time.monotonic() - began
        yield f"127.0.0.1:{grpc_port}", rest_url
    finally:
        stop_process_group(process)


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def server_latency_ms(rest_url: str, model: str) -> float:
    """The server's own time for this model's gRPC Predicts so far (request_latency_sum: from its
    handler's start to the response built, without gRPC's transport), in ms."""
    text = requests.get(f"{rest_url}/monitoring/prometheus/metrics", timeout=10).text
    prefix = LATENCY_SUM.format(model=model)
    line = next((line for line in text.splitlines() if line.startswith(prefix)), None)
    return float(line[len(prefix):]) / 1000 if line else 0.0


def read_warmup_log(start: Start) -> None:
    text = start.log.read_text(errors="replace")
    stamps = [datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") for stamp in LOAD_LINE.findall(text)]
    if stamps:
        start.load_s = (stamps[-1] - stamps[0]).total_seconds()
    for path, records, micros in WARMUP_READ.findall(text):
        model = Path(path).parent.name  # .../<model>/<version>
        start.warmup_records[model] = int(records)
        start.warmup_ms[model] = int(micros) / 1000


def measure(start: Start, model_inputs: dict[str, dict[str, np.ndarray]], repository: Path = MODELS) -> Start:
    with fresh_server(start, repository) as (address, rest_url):
        # No retries (a retried first call would hide its cost); a generous deadline for a cold model.
        client = ModelServerClient(address, timeout_seconds=120, retries=0)
        try:
            began = time.perf_counter()
            for model in ORDER:
                client.model_status(model)
            start.connect_ms = (time.perf_counter() - began) * 1000
            for model in ORDER:
                latencies, server = [], [server_latency_ms(rest_url, model)]  # the server's own warm-up calls
                for call in range(1 + STEADY_CALLS):
                    if call in (1, 1 + STEADY_CALLS - STEADY_KEPT):  # between calls, never inside one
                        server.append(server_latency_ms(rest_url, model))
                    latencies.append(_predict_ms(client, model, model_inputs[model]))
                server.append(server_latency_ms(rest_url, model))
                start.server_first_ms[model] = server[1] - server[0]
                start.server_steady_ms[model] = (server[-1] - server[-2]) / STEADY_KEPT
                start.first_ms[model], start.second_ms[model] = latencies[0], latencies[1]
                start.calls_ms[model] = latencies
                start.steady_ms[model] = statistics.median(latencies[-STEADY_KEPT:])
                idle = []
                for _ in range(IDLE_CALLS):
                    time.sleep(IDLE_SECONDS)
                    idle.append(_predict_ms(client, model, model_inputs[model]))
                start.idle_ms[model] = statistics.median(idle)
            latencies = [_predict_ms(client, "lstm", model_inputs["lstm later"]) for _ in range(1 + LATER_CALLS)]
            start.later_first_ms, start.later_steady_ms = latencies[0], statistics.median(latencies[1:])
        finally:
            client.close()
    read_warmup_log(start)
    return start


def _predict_ms(client: ModelServerClient, model: str, model_inputs: dict[str, np.ndarray]) -> float:
    began = time.perf_counter()
    client.predict(model, model_inputs)
    return (time.perf_counter() - began) * 1000


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)


def report(starts: list[Start], model_inputs: dict, command: str, repository: Path = MODELS) -> str:
    lines = [
        "# Warm-up: the first Predict after a fresh start, `--enable_model_warmup` on vs off",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {machine()}, no GPU; the client on the same cores "
        "(shared with other work: single numbers are noisy).",
        f"Command: `{command}`",
        "",
        "Server: `python -m model_server` with compose.yaml's `tfserving` command (free loopback ports, /models "
        "rebased onto "
        f"{os.path.relpath(repository, REPO_ROOT) if repository.is_relative_to(REPO_ROOT) else repository}) and "
        "`--enable_model_warmup=true|false`, a fresh process per start, "
        f"starts alternating on/off ({sum(s.warmup for s in starts)} on, {sum(not s.warmup for s in starts)} off).",
        "Client: tfserving_client over gRPC, no retries. After both models are AVAILABLE (REST), the channel is "
        "opened with one GetModelStatus per model (`connect`), then per model (lstm, then cv_sod) the first "
        f"Predict and {STEADY_CALLS} more in sequence; `steady` is the median of the last {STEADY_KEPT}. "
        f"`after a pause`: then {IDLE_CALLS} calls, each after {IDLE_SECONDS:g} s idle, as the first call comes "
        "after the server sat idle (a warm server's request after a pause costs more than back-to-back ones). "
        "All in ms, client-side, except `server-side`: the server's own request_latency (its gRPC handler, "
        "without transport), read from its Prometheus endpoint between calls: the first call's, and the mean of "
        f"the last {STEADY_KEPT}.",
        f"Inputs (not the shapes of the warm-up records): lstm \"{SENTENCE}\" segmented as text-api does "
        f"({shapes(model_inputs['lstm'])}); cv_sod {IMAGE.relative_to(REPO_ROOT)} prepared as vision-api does "
        f"({shapes(model_inputs['cv_sod'])}).",
    ]
    for model in ORDER:
        lines += ["", f"## {model}", "",
                  "| warm-up | starts | first: median | first: max | second: median | steady: median "
                  "| first / steady | after a pause: median | first / after a pause "
                  "| server-side first: median | server-side steady | warm-up records "
                  "| warm-up elapsed: median |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for warmup in (True, False):
            group = [s for s in starts if s.warmup == warmup]
            if not group:
                continue
            first, first_max = _stats([s.first_ms[model] for s in group])
            second = statistics.median(s.second_ms[model] for s in group)
            steady = statistics.median(s.steady_ms[model] for s in group)
            idle = statistics.median(s.idle_ms[model] for s in group)
            server_first = statistics.median(s.server_first_ms[model] for s in group)
            server_steady = statistics.median(s.server_steady_ms[model] for s in group)
            records = sorted({s.warmup_records.get(model, 0) for s in group})
            elapsed = [s.warmup_ms[model] for s in group if model in s.warmup_ms]
            lines.append(f"| {'on' if warmup else 'off'} | {len(group)} | {first:.1f} | {first_max:.1f} "
                         f"| {second:.1f} | {steady:.1f} | {first / steady:.1f}x | {idle:.1f} | {first / idle:.1f}x "
                         f"| {server_first:.1f} | {server_steady:.1f} "
                         f"| {', '.join(map(str, records))} "
                         f"| {f'{statistics.median(elapsed):.0f}' if elapsed else '-'} |")
    shown = 10
    lines += ["", f"## The first {shown} calls, one by one", "",
              f"The median over starts of each call (1 is the first Predict), and `steady` as above (calls "
              f"{2 + STEADY_CALLS - STEADY_KEPT}-{1 + STEADY_CALLS}).", "",
              "| model | warm-up | " + " | ".join(map(str, range(1, shown + 1))) + " | steady |",
              "|---|---|" + "---:|" * (shown + 1)]
    for model in ORDER:
        for warmup in (True, False):
            group = [s for s in starts if s.warmup == warmup]
            if group:
                calls = [statistics.median(s.calls_ms[model][i] for s in group) for i in range(shown)]
                steady = statistics.median(s.steady_ms[model] for s in group)
                lines.append(f"| {model} | {'on' if warmup else 'off'} | " + " | ".join(f"{v:.1f}" for v in calls)
                             + f" | {steady:.1f} |")
    lines += ["", "## lstm, then a shape no warm-up record has", "",
              f"After both steady states, {len(LATER_TEXTS)} texts of two bench/corpus.py reviews each "
              f"({shapes(model_inputs['lstm later'])}): its first Predict, and the median of the "
              f"{LATER_CALLS} after it.", "",
              "| warm-up | first: median | first: max | then: median | first / then |", "|---|---:|---:|---:|---:|"]
    for warmup in (True, False):
        group = [s for s in starts if s.warmup == warmup]
        if group:
            first, first_max = _stats([s.later_first_ms for s in group])
            then = statistics.median(s.later_steady_ms for s in group)
            lines.append(f"| {'on' if warmup else 'off'} | {first:.1f} | {first_max:.1f} | {then:.1f} "
                         f"| {first / then:.1f}x |")
    lines += ["", "## Start-up", "",
              "`ready`: from the process's start (Python and TensorFlow imports included) to both models AVAILABLE "
              "over REST; `loading`: the server's log, from its first \"Loading servable version\" to its last "
              "\"Successfully loaded\" (both models, warm-up included); `connect`: the client's channel and one "
              "GetModelStatus per model.", "",
              "| warm-up | ready s: median | ready s: max | loading s: median | loading s: max | connect ms: median |",
              "|---|---:|---:|---:|---:|---:|"]
    for warmup in (True, False):
        group = [s for s in starts if s.warmup == warmup]
        if group:
            ready, ready_max = _stats([s.ready_s for s in group])
            loading, loading_max = _stats([s.load_s for s in group])
            connect = statistics.median(s.connect_ms for s in group)
            lines.append(f"| {'on' if warmup else 'off'} | {ready:.2f} | {ready_max:.2f} | {loading:.2f} "
                         f"| {loading_max:.2f} | {connect:.1f} |")
    lines += ["", "## Every start", "",
              "| start | ready s | loading s | connect ms | " + " | ".join(f"{m} first | {m} steady" for m in ORDER)
              + " | warm-up elapsed ms (records) |",
              "|---|---:|---:|---:|" + "---:|---:|" * len(ORDER) + "---|"]
    for s in starts:
        cells = " | ".join(f"{s.first_ms[m]:.1f} | {s.steady_ms[m]:.1f}" for m in ORDER)
        read = ", ".join(f"{m} {s.warmup_ms[m]:.0f} ({s.warmup_records[m]})" for m in ORDER if m in s.warmup_ms)
        lines.append(f"| {s.kind} {s.index} | {s.ready_s:.2f} | {s.load_s:.2f} | {s.connect_ms:.1f} | {cells} "
                     f"| {read or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="fresh starts with warm-up on, and as many off")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"the Markdown table (default {RESULTS})")
    parser.add_argument("--repository", type=Path, default=MODELS,
                        help="the model repository to serve, as compose mounts it at /models (default "
                        "tfserving/models), e.g. a copy with other warm-up records")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="keep each start's server log here (warmup-on-1.log, ...); default a temporary folder")
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "-m", "bench.warmup", *(argv if argv is not None else sys.argv[1:])])
    # A SIGTERM (a test's timeout, a supervisor) unwinds through the finally blocks: no server left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    model_inputs = inputs()
    starts: list[Start] = []
    with contextlib.ExitStack() as stack:
        log_dir = args.log_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-warmup-")))
        log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(1, args.starts + 1):
            for warmup in (True, False):
                start = Start(warmup, index, log_dir / f"warmup-{'on' if warmup else 'off'}-{index}.log")
                measure(start, model_inputs, args.repository.resolve())
                say(f"warm-up {start.kind} {index}: ready {start.ready_s:.2f} s, connect {start.connect_ms:.1f} ms, "
                    + ", ".join(f"{m} first {start.first_ms[m]:.1f} / steady {start.steady_ms[m]:.1f} ms"
                                for m in ORDER)
                    + f", warm-up records {start.warmup_records or 'none'}")
                starts.append(start)
    table = report(starts, model_inputs, command, args.repository.resolve())
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
