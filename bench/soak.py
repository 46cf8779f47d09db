"""A long run of the local stack at a steady share of its capacity, reported minute by minute:
latency, failures, memory and open files of every service, /metrics scrape time, metric files.

    .venv/bin/python -m bench.soak                          # 30 minutes at 70%; bench/results/soak.md
    .venv/bin/python -m bench.soak --max-requests 4000 --name soak-recycling
                                                            # the same with gunicorn recycling workers
    .venv/bin/python -m bench.soak --minutes 1 --out DIR    # the test suite's short form

The load is wrk with bench/wrk/lstm_paced.lua: each connection pauses between its requests, and
the pause is set from a first measurement of capacity (closed loop, 100 connections), then
corrected once after the first minute. Memory is RSS summed over each service's process tree.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

from bench.run import REPO_ROOT, WRK_DIR, Cell, parse_wrk, raise_file_limit, run_wrk, say, stack
from local_stack import topology

CONNECTIONS = 40


@dataclasses.dataclass
class Minute:
    minute: int
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    rss_mb: dict[str, float]
    open_files: int  # every descriptor: sockets come and go with the load and nginx's keep-alive pools
    scrape_ms: float  # /metrics of the slowest API instance (best of three tries each)
    metric_files: int
    regular_files: int = 0  # descriptors of files (not sockets or pipes): what a leak per recycle would grow


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def sample(processes, run_dir: Path) -> tuple[dict[str, float], int, int, float, int]:
    rss, files, regular = {}, 0, 0
    for process in processes:
        rss[process.spec.name] = 0.0
        for member in tree(process.pid):
            try:
                rss[process.spec.name] += member.memory_info().rss / 2**20
                files += member.num_fds()
                regular += len(member.open_files())
            except psutil.Error:  # exited between the listing and the reading
                continue
    scrapes = []
    for process in processes:
        if process.spec.readiness_url:  # an API instance: what a scrape costs, the best of three (one
            tries = []                   # may wait out a recycling worker, which is not its cost)
            for _ in range(3):
                started = time.perf_counter()
                requests.get(process.spec.address + "/metrics", timeout=30)
                tries.append(1000 * (time.perf_counter() - started))
            scrapes.append(min(tries))
    metric_files = len(list((run_dir / "metrics").glob("*/*.db")))
    return rss, files, regular, max(scrapes), metric_files


def paced_minute(url: str, delay_ms: float, seconds: float) -> Cell:
    cell = Cell("soak", "/lstm", CONNECTIONS, seconds)
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout=10s", "--latency", "-s",
               str(WRK_DIR / "lstm_paced.lua"), url + "/lstm"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                            env={**os.environ, "DELAY_MS": str(int(delay_ms))})
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr}")
    return parse_wrk(result.stdout, cell)


def soak(minutes: int, share: float, max_requests: int, minute_seconds: float) -> tuple[float, float, list[Minute]]:
    raise_file_limit()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    env = {"GUNICORN_MAX_REQUESTS": str(max_requests), "GUNICORN_MAX_REQUESTS_JITTER": "0"}
    rows: list[Minute] = []
    with stack(work / "stack", topology.free_port(), env=env) as (url, pids, processes):
        capacity = run_wrk(Cell("capacity", "/lstm", 100, 5), url + "/lstm", "lstm_post.lua", pids).rps
        target = share * capacity
        delay_ms = max(0.0, 1000 * CONNECTIONS / target - 5)  # minus a typical answer time
        for minute in range(1, minutes + 1):
            cell = paced_minute(url, delay_ms, minute_seconds)
            if minute == 1 and cell.rps:  # one correction toward the target rate
                delay_ms = max(0.0, (delay_ms + 5) * cell.rps / target - 5)
            rss, files, regular, scrape_ms, metric_files = sample(processes, work / "stack")
            rows.append(Minute(minute, cell.rps, cell.p50_ms, cell.p99_ms, cell.failed, rss, files, scrape_ms,
                               metric_files, regular))
            say(f"minute {minute}: {cell.rps:.0f} req/s, p50 {cell.p50_ms:.1f} p99 {cell.p99_ms:.1f} ms, "
                f"failed {cell.failed}, RSS {sum(rss.values()):.0f} MB, {files} fds, /metrics {scrape_ms:.1f} ms, "
                f"{metric_files} metric files")
    return capacity, target, rows


def report(capacity: float, target: float, rows: list[Minute], command: str, max_requests: int) -> str:
    services = list(rows[0].rss_mb)
    recycling = f"gunicorn recycles each worker after {max_requests} requests" if max_requests else \
        "no worker recycling (the default)"
    lines = [
        "# Soak: the local stack at a steady share of its capacity",
        "",
        f"Command: `{command}`. Capacity measured first: {capacity:.0f} req/s (wrk, 100 connections, 5 s); "
        f"aimed at {target:.0f} req/s with {CONNECTIONS} paced connections (what they achieved is per minute below); "
        f"{recycling}.",
        "",
        "| minute | req/s | p50 ms | p99 ms | failed | " + " | ".join(f"{s} MB" for s in services)
        + " | open files | /metrics ms | metric files |",
        "|" + "---:|" * (8 + len(services)),
    ]
    for row in rows:
        lines.append(f"| {row.minute} | {row.rps:.0f} | {row.p50_ms:.1f} | {row.p99_ms:.1f} | {row.failed} | "
                     + " | ".join(f"{row.rss_mb[s]:.0f}" for s in services)
                     + f" | {row.open_files} | {row.scrape_ms:.1f} | {row.metric_files} |")
    first, last = rows[0], rows[-1]
    lines += ["", f"First to last minute: RSS {sum(first.rss_mb.values()):.0f} -> {sum(last.rss_mb.values()):.0f} MB, "
              f"open files {first.open_files} -> {last.open_files}, /metrics {first.scrape_ms:.1f} -> "
              f"{last.scrape_ms:.1f} ms, failed in all {sum(r.failed for r in rows)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--share", type=float, default=0.7, help="of the measured capacity")
    parser.add_argument("--max-requests", type=int, default=0, help="GUNICORN_MAX_REQUESTS (0: no recycling)")
    parser.add_argument("--minute-seconds", type=float, default=60.0, help="length of one reported interval")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--name", default="soak", help="of the result files in --out (NAME.md, NAME.json)")
    args = parser.parse_args(argv)
    capacity, target, rows = soak(args.minutes, args.share, args.max_requests, args.minute_seconds)
    command = " ".join([".venv/bin/python -m bench.soak", *(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(report(capacity, target, rows, command, args.max_requests))
    (args.out / f"{args.name}.json").write_text(json.dumps({"capacity": capacity, "target": target,
                                                    "minutes": [dataclasses.asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
