"""Two checkouts of this repository side by side in one run: the tuned /lstm and /cv_sod cells of
each, alternated cell by cell (A B, then B A in the next round) with both checkouts' stacks up at
once, so that drift in the machine's speed falls on both alike. For a change that must not cost
throughput (a refactor): before and after, same run. Besides requests a second, each cell gives
the CPU the answering service's processes (its gunicorn instances and their workers) spent per
request: on a shared machine whose speed drifts by 15% between identical cells, the steadier figure.

    .venv/bin/python -m bench.compare BEFORE_CHECKOUT AFTER_CHECKOUT [--rounds 2] [--out FILE.md]
    .venv/bin/python -m bench.compare BEFORE AFTER --http-ceiling   # and each one's HTTP ceiling
    .venv/bin/python -m bench.compare BEFORE AFTER --ceiling-only --rounds 8
    .venv/bin/python -m bench.compare BEFORE AFTER --low-load   # and /lstm at 1 and 10 connections

Each checkout runs its own local stack (`python -m local_stack up` with its own .venv: run its
scripts/bootstrap.sh first) on a free port, exactly as `./stack up` starts it. `--http-ceiling`
adds the /lstm cell at 100 connections with text-api answering a constant (bench.constant_app, as
bench.run's http-ceiling variant), started through that checkout's own bench.run.stack.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench.run import IMAGES_DIR, Cell, run_wrk, say
from local_stack.topology import free_port

# The tuned cells of bench.run's matrix that carry the claim: (route, wrk script, connections).
CELLS = (("/lstm", "lstm_post.lua", 100), ("/lstm", "lstm_post.lua", 1000), ("/cv_sod", "image_post.lua", 32))
# With --low-load: where a request's latency is the model call's, not the machine's CPU.
LOW_LOAD_CELLS = (("/lstm", "lstm_post.lua", 1), ("/lstm", "lstm_post.lua", 10))


@contextlib.contextmanager
def checkout_stack(checkout: Path, work: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    run_dir = work / f"run-{port}"
    log = work / f"stack-{port}.log"
    python = str(checkout / ".venv" / "bin" / "python")
    with open(log, "wb") as output:
        process = subprocess.Popen([python, "-m", "local_stack", "--run-dir", str(run_dir), "up", "--http-port",
                                    str(port)], cwd=checkout, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "ready in" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{checkout}: the stack did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        subprocess.run([python, "-m", "local_stack", "--run-dir", str(run_dir), "down"], cwd=checkout,
                       capture_output=True, timeout=120)
        process.wait(60)


# The checkout's own bench.run.stack with the constant app; prints its URL, holds until stdin closes.
CEILING_STACK = """
import sys
from pathlib import Path
from bench.run import stack
from local_stack.topology import free_port
with stack(Path(sys.argv[1]), free_port(), text_app="bench.constant_app:create_app()") as (url, _, _):
    print("url", url, flush=True)
    sys.stdin.read()
"""
CEILING_CELL = ("/lstm", "lstm_post.lua", 100)
CEILING_ROUTE = "/lstm (HTTP ceiling)"


@contextlib.contextmanager
def checkout_ceiling_stack(checkout: Path, work: Path) -> Iterator[tuple[str, int]]:
    run_dir = work / f"ceiling-{free_port()}"
    process = subprocess.Popen([str(checkout / ".venv" / "bin" / "python"), "-c", CEILING_STACK, str(run_dir)],
                               cwd=checkout, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        for line in process.stdout:
            if line.startswith("url "):
                yield line.split()[1], process.pid
                break
        else:
            raise RuntimeError(f"{checkout}: the HTTP-ceiling stack did not start")
    finally:
        process.stdin.close()
        process.wait(120)


def service_processes(root: int, service: str) -> list[int]:
    """The gunicorn masters of a service's instances in the stack under `root` (cpu_seconds counts
    their workers with them)."""
    found = []
    for process in psutil.Process(root).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command_line = " ".join(process.cmdline())
            if "gunicorn" in command_line and f"services/{service}" in command_line \
                    and "gunicorn" not in " ".join(process.parent().cmdline()):
                found.append(process.pid)
    return found


SERVICE_OF_ROUTE = {"/lstm": "text-api", "/cv_sod": "vision-api"}


def alternate(stacks: dict[str, tuple[str, int]], cells: tuple, rounds: int, seconds: int) -> list[Cell]:
    """Each cell on each checkout's stack in turn, the order swapped every round."""
    images = {"IMAGES": ",".join(str(p) for p in sorted(IMAGES_DIR.iterdir()))}
    measured = []
    for round_number in range(rounds):
        labels = list(stacks) if round_number % 2 == 0 else list(reversed(stacks))
        for route, script, connections in cells:
            for label in labels:
                url, root = stacks[label]
                say(f"round {round_number + 1}: {label} {route} c={connections}")
                measured.append(run_wrk(Cell(label, route, connections, seconds), url + route, script,
                                        service_processes(root, SERVICE_OF_ROUTE[route]), images))
    return measured


def report(cells: list[Cell], before: Path, after: Path, command: str) -> str:
    lines = ["# Before and after, side by side", "", f"Command: `{command}`. Before: `{before}`, after: `{after}`; "
             "both checkouts' stacks up at once, cells alternated (the order swapped each round); each cell is the "
             "median of its rounds; CPU: the answering service's gunicorn processes, per request answered.", "",
             "| route | connections | before req/s | after req/s | after / before | before p50 ms | after p50 ms "
             "| before p99 ms | after p99 ms | before CPU ms/request | after CPU ms/request | after / before CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for route, _, connections in (*LOW_LOAD_CELLS, *CELLS, (CEILING_ROUTE, "", CEILING_CELL[2])):
        picked = {label: [c for c in cells if (c.variant, c.route, c.connections) == (label, route, connections)]
                  for label in ("before", "after")}
        if not all(picked.values()):
            continue
        rps = {label: statistics.median(c.rps for c in found) for label, found in picked.items()}
        p50 = {label: statistics.median(c.p50_ms for c in found) for label, found in picked.items()}
        p99 = {label: statistics.median(c.p99_ms for c in found) for label, found in picked.items()}
        cpu = {label: statistics.median(c.cpu_ms_per_request for c in found) for label, found in picked.items()}
        failed = sum(c.failed for found in picked.values() for c in found)
        lines.append(f"| `{route}` | {connections} | {rps['before']:.1f} | {rps['after']:.1f} | "
                     f"{rps['after'] / rps['before']:.2f}x | {p50['before']:.1f} | {p50['after']:.1f} | "
                     f"{p99['before']:.0f} | {p99['after']:.0f} | "
                     f"{cpu['before']:.3f} | {cpu['after']:.3f} | {cpu['after'] / cpu['before']:.2f}x |"
                     + (f" {failed} failed" if failed else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the table here as well")
    parser.add_argument("--http-ceiling", action="store_true", help="and each checkout's HTTP ceiling")
    parser.add_argument("--ceiling-only", action="store_true", help="only the HTTP ceiling (more rounds in the time)")
    parser.add_argument("--low-load", action="store_true", help="and /lstm at 1 and 10 connections")
    args = parser.parse_args(argv)
    cells: list[Cell] = []
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as work:
        if not args.ceiling_only:
            with contextlib.ExitStack() as running:
                stacks = {label: running.enter_context(checkout_stack(checkout, Path(work)))
                          for label, checkout in checkouts.items()}
                cells += alternate(stacks, (*LOW_LOAD_CELLS, *CELLS) if args.low_load else CELLS, args.rounds,
                                   args.seconds)
        if args.http_ceiling or args.ceiling_only:
            with contextlib.ExitStack() as running:
                stacks = {label: running.enter_context(checkout_ceiling_stack(checkout, Path(work)))
                          for label, checkout in checkouts.items()}
                for cell in alternate(stacks, (CEILING_CELL,), args.rounds, args.seconds):
                    cell.route = CEILING_ROUTE
                    cells.append(cell)
    command = " ".join([".venv/bin/python -m bench.compare", *(argv if argv is not None else sys.argv[1:])])
    table = report(cells, args.before, args.after, command)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
