"""The benchmark matrix, through the real nginx of the local stack, with wrk.

    .venv/bin/python -m bench.run                  # the full matrix (about 12 minutes), writes bench/results/
    .venv/bin/python -m bench.run --modes local compose   # and the tuned cells under docker compose too
    .venv/bin/python -m bench.run --quick --out D  # a few seconds per cell (the test suite runs this)

Why wrk: it keeps thousands of connections open from one thread per core with little CPU of its
own (ab spends a core at 1000 connections and reports no percentiles past its own), and its Lua
hooks send varied POST bodies and count non-2xx answers.

Every variant runs in the same invocation, one after the other on the same machine, so the ratios
hold even when absolute numbers move with the machine's load:
  documents   the source documents' design (bench/documents_baseline.py): Flask's dev server, a new
              gRPC channel per request, one sentence per Predict; model server as they ran it (no batching)
  untuned     this stack with micro-batching off (MODEL_BATCHING=0): what issues 3-4 shipped
  tuned       this stack as configured (compose.yaml + defaults)
  http-ceiling   nginx -> gunicorn -> Flask answering a constant (bench/constant_app.py)
  model-ceiling  the SavedModel called in-process at its best batch size (bench/model_ceiling.py)
  scale-N     tuned with N text-api instances (compose.yaml's default is 2, one worker each)
  compose     tuned, but the stack under docker compose (`--modes local compose`): the same cells
              through nginx's published port, containers with compose.yaml's CPU and memory limits
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from local_stack import compose_file, topology
from local_stack.processes import SupervisedProcess

if TYPE_CHECKING:
    from tests.compose.docker_host import ComposeProject

REPO_ROOT = Path(__file__).resolve().parents[1]
WRK_DIR = REPO_ROOT / "bench" / "wrk"
IMAGES_DIR = REPO_ROOT / "bench" / "images"


@dataclasses.dataclass
class Cell:
    variant: str
    route: str
    connections: int
    seconds: float
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    socket_errors: int = 0
    non_2xx: int = 0
    cpu_ms_per_request: float = 0.0

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(output: str, cell: Cell) -> Cell:
    percentiles = dict(re.findall(r"^\s+(50|90|99)%\s+([\d.]+\w+)", output, re.MULTILINE))
    for key, text in percentiles.items():
        value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
        setattr(cell, f"p{key}_ms", _ms(value, unit))
    latency = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(\w+)", output)
    if latency:
        cell.max_ms = _ms(*latency.groups())
    cell.requests = int(re.search(r"(\d+) requests in", output).group(1))
    cell.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    cell.socket_errors = sum(map(int, errors.groups())) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    cell.non_2xx = int(non2xx.group(1)) if non2xx else 0
    return cell


def cpu_seconds(pids: list[int]) -> float:
    """CPU used so far by these processes and all their descendants, including descendants that
    already exited (a gunicorn worker recycled by max_requests mid-cell is still counted)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            times = root.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
            for process in root.children(recursive=True):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def run_wrk(cell: Cell, url: str, script: str, pids: list[int], env: dict[str, str] | None = None) -> Cell:
    threads = 2 if cell.connections >= 2 else 1
    timeout = "10s"
    seconds = max(1, round(cell.seconds))  # wrk takes whole seconds ("15.0s" is refused)
    command = ["wrk", f"-t{threads}", f"-c{cell.connections}", f"-d{seconds}s", f"--timeout={timeout}",
               "--latency", "-s", str(WRK_DIR / script), url]
    before = cpu_seconds(pids)
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})},
                            timeout=cell.seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr}")
    parse_wrk(result.stdout, cell)
    used = cpu_seconds(pids) - before
    cell.cpu_ms_per_request = 1000 * used / cell.requests if cell.requests else 0.0
    say(f"{cell.variant:<14} {cell.route:<14} c={cell.connections:<5} {cell.rps:8.1f} req/s  "
        f"p50 {cell.p50_ms:7.1f}  p99 {cell.p99_ms:7.1f} ms  failed {cell.failed}")
    return cell


def stop_process_group(process: subprocess.Popen) -> None:
    """A server started in a session of its own (start_new_session), with everything it started:
    SIGTERM, then SIGKILL after 30 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@contextlib.contextmanager
def stack(run_dir: Path, http_port: int, text_instances: int | None = None, env: dict[str, str] | None = None,
          text_app: str | None = None, model_server_flags: list[str] | None = None, unbounded: bool = False,
          model_servers: int = 1) -> Iterator[tuple[str, list[int], list[SupervisedProcess]]]:
    """The local stack (model server, API services, nginx); yields nginx's URL, the pids to meter
    and the processes."""
    shutil.rmtree(run_dir, ignore_errors=True)
    replicas = topology.default_scale()  # every API service of the roster, as `./stack up` starts them
    overrides = {service: dict(env or {}) for service in replicas}
    options = topology.Options(run_dir=run_dir, http_port=http_port,
                               scale={**replicas,
                                      **({"text-api": text_instances} if text_instances else {})},
                               env_overrides=overrides, app_overrides={"text-api": text_app} if text_app else {},
                               model_server_flags=model_server_flags, unbounded=unbounded,
                               model_servers=model_servers)
    with topology.running(options, lambda message: say(f"  {message}")) as processes:
        yield f"http://127.0.0.1:{http_port}", [p.pid for p in processes], processes


def documents_server(run_dir: Path, port: int, grpc_address: str) -> SupervisedProcess:
    from local_stack.processes import ServiceSpec, http_ok

    spec = ServiceSpec(
        name="documents-baseline",
        args=[sys.executable, "-m", "bench.documents_baseline", "--port", str(port), "--model-server", grpc_address],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=REPO_ROOT,
        log_path=run_dir / "logs" / "documents-baseline.log",
        ready=http_ok(f"http://127.0.0.1:{port}/lstm/predict?line=5aW9"), address=f"http://127.0.0.1:{port}",
    )
    return SupervisedProcess(spec, say)


def model_ceiling(model: str, seconds: float) -> dict:
    result = subprocess.run([sys.executable, "-m", "bench.model_ceiling", model, "--seconds", str(seconds)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    say(f"model-ceiling  {model:<14} best batch {answer['best_batch']}: {answer['examples_per_second']:.1f}/s")
    return answer


def compose_flags_without_batching() -> list[str]:
    return [f for f in compose_file.load().model_server_flags if "batching" not in f]


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_matrix(args: argparse.Namespace) -> tuple[list[Cell], dict]:
    raise_file_limit()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    port = topology.free_port()
    seconds = args.seconds
    cells: list[Cell] = []
    ceilings: dict = {}
    text_levels = args.connections
    image_env = {"IMAGES": ",".join(str(p) for p in sorted(IMAGES_DIR.iterdir()))}

    def text_cells(variant: str, url: str, pids: list[int], levels=text_levels, path: str = "/lstm") -> None:
        for connections in levels:
            cells.append(run_wrk(Cell(variant, "/lstm", connections, seconds), url + path, "lstm_post.lua", pids))

    def image_cells(variant: str, url: str, pids: list[int]) -> None:
        for connections in args.image_connections:
            cells.append(run_wrk(Cell(variant, "/cv_sod", connections, seconds), url + "/cv_sod",
                                 "image_post.lua", pids, image_env))

    try:
        if "local" in args.modes:
            local_cells(args, work, port, text_cells, image_cells, cells, ceilings)
        if "compose" in args.modes:
            say("this stack under docker compose, tuned")
            with compose_stack(work / "compose") as (url, pids, _):
                text_cells("compose", url, pids)
                image_cells("compose", url, pids)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cells, ceilings


@contextlib.contextmanager
def compose_stack(work: Path) -> Iterator[tuple[str, list[int], ComposeProject]]:
    """The stack under docker compose as the live compose tier runs it (tests/compose/docker_host.py):
    nginx's published URL, the main pids of all its containers (their CPU is metered) and the project."""
    from tests.compose.docker_host import compose_stack as up
    from tests.compose.docker_host import docker_engine

    work.mkdir(parents=True, exist_ok=True)
    with docker_engine(work / "dockerd"), up(work, log=sys.stdout) as project:
        pids = [project.inspect(c["Name"])["State"]["Pid"] for c in project.containers()]
        yield project.url, pids, project


def local_cells(args: argparse.Namespace, work: Path, port: int, text_cells, image_cells, cells: list[Cell],
                ceilings: dict) -> None:
    """Every variant of the matrix in local mode, and the model ceilings."""
    say("documents' design")
    with stack(work / "documents", port, model_server_flags=compose_flags_without_batching()) as (
            _, pids, processes):
        grpc_address = re.search(r"gRPC (\S+),", processes[0].spec.address).group(1)
        baseline_port = topology.free_port()
        baseline = documents_server(work / "documents", baseline_port, grpc_address)
        try:
            if topology.start_and_wait([baseline], 60):
                raise RuntimeError("the documents' baseline did not start")
            text_cells("documents", f"http://127.0.0.1:{baseline_port}", [pids[0], baseline.pid],
                       path="/lstm/predict")
        finally:
            baseline.stop(10)
    say("this stack, untuned (no micro-batching)")
    with stack(work / "untuned", port, env={"MODEL_BATCHING": "0"}) as (url, pids, _):
        text_cells("untuned", url, pids)
        image_cells("untuned", url, pids)
    say("this stack, tuned")
    with stack(work / "tuned", port) as (url, pids, _):
        text_cells("tuned", url, pids)
        image_cells("tuned", url, pids)
        if args.soak_seconds:
            cells.append(run_wrk(Cell("tuned-soak", "/lstm", args.soak_connections, args.soak_seconds),
                                 url + "/lstm", "lstm_post.lua", pids))
    say("HTTP ceiling (constant answer)")
    with stack(work / "ceiling", port, text_app="bench.constant_app:create_app()") as (url, pids, _):
        text_cells("http-ceiling", url, pids)
    for instances in args.scale:
        say(f"scaling: {instances} text-api instances")
        with stack(work / f"scale-{instances}", port, text_instances=instances) as (url, pids, _):
            text_cells(f"scale-{instances}", url, pids, levels=[args.scale_connections])
    ceilings["lstm"] = model_ceiling("lstm", args.model_seconds)
    ceilings["cv_sod"] = model_ceiling("cv_sod", args.model_seconds)


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GB RAM, {platform.system()}"


def best(cells: list[Cell], variant: str, route: str, connections: int) -> Cell | None:
    return next((c for c in cells if (c.variant, c.route, c.connections) == (variant, route, connections)), None)


def report(cells: list[Cell], ceilings: dict, command: str, seconds: float) -> str:
    lines = [
        "# Benchmark: the stack through nginx, side by side",
        "",
        f"Machine: {machine()}; load generator wrk on the same machine. {seconds:g} s per cell.",
        f"Command: `{command}`",
        "",
        "| variant | route | connections | req/s | p50 ms | p90 ms | p99 ms | max ms | failed | non-2xx "
        "| CPU ms/request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(f"| {c.variant} | {c.route} | {c.connections} | {c.rps:.1f} | {c.p50_ms:.1f} "
                     f"| {c.p90_ms:.1f} | {c.p99_ms:.1f} | {c.max_ms:.0f} | {c.socket_errors} | {c.non_2xx} "
                     f"| {c.cpu_ms_per_request:.2f} |")
    lines += ["", "Where the CPU goes in the tuned stack (per process, and py-spy's heaviest functions): "
              "[profiles/lstm.md](profiles/lstm.md), [profiles/cv_sod.md](profiles/cv_sod.md) "
              "(`.venv/bin/python -m bench.profile [--route /cv_sod --connections 32]`)."]
    lines += ["", "Model ceilings (the SavedModel called in-process, best batch size, all cores):", ""]
    for model, answer in ceilings.items():
        lines.append(f"- `{model}`: {answer['examples_per_second']:.1f} examples/s at batch {answer['best_batch']} "
                     f"(per batch size: {answer['per_batch']})")
    lines += ["", "## Ratios (same run)", ""]
    ratios = []
    for connections in sorted({c.connections for c in cells if c.route == "/lstm"}):
        tuned, documents = best(cells, "tuned", "/lstm", connections), best(cells, "documents", "/lstm", connections)
        ceiling = best(cells, "http-ceiling", "/lstm", connections)
        if tuned and documents and documents.rps:
            line = f"- `/lstm` at {connections} connections: tuned / documents' = {tuned.rps / documents.rps:.1f}x"
            if ceiling and ceiling.rps:
                line += f"; tuned / HTTP ceiling = {tuned.rps / ceiling.rps:.0%}"
            ratios.append(line)
    for route in ("/lstm", "/cv_sod"):
        for connections in sorted({c.connections for c in cells if c.route == route}):
            tuned, compose = best(cells, "tuned", route, connections), best(cells, "compose", route, connections)
            if tuned and compose and tuned.rps:
                ratios.append(f"- `{route}` at {connections} connections: compose / local mode = "
                              f"{compose.rps / tuned.rps:.2f}x (p99 {compose.p99_ms:.0f} vs {tuned.p99_ms:.0f} ms)")
    for connections in sorted({c.connections for c in cells if c.route == "/cv_sod"}):
        tuned = best(cells, "tuned", "/cv_sod", connections)
        if tuned and "cv_sod" in ceilings:
            ratios.append(f"- `/cv_sod` at {connections} connections: {tuned.rps:.1f} images/s = "
                          f"{tuned.rps / ceilings['cv_sod']['examples_per_second']:.0%} of the model ceiling")
    lines += ratios
    tuned_100 = best(cells, "tuned", "/lstm", 100) or next((c for c in cells if c.variant == "tuned"), None)
    if tuned_100:
        lines += ["", "## Capacity, planned the documents' way", "",
                  "80% of a day's requests arrive in 40% of the day, so the peak rate is "
                  "daily requests x 0.8 / (86,400 s x 0.4); keep 2-3x headroom over that peak.", ""]
        for c in [x for x in cells if x.variant.startswith("scale-") or x is tuned_100]:
            for headroom in (2, 3):
                daily = c.rps * 86400 * 0.4 / 0.8 / headroom
                lines.append(f"- {c.variant}, {c.connections} connections, {c.rps:.0f} req/s, {headroom}x headroom: "
                             f"{daily / 1e6:.1f} million `/lstm` requests a day")
    return "\n".join(lines) + "\n"


def plots(cells: list[Cell], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for variant in ("documents", "untuned", "tuned", "http-ceiling"):
        points = sorted((c.connections, c.rps) for c in cells if c.variant == variant and c.route == "/lstm")
        if points:
            axis.plot(*zip(*points), marker="o", label=variant)
    axis.set(xscale="log", xlabel="concurrent connections", ylabel="requests/s", title="/lstm throughput")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "lstm_throughput.png", dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4.5))
    chosen = [c for c in cells if c.route == "/lstm" and c.connections == 100 and c.variant != "tuned-soak"]
    for index, percentile in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        axis.bar([i + index * 0.27 for i in range(len(chosen))], [getattr(c, percentile) for c in chosen],
                 width=0.27, label=percentile.split("_")[0])
    axis.set_xticks([i + 0.27 for i in range(len(chosen))], [c.variant for c in chosen], rotation=20)
    axis.set(yscale="log", ylabel="latency ms", title="/lstm latency at 100 connections")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "lstm_latency_100.png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few cells of a few seconds")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--modes", nargs="+", choices=["local", "compose"], default=["local"],
                        help="local: every variant as local processes; compose: the tuned cells under docker compose")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.connections, args.image_connections = 2, [10], [4]
        args.scale, args.scale_connections, args.soak_seconds, args.soak_connections = [2], 10, 0, 0
        args.model_seconds = 2
    else:
        args.seconds, args.connections, args.image_connections = 10, [10, 100, 1000], [10, 32]
        args.scale, args.scale_connections, args.soak_seconds, args.soak_connections = [1, 2, 4], 100, 60, 1000
        args.model_seconds = 10
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing; scripts/bootstrap.sh installs it (apt-get install wrk)")
    started = time.monotonic()
    cells, ceilings = run_matrix(args)
    args.out.mkdir(parents=True, exist_ok=True)
    command = (".venv/bin/python -m bench.run" + (" --quick" if args.quick else "")
               + (f" --modes {' '.join(args.modes)}" if args.modes != ["local"] else ""))
    (args.out / "matrix.md").write_text(report(cells, ceilings, command, args.seconds))
    (args.out / "matrix.json").write_text(json.dumps(
        {"cells": [dataclasses.asdict(c) for c in cells], "ceilings": ceilings, "machine": machine()}, indent=1))
    plots(cells, args.out)
    say(f"done in {time.monotonic() - started:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
