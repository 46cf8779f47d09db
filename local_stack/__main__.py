"""./stack up|down|status|rollout: the whole topology as local processes.

    python -m local_stack up [--scale text-api=4] [--scale vision-api=2] [--scale tfserving=2] [--http-port 8080]
    python -m local_stack down
    python -m local_stack rollout lstm 2        (or `rollout status`)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from model_rollout.__main__ import main as rollout_main

from local_stack import compose_file, topology
from local_stack.processes import SupervisedProcess, http_ok, port_is_free

REPO_ROOT = compose_file.REPO_ROOT


def say(message: str) -> None:
    print(f"local_stack: {message}", flush=True)


def parse_scale(values: list[str]) -> dict[str, int]:
    """API instances per service, and `tfserving`: the model servers (compose's service name)."""
    scale = {**topology.default_scale(), "tfserving": 1}  # compose's replicas, at most a core each
    for value in values:
        name, _, count = value.partition("=")
        if name not in scale or not (count.isascii() and count.isdigit()) or int(count) < 1:
            sys.exit(f"local_stack: --scale wants SERVICE=N with SERVICE in {list(scale)} and N >= 1, not {value!r}")
        scale[name] = int(count)
    return scale


def up(args: argparse.Namespace) -> int:
    run_dir = args.run_dir.resolve()
    state_file = run_dir / "stack.json"
    if state_file.exists():
        stale = json.loads(state_file.read_text())
        if _alive(stale["launcher_pid"], stale.get("launcher_started")):
            sys.exit(f"local_stack: already running (pid {stale['launcher_pid']}); `./stack down` first")
        _kill_groups(stale.get("process_groups", []))
    if not port_is_free(args.host, args.http_port):
        sys.exit(f"local_stack: port {args.http_port} is taken; choose another with --http-port")
    run_dir.mkdir(parents=True, exist_ok=True)
    scale = parse_scale(args.scale)
    model_servers = scale.pop("tfserving")
    options = topology.Options(run_dir=run_dir, http_port=args.http_port, host=args.host,
                               scale=scale, model_servers=model_servers,
                               model_repository=args.model_repository.resolve())
    nginx_temp = topology.nginx_temp_dir()
    processes = topology.supervised(options, nginx_temp, say)
    (run_dir / "prometheus.yml").write_text(topology.prometheus_config([p.spec for p in processes]))

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    started = time.monotonic()
    try:
        say(f"starting {len(processes)} processes; logs in {run_dir / 'logs'}")
        not_ready = topology.start_and_wait(processes, args.ready_timeout, lambda: bool(stopping))
        written = _write_state(state_file, processes, options=options)
        if stopping:
            return 0
        if not_ready:
            names = ", ".join(p.spec.name for p in not_ready)
            say(f"not ready after {args.ready_timeout:.0f}s: {names}; see their logs")
            return 1
        say(f"ready in {time.monotonic() - started:.1f}s")
        for process in processes:
            say(f"  {process.spec.name:<14} {process.spec.address}")
        for process in processes:
            if process.spec.readiness_url and not http_ok(process.spec.readiness_url)():
                say(f"WARNING: {process.spec.name}: its model is not available (see {process.spec.readiness_url}); "
                    "its routes answer 503 until a version loads")
        base = processes[-1].spec.address
        say(f'try: curl -X POST {base}/lstm -H "Content-Type: application/json" -d \'{{"line": "我很喜欢这个产品"}}\'')
        say(f"     curl -X POST {base}/cv_sod -H 'Content-Type: image/jpeg' --data-binary @photo.jpg -o mask.png")
        say(f"     {base}/ (demo page), {base}/api (API reference); metrics: each instance's /metrics, "
            f"scrape config for a Prometheus of your own: {run_dir / 'prometheus.yml'}")
        say("stop with Ctrl-C or `./stack down`")
        while not stopping:
            for process in processes:
                process.check()
            written = _write_state(state_file, processes, written, options)
            time.sleep(0.2)
        return 0
    finally:
        say("stopping")
        topology.stop_all(processes)
        state_file.unlink(missing_ok=True)
        shutil.rmtree(nginx_temp, ignore_errors=True)
        say("stopped")


def down(args: argparse.Namespace) -> int:
    state_file = args.run_dir.resolve() / "stack.json"
    if not state_file.exists():
        say("no stack is running here")
        return 0
    state = json.loads(state_file.read_text())
    pid, started = state["launcher_pid"], state.get("launcher_started")
    if _alive(pid, started):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + topology.STOP_TIMEOUT_SECONDS * 3
        while _alive(pid, started) and time.monotonic() < deadline:
            time.sleep(0.2)
    _kill_groups(state.get("process_groups", []))
    state_file.unlink(missing_ok=True)
    say("stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    state_file = args.run_dir.resolve() / "stack.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if not state or not _alive(state["launcher_pid"], state.get("launcher_started")):
        say("not running")
        return 1
    print(state_file.read_text())
    return 0


def _write_state(state_file: Path, processes: list[SupervisedProcess], written: str = "",
                 options: topology.Options | None = None) -> str:
    """Record pids and addresses for `down`/`status`/`rollout`; rewritten only when something changed."""
    state = {"launcher_pid": os.getpid(), "launcher_started": _start_time(os.getpid()),
             "model_repository": str(options.model_repository) if options else None,
             "ports": {role: number for p in processes for role, number in p.spec.ports.items()},
             # A pid alone may belong to a stranger by the time `down` reads this (a crash, a
             # reboot): each is recorded with its start time, and signalled only if both match.
             "process_groups": [[p.pid, _start_time(p.pid)] for p in processes if p.pid],
             "services": {p.spec.name: {"pid": p.pid, "address": p.spec.address, "restarts": p.restarts}
                          for p in processes}}
    text = json.dumps(state, indent=2)
    if text != written:
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(state_file)
    return text


def rollout(args: argparse.Namespace) -> int:
    """`./stack rollout MODEL VERSION` (or `status`) on the running stack: its model servers, the
    instances of the API service whose roster entry names the model, its model repository."""
    state_file = args.run_dir.resolve() / "stack.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if not state or not _alive(state["launcher_pid"], state.get("launcher_started")):
        say("not running: `./stack up` first")
        return 1
    repository = ["--repository", state["model_repository"]]
    if args.model == "status":
        return rollout_main(["status", *repository])
    ports = state["ports"]
    services = [s.name for s in compose_file.load().services if s.model == args.model]
    servers = [f"--model-server=127.0.0.1:{ports[role]}=http://127.0.0.1:{ports[role[:-len('-grpc')] + '-rest']}"
               for role in sorted(ports) if role.startswith("model-server") and role.endswith("-grpc")]
    apis = [f"--api=http://127.0.0.1:{number}" for role, number in sorted(ports.items())
            if any(role.startswith(f"{service}-") for service in services)]
    return rollout_main([args.model, *([str(args.version)] if args.version is not None else []),
                         *repository, *servers, *apis])


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state is [0], pgrp [2], start time [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot: with the pid, its identity."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _alive(pid: int, started: int | None = None) -> bool:
    """Running, not a zombie, and (given `started`) the very process recorded, not a stranger that
    reuses its pid."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == started


def _kill_groups(groups: list[list[int]]) -> None:
    """SIGKILL each recorded process group that is still ours. A group's id is its leader's pid:
    while the leader lives it must be the recorded process; once it is gone, the kernel does not
    hand its pid to anyone while members of the group remain, so the members are ours."""
    for group, started in groups:
        leader = _stat(group)
        if leader is not None and int(leader[19]) != started:
            continue  # the pid now belongs to another process
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / ".run", help="logs, rendered config, state")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start everything and supervise it until Ctrl-C or `down`")
    start.add_argument("--scale", action="append", default=[], metavar="SERVICE=N",
                       help="instances of text-api or vision-api (default: deploy.replicas in compose.yaml, "
                            "at most one per core this process may use), or model servers: tfserving=N "
                            "(default 1; every API instance calls each in turn)")
    start.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", "8080")))
    start.add_argument("--host", default="127.0.0.1", help="nginx listen address (0.0.0.0 to expose it)")
    start.add_argument("--ready-timeout", type=float, default=120.0)
    start.add_argument("--model-repository", type=Path,
                       default=Path(os.environ.get("MODEL_REPOSITORY", compose_file.MODEL_REPOSITORY)),
                       help="the folder served as /models (default: $MODEL_REPOSITORY or tfserving/models)")
    commands.add_parser("down", help="stop a stack started with `up`")
    commands.add_parser("status", help="print the running stack's processes")
    roll = commands.add_parser("rollout", help="roll version N of a model out (preflight, shadow, canary, then "
                                               "promoted or rolled back): `rollout lstm 2`; `rollout status`")
    roll.add_argument("model")
    roll.add_argument("version", nargs="?", type=int)
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "status": status, "rollout": rollout}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
