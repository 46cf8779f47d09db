"""The stack against what a user would pick instead, on the same cores: LitServe and BentoML serving
the same `lstm` SavedModel with this project's segmentation and padding and the same reply fields
(bench/peer_apps), and this stack in local mode as `./stack up` starts it.

    .venv/bin/python -m bench.peers [--rounds 2] [--seconds 15] [--out bench/results/peers.md]
    .venv/bin/python -m bench.peers --quick --out DIR      # the suite's smoke form

The peers run in a venv of their own, `.venv-peers` (requirements/peers.txt, pinned; made by
`scripts/bootstrap.sh --for-tests`, or here on first use). Before any load, every system answers
the same review sentences and the answers must agree (labels, probabilities to 6 decimals). Then
wrk posts bench/wrk/lstm_post.lua's sentences at each connection count, the systems alternated cell
by cell (the order swapped each round); while one is measured the peers are stopped (SIGSTOP: an
idle peer may poll, and its CPU would come out of the measured one's; the stack's idle CPU is nil),
and each cell follows a discarded second of the same load.
Each cell's CPU is its whole process tree's (the stack's model server, gunicorns and nginx; each
peer's server and workers) per request answered; idle CPU is each tree's over some seconds with no
load. wrk shares the 2 cores with whichever system it loads, alike for all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests

from bench.run import REPO_ROOT, Cell, cpu_seconds, machine, run_wrk, say, stack, stop_process_group
from local_stack.topology import free_port

PEERS_VENV = REPO_ROOT / ".venv-peers"
PEERS_REQUIREMENTS = REPO_ROOT / "requirements" / "peers.txt"
CONNECTIONS = (1, 10, 100, 1000)
SYSTEMS = ("ours", "LitServe", "BentoML")
# Sentences the systems must answer alike before any load (the wrk script's, and a few more).
CHECK_SENTENCES = ["这个产品质量很好，我非常喜欢", "太差了，用了两天就坏了，退货", "物流很快，包装也不错，下次还会再来",
                   "客服态度恶劣，再也不买了", "一般般吧，没有想象中那么好", "性价比很高，推荐购买",
                   "屏幕有划痕，而且电池不耐用", "酒店位置方便，房间干净，早餐丰富", "书的印刷质量很差，错别字很多",
                   "味道不错，分量足，价格实惠", "我很喜欢这个产品", "很好", "太差了"]


@dataclasses.dataclass
class System:
    name: str
    url: str  # of its /lstm
    pids: list[int]  # the roots of its process tree
    # Stopped while the others are measured: a peer may poll when idle. Not the stack (its idle CPU is
    # nil, and gunicorn's master would take a worker stopped for longer than its timeout as hung).
    pausable: bool = True

    def processes(self) -> list[psutil.Process]:
        found = []
        for pid in self.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(pid)
                found += [root, *root.children(recursive=True)]
        return found

    def pause(self) -> None:
        if not self.pausable:
            return
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)


def ensure_peers_venv() -> Path:
    """The peers' venv, made here if `scripts/bootstrap.sh --for-tests` has not (first use)."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".requirements.sha256"
    if not python.exists() or not stamp.exists():
        subprocess.run(["scripts/bootstrap.sh", "--peers"], cwd=REPO_ROOT, check=True)
    return python


def answers(url: str, timeout: float = 30) -> list[dict]:
    return [requests.post(url, json={"line": line}, timeout=timeout).json() for line in CHECK_SENTENCES]


def wait_answering(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.post(url, json={"line": "很好"}, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url}: no answer in {seconds:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def peer(name: str, command: list[str], port: int, work: Path, env: dict[str, str]) -> Iterator[System]:
    log = work / f"{name}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env}, start_new_session=True)
    system = System(name, f"http://127.0.0.1:{port}/lstm", [process.pid])
    try:
        wait_answering(system.url, process, log)
        yield system
    finally:
        system.resume()
        stop_process_group(process)


def peer_environment() -> dict[str, str]:
    """The peers import bench.peer_apps and model_preprocessing from this tree: the bootstrap installs
    both, editable, into .venv-peers."""
    return {"LSTM_MODEL": str(REPO_ROOT / "tfserving" / "models" / "lstm" / "1"), "TF_CPP_MIN_LOG_LEVEL": "2",
            "BENTOML_DO_NOT_TRACK": "true", "LITSERVE_DO_NOT_TRACK": "1"}


@contextlib.contextmanager
def systems(work: Path) -> Iterator[list[System]]:
    python = str(ensure_peers_venv())
    with contextlib.ExitStack() as stacks:
        port = free_port()
        url, pids, _ = stacks.enter_context(stack(work / "ours", port))
        ours = System("ours", f"{url}/lstm", pids, pausable=False)
        env = peer_environment()
        lit_port, bento_port = free_port(), free_port()
        litserve = stacks.enter_context(peer("LitServe", [python, "-m", "bench.peer_apps.litserve_lstm"], lit_port,
                                             work, {**env, "PEERS_PORT": str(lit_port)}))
        bentoml = stacks.enter_context(peer(
            "BentoML", [str(PEERS_VENV / "bin" / "bentoml"), "serve", "bench.peer_apps.bentoml_lstm:LstmApi",
                        "--port", str(bento_port), "--host", "127.0.0.1"], bento_port, work, env))
        yield [ours, litserve, bentoml]


def check_answers_agree(found: list[System]) -> None:
    """The same labels, and probabilities to 6 decimals, from every system, before any load."""
    reference = answers(found[0].url)
    for system in found[1:]:
        theirs = answers(system.url)
        for line, ours, other in zip(CHECK_SENTENCES, reference, theirs):
            same = ours["label"] == other["label"] and ours["class_id"] == other["class_id"] and all(
                abs(a - b) <= 1.5e-6 for a, b in zip(ours["probabilities"], other["probabilities"]))
            if not same or set(ours) != set(other):
                raise RuntimeError(f"{system.name} answers {line!r} with {other}, the stack with {ours}")
    say(f"answers agree: {len(CHECK_SENTENCES)} sentences, {', '.join(s.name for s in found)}")


def idle_cpu(system: System, seconds: float) -> float:
    """ms of CPU a second its process tree spends with no load."""
    before = cpu_seconds(system.pids)
    time.sleep(seconds)
    return 1000 * (cpu_seconds(system.pids) - before) / seconds


def measure(found: list[System], rounds: int, seconds: float, connections: tuple[int, ...]) -> list[Cell]:
    cells = []
    for system in found:
        system.pause()
    for round_ in range(rounds):
        for count in connections:
            order = found if round_ % 2 == 0 else list(reversed(found))
            for system in order:
                say(f"round {round_ + 1}: {system.name} c={count}")
                system.resume()
                time.sleep(1.0)
                # A second of load first, its figures discarded: a peer resumed from SIGSTOP finds its
                # timers expired at once, and its own keep-alive connections (BentoML's API service to
                # its model service) closed under the first requests (500s, "Server disconnected").
                run_wrk(Cell(system.name, "/lstm", count, 1), system.url, "lstm_post.lua", system.pids)
                cells.append(run_wrk(Cell(system.name, "/lstm", count, seconds), system.url, "lstm_post.lua",
                                     system.pids))
                system.pause()
    for system in found:
        system.resume()
    return cells


def answered_per_second(cell: Cell) -> float:
    """2xx answers a second: wrk's rate counts every answer, and a 500 is not one."""
    return cell.rps * max(0, cell.requests - cell.non_2xx) / cell.requests if cell.requests else 0.0


def median_cell(cells: list[Cell], system: str, connections: int) -> Cell:
    """The median of a system's rounds at one connection count; its `rps` is answers (2xx) a second."""
    mine = [c for c in cells if c.variant == system and c.connections == connections]
    middle = Cell(system, "/lstm", connections, mine[0].seconds)
    middle.rps = statistics.median(answered_per_second(c) for c in mine)
    for field in ("p50_ms", "p99_ms", "cpu_ms_per_request"):
        setattr(middle, field, statistics.median(getattr(c, field) for c in mine))
    middle.requests = sum(c.requests for c in mine)
    middle.socket_errors, middle.non_2xx = sum(c.socket_errors for c in mine), sum(c.non_2xx for c in mine)
    return middle


def report(cells: list[Cell], idle: dict[str, float], args: argparse.Namespace, command: str) -> str:
    names = list(dict.fromkeys(c.variant for c in cells))
    connections = sorted({c.connections for c in cells})
    lines = ["# The stack against LitServe and BentoML, same model, same cores", "",
             f"Machine: {machine()}; wrk on the same cores. Command: `{command}`. {args.rounds} rounds of "
             f"{args.seconds:g} s cells, the systems alternated cell by cell (order swapped each round), the "
             "others stopped meanwhile; each cell the median of its rounds. answers/s: 2xx answers a second; "
             "p50 and p99: wrk's, of every answer; CPU: the system's whole process tree per request; failed: "
             "socket errors and non-2xx answers, summed over rounds.", "",
             "| connections | " + " | ".join(f"{n} answers/s | p50 ms | p99 ms | CPU ms/req | failed" for n in names)
             + " |",
             "|---:|" + "---:|---:|---:|---:|---:|" * len(names)]
    for count in connections:
        row = [median_cell(cells, name, count) for name in names]
        lines.append(f"| {count} | " + " | ".join(f"{c.rps:.0f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | "
                                                  f"{c.cpu_ms_per_request:.2f} | {c.failed}" for c in row) + " |")
    lines += ["", "Idle CPU (no load, ms of CPU a second): " + ", ".join(f"{n} {idle[n]:.0f}" for n in names), "",
              "Ratios (ours over theirs, same run):", ""]
    for count in connections:
        ours = median_cell(cells, "ours", count)
        parts = []
        for name in names[1:]:
            theirs = median_cell(cells, name, count)
            parts.append(f"{name} {ours.rps / theirs.rps:.2f}x answers/s, p99 {ours.p99_ms:.0f} vs "
                         f"{theirs.p99_ms:.0f} ms" if theirs.rps else f"{name}: no answers")
        lines.append(f"- c={count}: " + "; ".join(parts))
    lines += ["", "Goals (issue 35): ours at least LitServe's answers/s with no worse p99, and at least 3x "
              "BentoML's answers/s, at every connection count:", ""]
    for count in connections:
        ours, lit, bento = (median_cell(cells, name, count) for name in SYSTEMS)
        met = ours.rps >= lit.rps and ours.p99_ms <= lit.p99_ms and ours.rps >= 3 * bento.rps
        lines.append(f"- c={count}: {ours.rps / lit.rps:.2f}x LitServe, p99 {ours.p99_ms:.1f} vs {lit.p99_ms:.1f} ms; "
                     f"{ours.rps / bento.rps:.2f}x BentoML: {'met' if met else 'not met'}")
    lines += ["", "What runs (bench/peer_apps): ours as `./stack up` starts it (nginx, 2 text-api instances of one "
              "gevent worker, the model server with compose.yaml's flags); LitServe 0.2.19 with the model "
              "in-process, one inference worker per core (`workers_per_device`), as many API servers, `fast_queue`, "
              "batches of up to 32 within 5 ms; BentoML 1.4.40, a per-request API service calling a batchable model "
              "service (`bentoml.depends`, `workers=\"cpu_count\"`, up to 32 within 1 s of latency), its "
              "adaptive-batching guide's shape. Every system segments with jieba and pads as text-api does "
              "(model_preprocessing.text) and answers the same fields."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--quick", action="store_true", help="the smoke form: one round of 2 s cells at 1 and 10")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    connections = CONNECTIONS
    if args.quick:
        args.rounds, args.seconds, connections = 1, 2.0, (1, 10)
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    with systems(work) as found:
        check_answers_agree(found)
        idle = {system.name: idle_cpu(system, 3 if args.quick else 10) for system in found}
        say("idle CPU ms/s: " + ", ".join(f"{name} {value:.0f}" for name, value in idle.items()))
        cells = measure(found, args.rounds, args.seconds, connections)
    command = ".venv/bin/python -m bench.peers" + (" --quick" if args.quick else
                                                   f" --rounds {args.rounds} --seconds {args.seconds:g}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.md").write_text(report(cells, idle, args, command))
    (args.out / "peers.json").write_text(json.dumps({"machine": machine(), "idle_cpu_ms_per_s": idle,
                                                     "cells": [dataclasses.asdict(c) for c in cells]}, indent=1))
    say(f"results in {args.out / 'peers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
