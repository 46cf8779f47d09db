"""Where the CPU goes under load: per-process CPU shares and py-spy profiles of the busy processes.

    .venv/bin/python -m bench.profile                       # /lstm at 100 connections, 20 s
    .venv/bin/python -m bench.profile --route /cv_sod --connections 32

The machine has 2 cores shared by wrk, nginx, the API workers and the model server, so the first
question is who holds the cores; the second is what the Python processes do with their share.
Writes bench/results/profiles/<route>.md (CPU table and the heaviest functions per process) and a
flame graph per profiled process (<route>-<process>.svg).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.run import IMAGES_DIR, REPO_ROOT, WRK_DIR, Cell, parse_wrk, raise_file_limit, stack
from local_stack import compose_file, topology

PY_SPY = Path(sys.executable).with_name("py-spy")


def process_groups(processes) -> dict[str, list[psutil.Process]]:
    """Every process of the stack by role; gunicorn masters and workers apart, since only the
    workers serve."""
    groups: dict[str, list[psutil.Process]] = collections.defaultdict(list)
    for supervised in processes:
        root = psutil.Process(supervised.pid)
        role = re.sub(r"-\d+$", "", supervised.spec.name)
        children = root.children(recursive=True)
        if role.endswith("-api"):
            groups[f"{role} master"].append(root)
            groups[f"{role} workers"].extend(children)
        else:
            groups[role].extend([root, *children])
    return groups


def cpu_of(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.NoSuchProcess:
        return 0.0


def top_functions(raw: Path, limit: int = 25) -> tuple[int, list[tuple[str, int, int]]]:
    """From py-spy's collapsed stacks: (samples, [(function, own samples, inclusive samples)]), the
    functions with the most inclusive samples below the event loop's own frames, then by own."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        samples += count
        frames = stack_text.split(";")  # py-spy names files relative to sys.path: "jieba/__init__.py"
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    chosen = [f for f, n in inclusive.most_common() if n < 0.9 * samples][:limit]
    chosen += [f for f, _ in own.most_common(limit) if f not in chosen][:5]
    return samples, [(f, own[f], inclusive[f]) for f in chosen]


@dataclasses.dataclass
class Profile:
    cell: Cell
    elapsed: float
    cpu_seconds: dict[str, float]
    memory: dict[str, list]
    heaviest: dict[str, tuple[int, list[tuple[str, int, int]]]]


def py_spy(pid: int, seconds: float, output: Path, *, raw: bool) -> subprocess.Popen:
    """Non-blocking sampling, so the profiled process keeps its speed; raw = collapsed stacks."""
    options = ["--format", "raw", "--rate", "200"] if raw else ["--rate", "50"]
    return subprocess.Popen([str(PY_SPY), "record", "--nonblocking", *options, "--duration", f"{seconds:g}",
                             "--pid", str(pid), "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(args: argparse.Namespace) -> Profile:
    name = args.route.strip("/")
    api = next(s.name for s in compose_file.load().services if args.route in s.routes)
    script = "lstm_post.lua" if name == "lstm" else "image_post.lua"
    env = {**os.environ, "IMAGES": ",".join(str(p) for p in sorted(IMAGES_DIR.iterdir()))}
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as work, \
            stack(Path(work), topology.free_port()) as (url, _, processes):
        groups = process_groups(processes)
        profiled = {"model-server": groups["model-server"][0], f"{api} worker": groups[f"{api} workers"][0]}
        wrk = subprocess.Popen(["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds + 4:g}s", "--timeout=10s",
                                "--latency", "-s", str(WRK_DIR / script), url + args.route],
                               stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(2)  # past connection set-up and the first batches
        watched = {**groups, "wrk": [psutil.Process(wrk.pid)]}
        before = {role: sum(map(cpu_of, members)) for role, members in watched.items()}
        spies = {}
        for role, process in profiled.items():
            file_name = role.replace(" ", "-")
            raw = Path(work) / f"{file_name}.txt"
            spies[role] = (raw, py_spy(process.pid, args.seconds, raw, raw=True))
            py_spy(process.pid, args.seconds, args.out / f"{name}-{file_name}.svg", raw=False)
        started = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - started
        used = {role: sum(map(cpu_of, members)) - before[role] for role, members in watched.items()}
        for _, spy in spies.values():
            spy.wait(timeout=60)
        heaviest = {role: top_functions(raw) for role, (raw, _) in spies.items() if raw.exists()}
        memory = {role: [p.memory_full_info() for p in members if p.is_running()]
                  for role, members in groups.items() if role.endswith(("workers", "master"))}
        if args.raw_dir:
            args.raw_dir.mkdir(parents=True, exist_ok=True)
            for raw, _ in spies.values():
                shutil.copy(raw, args.raw_dir / raw.name)
        output, _ = wrk.communicate(timeout=60)
        time.sleep(2)  # the flame graph writers finish
    cell = parse_wrk(output, Cell("tuned", args.route, args.connections, args.seconds + 4))
    return Profile(cell, elapsed, used, memory, heaviest)


def render(profile: Profile, args: argparse.Namespace) -> str:
    cell, elapsed, cores = profile.cell, profile.elapsed, psutil.cpu_count()
    lines = [f"# Where the CPU goes: `{args.route}` at {args.connections} connections", "",
             f"Command: `.venv/bin/python -m bench.profile --route {args.route} --connections {args.connections} "
             f"--seconds {args.seconds:g}`; py-spy {args.seconds:g} s at 200 Hz, non-blocking "
             f"(it takes CPU too, so the load runs slower than in bench/results/matrix.md).", "",
             f"Load: {cell.rps:.1f} req/s, p50 {cell.p50_ms:.1f} ms, p99 {cell.p99_ms:.1f} ms, "
             f"{cell.failed} failed (wrk over {cell.seconds:g} s, profiled window {elapsed:.1f} s).", "",
             f"| process | CPU s | share of {cores} cores | CPU ms per request |", "|---|---:|---:|---:|"]
    requests = cell.rps * elapsed
    rows = sorted(profile.cpu_seconds.items(), key=lambda item: -item[1])
    for role, seconds in [*rows, ("all", sum(profile.cpu_seconds.values()))]:
        share = seconds / (elapsed * cores)
        lines.append(f"| {role} | {seconds:.1f} | {share:.0%} | {1000 * seconds / requests:.2f} |")
    lines += ["", "## API processes' memory after the load", "",
              "MB. RSS counts the pages a worker shares with its master; PSS shares them out; USS is its own.", "",
              "| process | RSS | PSS | USS |", "|---|---:|---:|---:|"]
    for role, infos in sorted(profile.memory.items()):
        lines += [f"| {role} | {m.rss / 2**20:.0f} | {m.pss / 2**20:.0f} | {m.uss / 2**20:.0f} |" for m in infos]
    for role, (samples, functions) in profile.heaviest.items():
        lines += ["", f"## {role}: heaviest functions", "",
                  f"{samples} samples; inclusive = anywhere on the stack, own = on top of it. Python frames only: "
                  "time in TensorFlow's own threads is not sampled.", "",
                  "| function | inclusive | own |", "|---|---:|---:|"]
        lines += [f"| `{f}` | {total / samples:.1%} | {own / samples:.1%} |" for f, own, total in functions]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", default="/lstm", choices=["/lstm", "/cv_sod"])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--raw-dir", type=Path, help="also keep py-spy's collapsed stacks here, to dig further")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "profiles")
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        sys.exit("bench: py-spy is missing; scripts/bootstrap.sh installs requirements/dev.txt")
    raise_file_limit()
    args.out.mkdir(parents=True, exist_ok=True)
    report = render(measure(args), args)
    (args.out / f"{args.route.strip('/')}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
