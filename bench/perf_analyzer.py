"""Triton's perf_analyzer against the model server alone, through TF Serving's gRPC API.

    .venv/bin/python -m bench.perf_analyzer          # both models, closed and open loop (5-15 minutes)
    .venv/bin/python -m bench.perf_analyzer --quick  # one or two short cells per model and mode (~1 minute)
    .venv/bin/python -m bench.perf_analyzer --concurrency lstm:1,8 --rates cv_sod:10 --window-ms 3000

An outside instrument: NVIDIA's C++ load generator, not our client code, speaking TF Serving's own
PredictionService (`--service-kind=tfserving -i grpc`; synchronous calls, its only mode for TF
Serving). It reads each model's signature from GetModelMetadata, repeats each level until three
measurement windows agree (within `--stability` %), and reports the last ones.

Starts tfserving/model_server (the real process, free loopback ports) over tfserving/models as
compose.yaml runs TF Serving (models.config, batching.config, monitoring.config), then runs
perf_analyzer once per cell: each `--concurrency` level (`--concurrency-range N:N`, closed loop: N
callers, each sending when its answer came) and each `--rates` rate (`--request-rate-range R:R`,
open loop at constant intervals; it says what share it sent late because all its threads were
busy). Each cell also reads the server's own request counter (OK / not OK) and what CPU
perf_analyzer used, since it shares this machine's cores with the server.

Inputs, checked against the signatures the server reports, one example per request, the same each
time (perf_analyzer's --input-data folder form holds one value per input):
  lstm    the first sentence of bench/corpus.py, segmented as text-api does: words [1, 8] strings and
          nwords [1] int32
  cv_sod  bench/images/coffee_600x400.jpg prepared as vision-api does: img_in [1, 320, 320, 3] float32
Not its JSON form, and not its random data: with --service-kind=tfserving, perf_analyzer 2.38 sends a
JSON file's tensors with no values at all (dtype and shape only; TensorFlow fills them with zeros and
empty strings, and the server answers OK), and its random data gives nwords a random int32 and words
random 128-character strings. It encodes numbers in the repeated *_val fields (img_in: 307,200
float_val), where our clients (tfserving_client) send packed tensor_content: cv_sod's cells include
that decoding, which costs the server more.

perf_analyzer is installed by `scripts/bootstrap.sh --for-tests` (requirements/perf-analyzer.txt):
.venv/bin/perf_analyzer runs the binary of the tritonclient 2.38.0 wheel with its libcudart.so.12.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import re
import resource
import shlex
import shutil
import signal
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
from bench.run import machine, stop_process_group
from local_stack.topology import free_port
from model_preprocessing.image import MODEL_SIZE, model_input, to_rgb8
from model_preprocessing.text import segment

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "tfserving" / "models"
# What each request carries (one example; perf_analyzer's folder form holds one value per input).
SENTENCE = CORPUS[0]  # 8 words once segmented (the corpus has 5-10)
IMAGE = REPO_ROOT / "bench" / "images" / "coffee_600x400.jpg"
RESULTS = REPO_ROOT / "bench" / "results" / "perf_analyzer.md"
# What the inputs below are made for: (dtype, rank or full shape) per input, as GetModelMetadata says.
SIGNATURES = {
    "lstm": {"words": ("DT_STRING", [-1, -1]), "nwords": ("DT_INT32", [-1])},
    "cv_sod": {"img_in": ("DT_FLOAT", [-1, MODEL_SIZE, MODEL_SIZE, 3])},
}
FULL = {"concurrency": {"lstm": [1, 2, 4, 8, 16, 32], "cv_sod": [1, 2, 4, 8]},
        "rates": {"lstm": [100, 200, 400, 600], "cv_sod": [5, 10, 15, 20]}}
QUICK = {"concurrency": {"lstm": [1, 4], "cv_sod": [1]}, "rates": {"lstm": [100], "cv_sod": [5]}}
REQUEST_COUNT = re.compile(r':tensorflow:serving:request_count\{model_name="([^"]*)",status="([^"]*)"\} (\S+)')


@dataclasses.dataclass
class Cell:
    model: str
    mode: str  # "concurrency" or "rate"
    level: float
    command: list[str] = dataclasses.field(default_factory=list)
    returncode: int | None = None
    problem: str = ""  # why perf_analyzer gave no final measurement, when it did not
    requests: int = 0  # in perf_analyzer's reported windows
    infer_per_s: float = 0.0
    avg_ms: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    delayed_percent: float = 0.0  # open loop: requests sent late, every thread being busy
    server_ok: int = 0  # the server's request counter over the whole cell (every window)
    server_not_ok: int = 0
    client_cpu_cores: float = 0.0  # perf_analyzer's CPU seconds per second of the cell
    seconds: float = 0.0

    @property
    def unstable(self) -> bool:
        return self.problem.startswith("unstable")

    @property
    def failed(self) -> bool:
        """Errors, or no answers: a cell that only did not stabilise is reported, not failed."""
        return (self.returncode != 0 and not self.unstable) or self.infer_per_s <= 0 or self.server_not_ok > 0

    @property
    def load(self) -> str:
        return f"{self.level:g} in flight" if self.mode == "concurrency" else f"{self.level:g} req/s"


def say(message: str) -> None:
    print(f"bench.perf_analyzer: {message}", file=sys.stderr, flush=True)


def perf_analyzer_binary() -> str | None:
    """The venv's wrapper (scripts/bootstrap.sh --for-tests writes it), else one on PATH."""
    own = Path(sys.executable).parent / "perf_analyzer"
    return str(own) if own.exists() else shutil.which("perf_analyzer")


@dataclasses.dataclass
class Server:
    process: subprocess.Popen
    grpc_address: str
    rest_url: str
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def request_counts(self, model: str) -> tuple[int, int]:
        """The server's own counter for this model: (OK, everything else)."""
        text = requests.get(f"{self.rest_url}/monitoring/prometheus/metrics", timeout=10).text
        ok = not_ok = 0
        for name, status, value in REQUEST_COUNT.findall(text):
            if name == model:
                if status == "OK":
                    ok += int(float(value))
                else:
                    not_ok += int(float(value))
        return ok, not_ok

    def signature(self, model: str) -> dict[str, tuple[str, list[int]]]:
        metadata = requests.get(f"{self.rest_url}/v1/models/{model}/metadata", timeout=10).json()
        inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
        return {name: (spec["dtype"], [int(d["size"]) for d in spec["tensor_shape"]["dim"]])
                for name, spec in inputs.items()}


@contextlib.contextmanager
def model_server(log_dir: Path, models: list[str], batching: bool = True) -> Iterator[Server]:
    """Our model server, alone, on free loopback ports; stopped (its whole process group) on the way
    out, whatever happened."""
    grpc_port = free_port()
    rest_port = free_port(exclude={grpc_port})
    args = [sys.executable, "-m", "model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={MODELS / 'models.config'}", f"--rebase_model_base_path=/models={MODELS}",
            "--file_system_poll_wait_seconds=0", "--listen_address=127.0.0.1",
            f"--monitoring_config_file={MODELS / 'monitoring.config'}"]
    if batching:
        args += ["--enable_batching", f"--batching_parameters_file={MODELS / 'batching.config'}"]
    log = log_dir / "model_server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=REPO_ROOT)
    server = Server(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}", log)
    try:
        deadline = time.monotonic() + 120
        while not all(_available(server.rest_url, model) for model in models):
            if process.poll() is not None:
                raise RuntimeError(f"the model server exited ({process.returncode}):\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the model server did not serve {models} in 120 s:\n{server.log_tail()}")
            time.sleep(0.25)
        yield server
    finally:
        stop_process_group(process)


def _available(rest_url: str, model: str) -> bool:
    try:
        status = requests.get(f"{rest_url}/v1/models/{model}", timeout=2).json()
    except (requests.RequestException, ValueError):
        return False
    return any(v.get("state") == "AVAILABLE" for v in status.get("model_version_status", []))


def write_input_data(model: str, directory: Path) -> tuple[Path, list[str]]:
    """perf_analyzer's --input-data folder for a model (a file per input: raw little-endian values, or
    a string a line) and the --shape options it needs. Not its JSON form: with --service-kind=tfserving,
    perf_analyzer 2.38 sends a JSON file's tensors with their shapes and no values at all (an empty
    TensorProto, which TensorFlow fills with zeros and empty strings)."""
    folder = directory / f"{model}.input"
    folder.mkdir(exist_ok=True)
    if model == "lstm":
        words = segment(SENTENCE)
        (folder / "words").write_text("".join(f"{word}\n" for word in words), encoding="utf-8")
        (folder / "nwords").write_bytes(np.array([len(words)], dtype="<i4").tobytes())
        return folder, [f"--shape=words:1,{len(words)}", "--shape=nwords:1"]
    if model == "cv_sod":
        tensor = model_input(to_rgb8(cv2.imread(str(IMAGE), cv2.IMREAD_UNCHANGED), MODEL_SIZE))
        (folder / "img_in").write_bytes(tensor.astype("<f4").tobytes())
        return folder, [f"--shape=img_in:1,{MODEL_SIZE},{MODEL_SIZE},3"]
    raise ValueError(f"no inputs for model {model!r}")


def check_signature(server: Server, model: str) -> dict[str, tuple[str, list[int]]]:
    found = server.signature(model)
    if found != SIGNATURES[model]:
        raise RuntimeError(f"{model}: the server's signature {found} is not what the inputs are made for, "
                           f"{SIGNATURES[model]}")
    return found


def perf_analyzer_command(binary: str, address: str, cell: Cell, input_data: tuple[Path, list[str]], window_ms: int,
                          stability: float, max_trials: int, rate_threads: int, csv: Path) -> list[str]:
    folder, shapes = input_data
    command = [binary, "-v", "-m", cell.model, "--service-kind=tfserving", "-i", "grpc", "-u", address,
               f"--input-data={folder}", *shapes]
    if cell.mode == "concurrency":
        level = int(cell.level)
        # Synchronous calls: one thread per request in flight.
        command += [f"--concurrency-range={level}:{level}", f"--max-threads={max(level, 1)}"]
    else:
        command += [f"--request-rate-range={cell.level:g}:{cell.level:g}", "--request-distribution=constant",
                    f"--max-threads={rate_threads}"]
    command += [f"--measurement-interval={window_ms}", f"--stability-percentage={stability:g}",
                f"--max-trials={max_trials}", "-f", str(csv), "--verbose-csv"]
    return command


def run_cell(binary: str, server: Server, cell: Cell, input_data: tuple[Path, list[str]], work: Path, *,
             window_ms: int, stability: float = 10, max_trials: int = 10, rate_threads: int = 16,
             address: str | None = None) -> Cell:
    """One perf_analyzer run at one level; `address` sends it elsewhere than the server (a proxy)."""
    csv = work / f"{cell.model}-{cell.mode}-{cell.level:g}.csv"
    cell.command = perf_analyzer_command(binary, address or server.grpc_address, cell, input_data, window_ms,
                                         stability, max_trials, rate_threads, csv)
    ok_before, not_ok_before = server.request_counts(cell.model)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the server is not reaped: only perf_analyzer
    began = time.monotonic()
    # A generous bound: every trial's window, the windows' own overrun, and start-up.
    limit = max_trials * (window_ms / 1000) * 3 + 60
    try:
        result = subprocess.run(cell.command, capture_output=True, text=True, timeout=limit, cwd=work)
        output, cell.returncode = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as expired:
        output, cell.returncode = _text(expired.stdout) + _text(expired.stderr), 124
        cell.problem = f"no result in {limit:.0f} s"
    cell.seconds = time.monotonic() - began
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cell.client_cpu_cores = (cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime
                             - cpu_before.ru_stime) / cell.seconds
    ok_after, not_ok_after = server.request_counts(cell.model)
    cell.server_ok, cell.server_not_ok = ok_after - ok_before, not_ok_after - not_ok_before
    parse_output(output, cell)
    if cell.returncode == 0 and csv.exists():
        parse_csv(csv.read_text(), cell)
    elif not cell.problem:
        cell.problem = _problem(output)
    (work / f"{csv.stem}.out").write_text(output)
    return cell


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


def _problem(output: str) -> str:
    if "Failed to obtain stable measurement" in output:
        return "unstable: no three windows agreed (the last window's numbers)"
    errors = [line.strip() for line in output.splitlines() if re.search(r"error|failed", line, re.IGNORECASE)]
    return errors[-1][:200] if errors else output.strip().splitlines()[-1][:200] if output.strip() else "no output"


def parse_output(output: str, cell: Cell) -> None:
    """What only perf_analyzer's printout says: requests in the reported windows, the share it sent
    late; and, when it gave no final result (unstable), the last window's throughput and latency."""
    found = re.findall(r"Request count: (\d+)", output)
    if found:
        cell.requests = int(found[-1])
    delayed = re.search(r"([\d.]+)% of the requests were delayed", output)
    if delayed:
        cell.delayed_percent = float(delayed.group(1))
    passes = re.findall(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec\. Avg latency: (\d+) usec", output)
    if passes and cell.returncode != 0:
        cell.infer_per_s, cell.avg_ms = float(passes[-1][0]), int(passes[-1][1]) / 1000


def parse_csv(text: str, cell: Cell) -> None:
    """perf_analyzer's -f export (--verbose-csv): one row per level, latencies in microseconds."""
    header, *rows = [line.split(",") for line in text.strip().splitlines()]
    row = dict(zip(header, rows[-1]))
    cell.infer_per_s = float(row["Inferences/Second"])
    for percentile in (50, 90, 99):
        setattr(cell, f"p{percentile}_ms", float(row[f"p{percentile} latency"]) / 1000)
    cell.avg_ms = float(row["Avg latency"]) / 1000


def _ms(value: float) -> str:
    return f"{value:.1f}" if value else "-"


def report(cells: list[Cell], signatures: dict, args: argparse.Namespace, command: str, version: str) -> str:
    quick = " (QUICK RUN: a smoke test of the harness, short windows and loose stability; not the measurement)" \
        if args.quick else ""
    lines = [
        f"# perf_analyzer against the model server{quick}",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {machine()}, no GPU (perf_analyzer links "
        "libcudart.so.12 but uses no GPU); perf_analyzer on the same cores as the server.",
        f"Client: {version}, `--service-kind=tfserving -i grpc`, synchronous calls (its only mode for TF "
        f"Serving), {args.window_ms} ms measurement windows until three agree within {args.stability:g} % "
        f"(at most {args.max_trials}); open loop at constant intervals with {args.rate_threads} threads.",
        "Server: `python -m model_server` alone, over tfserving/models as compose.yaml runs TF Serving "
        f"(batching {'on, tfserving/models/batching.config' if args.batching else 'off'}).",
        f"Inputs, the same in every request (perf_analyzer's --input-data folder): `lstm`, \"{SENTENCE}\" "
        "segmented as text-api does (words [1, 8], nwords [8]); `cv_sod`, "
        f"{IMAGE.relative_to(REPO_ROOT)} prepared as vision-api does (img_in [1, 320, 320, 3] float32). "
        "Not its JSON form: perf_analyzer 2.38 sends a JSON file's tensors to TF Serving with no values. "
        "It encodes numbers in the repeated `*_val` fields (img_in: 307,200 `float_val`), not in packed "
        "`tensor_content` as our clients do.",
        f"Signatures the server reported (and the inputs were checked against): {signatures}.",
        "",
        "Latencies are perf_analyzer's, in ms, over its reported windows; `server OK / not OK` is the "
        "server's own request counter for the model over the whole cell (every window, and perf_analyzer's one "
        "GetModelMetadata); `late` is the share of an open "
        "loop's requests perf_analyzer sent after their time (all threads busy); `client CPU` is "
        "perf_analyzer's CPU in cores.",
        "",
        f"Command: `{command}`",
    ]
    for model in dict.fromkeys(c.model for c in cells):
        lines += ["", f"## {model}", "",
                  "| load | infer/s | p50 ms | p90 ms | p99 ms | avg ms | server OK / not OK | late | client CPU "
                  "| note |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for cell in (c for c in cells if c.model == model):
            late = f"{cell.delayed_percent:.1f} %" if cell.mode == "rate" else "-"
            note = cell.problem or ""
            lines.append(f"| {cell.load} | {cell.infer_per_s:.1f} | {_ms(cell.p50_ms)} | {_ms(cell.p90_ms)} "
                         f"| {_ms(cell.p99_ms)} | {_ms(cell.avg_ms)} | {cell.server_ok} / {cell.server_not_ok} "
                         f"| {late} | {cell.client_cpu_cores:.2f} | {note} |")
    examples = {}
    for cell in cells:
        examples.setdefault((cell.model, cell.mode), cell.command)
    lines += ["", "perf_analyzer as the harness ran it (one cell of each kind; input files and ports are the "
              "run's own):", ""]
    lines += [f"    {shlex.join([_shown(command[0]), *command[1:]])}" for command in examples.values()]
    return "\n".join(lines) + "\n"


def _shown(path: str) -> str:
    return os.path.relpath(path, REPO_ROOT) if Path(path).is_relative_to(REPO_ROOT) else path


def levels(specs: list[str] | None, default: dict[str, list[float]]) -> dict[str, list[float]]:
    """`MODEL:L1,L2,...` options over the defaults; `MODEL:` runs none of that kind for it."""
    chosen = {model: list(values) for model, values in default.items()}
    for spec in specs or []:
        model, _, values = spec.partition(":")
        if model not in SIGNATURES:
            raise SystemExit(f"bench.perf_analyzer: unknown model {model!r} in {spec!r}")
        chosen[model] = [float(v) for v in values.split(",") if v]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(SIGNATURES), default=["lstm", "cv_sod"])
    parser.add_argument("--quick", action="store_true", help="a few short cells (the harness's smoke form)")
    parser.add_argument("--concurrency", nargs="+", metavar="MODEL:N,N", help="closed-loop levels per model")
    parser.add_argument("--rates", nargs="+", metavar="MODEL:R,R", help="open-loop rates (req/s) per model")
    parser.add_argument("--window-ms", type=int, default=None, help="measurement window (default 5000; quick 1000)")
    parser.add_argument("--stability", type=float, default=None,
                        help="%% three windows may differ by (default 10, perf_analyzer's; quick 50)")
    parser.add_argument("--max-trials", type=int, default=None, help="windows per level at most (default 10; quick 5)")
    parser.add_argument("--rate-threads", type=int, default=16, help="perf_analyzer's threads in open loop")
    parser.add_argument("--no-batching", dest="batching", action="store_false", help="the server without batching")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"the Markdown table (default {RESULTS})")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.window_ms = args.window_ms or (1000 if args.quick else 5000)
    args.stability = args.stability or (50 if args.quick else 10)
    args.max_trials = args.max_trials or (5 if args.quick else 10)
    concurrency, rates = levels(args.concurrency, base["concurrency"]), levels(args.rates, base["rates"])
    binary = perf_analyzer_binary()
    if binary is None:
        sys.exit("bench.perf_analyzer: perf_analyzer is missing; scripts/bootstrap.sh --for-tests installs it "
                 "(requirements/perf-analyzer.txt)")
    found = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    version = (found.stdout + found.stderr).strip()
    command = shlex.join([".venv/bin/python", "-m", "bench.perf_analyzer", *(argv if argv is not None else
                                                                                sys.argv[1:])])
    # A SIGTERM (a test's timeout, a supervisor) unwinds through the finally blocks: no server left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cells: list[Cell] = []
    signatures = {}
    with tempfile.TemporaryDirectory(prefix="bench-perf-analyzer-") as temporary:
        work = Path(temporary)
        with model_server(work, args.models, batching=args.batching) as server:
            for model in args.models:
                signatures[model] = check_signature(server, model)
                input_data = write_input_data(model, work)
                for mode, chosen in (("concurrency", concurrency), ("rate", rates)):
                    for level in chosen[model]:
                        cell = run_cell(binary, server, Cell(model, mode, level), input_data, work,
                                        window_ms=args.window_ms, stability=args.stability,
                                        max_trials=args.max_trials, rate_threads=args.rate_threads)
                        say(f"{model} {cell.load}: {cell.infer_per_s:.1f} infer/s, p50 {cell.p50_ms:.1f} ms, "
                            f"p99 {cell.p99_ms:.1f} ms, server OK {cell.server_ok} / not OK {cell.server_not_ok}"
                            f"{', ' + cell.problem if cell.problem else ''} ({cell.seconds:.0f} s)")
                        cells.append(cell)
    table = report(cells, signatures, args, command, version)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table, encoding="utf-8")
    failed = [c for c in cells if c.failed]
    for cell in failed:
        say(f"FAILED {cell.model} {cell.load}: rc {cell.returncode}, {cell.problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
