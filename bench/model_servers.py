"""One model server against two (`./stack up --scale tfserving=2`), same checkout, both stacks up
at once and their cells alternated: /lstm at 100 connections and /cv_sod at 32, answers per
second, p99, CPU per answer of each whole stack, and each model server's share of the calls (its
own request counter). On 2 cores the total cannot grow much; what must hold is that the second
server takes half the calls and costs nothing extra per answer.

    .venv/bin/python -m bench.model_servers [--rounds 2] [--seconds 10] [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import tempfile
from pathlib import Path

import requests

from bench.run import IMAGES_DIR, REPO_ROOT, Cell, machine, raise_file_limit, run_wrk, say, stack
from local_stack.processes import SupervisedProcess
from local_stack.topology import free_port

CELLS = (("/lstm", "lstm_post.lua", 100), ("/cv_sod", "image_post.lua", 32))


def predicts(processes: list[SupervisedProcess]) -> list[float]:
    """Each model server's answered Predicts so far (every model), from its own counter."""
    counts = []
    for process in processes:
        if process.spec.name.startswith("model-server"):
            rest = re.search(r"REST (\S+)", process.spec.address).group(1)
            text = requests.get(f"{rest}/monitoring/prometheus/metrics", timeout=5).text
            counts.append(sum(float(value) for value in re.findall(
                r'^:tensorflow:serving:request_count\{model_name="[^"]+",status="OK"\} (\S+)$', text, re.M)))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    raise_file_limit()
    image_env = {"IMAGES": ",".join(str(p) for p in sorted(IMAGES_DIR.iterdir()))}
    work = Path(tempfile.mkdtemp(prefix="bench-model-servers-"))
    rows: dict[tuple[str, int], list[tuple[Cell, list[float]]]] = {}
    with contextlib.ExitStack() as stacks:
        systems = {}
        for count in (1, 2):
            url, pids, processes = stacks.enter_context(stack(work / f"x{count}", free_port(), model_servers=count))
            systems[count] = (url, pids, processes)
        for round_number in range(args.rounds):
            order = (1, 2) if round_number % 2 == 0 else (2, 1)
            for route, script, connections in CELLS:
                for count in order:
                    url, pids, processes = systems[count]
                    before = predicts(processes)
                    cell = run_wrk(Cell(f"{count} model server{'s' * (count > 1)}", route, connections,
                                        args.seconds), url + route, script, pids,
                                   image_env if route == "/cv_sod" else None)
                    done = [after - was for after, was in zip(predicts(processes), before, strict=True)]
                    shares = [d / max(1.0, sum(done)) for d in done]
                    rows.setdefault((route, count), []).append((cell, shares))
    lines = ["# One model server against two", "",
             f"Machine: {machine()}. Command: `.venv/bin/python -m bench.model_servers --rounds {args.rounds} "
             f"--seconds {args.seconds:g}`. Both stacks up at once (local mode; `--scale tfserving=2` for the "
             "second), cells alternated, the order swapped each round; medians of the rounds. CPU: every process "
             "of the stack (nginx, API instances, model servers), per answer. Shares: each model server's part "
             "of the Predicts made during the cell (its own request counter).", "",
             "| route | connections | model servers | answers/s | p50 ms | p99 ms | CPU ms/answer | failed "
             "| shares of the calls |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for route, _, connections in CELLS:
        for count in (1, 2):
            found = rows[(route, count)]
            cells = [cell for cell, _ in found]
            shares = " / ".join(f"{statistics.median(s[i] for _, s in found):.0%}" for i in range(count))
            lines.append(f"| `{route}` | {connections} | {count} | {statistics.median(c.rps for c in cells):.1f} "
                         f"| {statistics.median(c.p50_ms for c in cells):.1f} "
                         f"| {statistics.median(c.p99_ms for c in cells):.0f} "
                         f"| {statistics.median(c.cpu_ms_per_request for c in cells):.2f} "
                         f"| {sum(c.non_2xx + c.socket_errors for c in cells)} | {shares} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_servers.md").write_text("\n".join(lines) + "\n")
    say("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
