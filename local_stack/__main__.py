"""./stack up|down|status: the whole topology as local processes.

    python -m local_stack up [--scale text-api=4] [--scale vision-api=2] [--http-port 8080]
    python -m local_stack down
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from local_stack import compose_file
from local_stack.processes import ServiceSpec, SupervisedProcess, http_ok

REPO_ROOT = compose_file.REPO_ROOT
NGINX_DIR = REPO_ROOT / "services" / "nginx"
STOP_TIMEOUT_SECONDS = 25.0


def say(message: str) -> None:
    print(f"local_stack: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        sys.exit("local_stack: nginx is not installed; scripts/bootstrap.sh installs it (apt-get install nginx)")
    return found


def parse_scale(values: list[str]) -> dict[str, int]:
    scale = dict.fromkeys(compose_file.API_SERVICES, 1)
    for value in values:
        name, _, count = value.partition("=")
        if name not in scale or not count.isdigit() or int(count) < 1:
            sys.exit(f"local_stack: --scale wants SERVICE=N with SERVICE in {list(scale)} and N >= 1, not {value!r}")
        scale[name] = int(count)
    return scale


def build_specs(args: argparse.Namespace, run_dir: Path, nginx_temp: Path) -> list[ServiceSpec]:
    settings = compose_file.load()
    logs = run_dir / "logs"
    grpc_port, rest_port = free_port(), free_port()
    python = sys.executable
    base_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    model_check = [http_ok(f"http://127.0.0.1:{rest_port}/v1/models/{name}", ("AVAILABLE",))
                   for name in settings.model_names]
    specs = [ServiceSpec(
        name="model-server",
        args=[python, "-m", "model_server", "--listen_address=127.0.0.1", f"--port={grpc_port}",
              f"--rest_api_port={rest_port}", *settings.model_server_flags,
              f"--rebase_model_base_path={compose_file.CONTAINER_MODEL_ROOT}={compose_file.MODEL_REPOSITORY}"],
        env={**base_env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tfserving"), str(REPO_ROOT)])},
        cwd=REPO_ROOT, log_path=logs / "model-server.log",
        ready=lambda: all(check() for check in model_check),
        address=f"gRPC 127.0.0.1:{grpc_port}, REST http://127.0.0.1:{rest_port}",
    )]
    upstreams: dict[str, list[str]] = {}
    for service, count in parse_scale(args.scale).items():
        service_dir = REPO_ROOT / "services" / service
        for index in range(1, count + 1):
            port = free_port()
            upstreams.setdefault(service, []).append(f"127.0.0.1:{port}")
            env = {**base_env, **settings.environments[service],
                   "TFSERVING_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}", "API_BIND": f"127.0.0.1:{port}"}
            # Each instance sums its own workers' metrics; emptied by gunicorn at every (re)start.
            env["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics" / f"{service}-{index}")
            # The same gunicorn.conf.py the service's container runs.
            gunicorn = [python, "-m", "gunicorn", "-c", str(service_dir / "gunicorn.conf.py"),
                        "--chdir", str(service_dir)]
            specs.append(ServiceSpec(
                name=f"{service}-{index}",
                args=gunicorn,
                env=env, cwd=service_dir, log_path=logs / f"{service}-{index}.log",
                ready=http_ok(f"http://127.0.0.1:{port}/readyz"), address=f"http://127.0.0.1:{port}",
            ))
    sys.path.insert(0, str(NGINX_DIR))
    import render  # services/nginx/render.py: the template both modes share

    nginx_dir = run_dir / "nginx"
    nginx_dir.mkdir(parents=True, exist_ok=True)
    values = render.values_for_local(f"{args.host}:{args.http_port}", nginx_dir, upstreams["text-api"],
                                     upstreams["vision-api"])
    values["temp_dir"] = str(nginx_temp)
    (nginx_dir / "nginx.conf").write_text(render.render(values))
    specs.append(ServiceSpec(
        name="nginx",
        args=[find_nginx(), "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"),
              "-e", str(nginx_dir / "error.log"), "-g", "daemon off;"],
        env=base_env, cwd=nginx_dir, log_path=logs / "nginx.log",
        ready=http_ok(f"http://127.0.0.1:{args.http_port}/nginx-health"),
        address=f"http://{args.host}:{args.http_port}",
    ))
    return specs


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def up(args: argparse.Namespace) -> int:
    run_dir = args.run_dir.resolve()
    state_file = run_dir / "stack.json"
    if state_file.exists():
        stale = json.loads(state_file.read_text())
        if _alive(stale["launcher_pid"]):
            sys.exit(f"local_stack: already running (pid {stale['launcher_pid']}); `./stack down` first")
        _kill_groups(stale.get("process_groups", []))
    if not port_is_free(args.host, args.http_port):
        sys.exit(f"local_stack: port {args.http_port} is taken; choose another with --http-port")
    run_dir.mkdir(parents=True, exist_ok=True)
    # nginx workers (user nobody when started as root) must reach their temp dirs; /tmp is safe.
    nginx_temp = Path(tempfile.mkdtemp(prefix="local-stack-nginx-"))
    nginx_temp.chmod(0o755)
    processes = [SupervisedProcess(spec, say) for spec in build_specs(args, run_dir, nginx_temp)]

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    started = time.monotonic()
    try:
        for process in processes:
            process.start()
        _write_state(state_file, processes)
        say(f"starting {len(processes)} processes; logs in {run_dir / 'logs'}")
        pending = list(processes)
        while pending and not stopping:
            if time.monotonic() - started > args.ready_timeout:
                names = ", ".join(p.spec.name for p in pending)
                say(f"not ready after {args.ready_timeout:.0f}s: {names}; see their logs")
                return 1
            for process in processes:
                process.check()
            pending = [p for p in pending if not p.spec.ready()]
            time.sleep(0.2)
        if stopping:
            return 0
        say(f"ready in {time.monotonic() - started:.1f}s")
        for process in processes:
            say(f"  {process.spec.name:<14} {process.spec.address}")
        base = processes[-1].spec.address
        say(f'try: curl -X POST {base}/lstm -H "Content-Type: application/json" -d \'{{"line": "我很喜欢这个产品"}}\'')
        say(f"     curl -X POST {base}/cv_sod -H 'Content-Type: image/jpeg' --data-binary @photo.jpg -o mask.png")
        say("stop with Ctrl-C or `./stack down`")
        while not stopping:
            for process in processes:
                process.check()
            _write_state(state_file, processes)
            time.sleep(0.2)
        return 0
    finally:
        say("stopping")
        for process in reversed(processes):  # nginx first, the model server last
            process.stop(STOP_TIMEOUT_SECONDS)
        state_file.unlink(missing_ok=True)
        shutil.rmtree(nginx_temp, ignore_errors=True)
        say("stopped")


def down(args: argparse.Namespace) -> int:
    state_file = args.run_dir.resolve() / "stack.json"
    if not state_file.exists():
        say("no stack is running here")
        return 0
    state = json.loads(state_file.read_text())
    pid = state["launcher_pid"]
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS * 3
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    _kill_groups(state.get("process_groups", []))
    state_file.unlink(missing_ok=True)
    say("stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    state_file = args.run_dir.resolve() / "stack.json"
    if not state_file.exists() or not _alive(json.loads(state_file.read_text())["launcher_pid"]):
        say("not running")
        return 1
    print(state_file.read_text())
    return 0


def _write_state(state_file: Path, processes: list[SupervisedProcess]) -> None:
    state = {"launcher_pid": os.getpid(),
             "process_groups": [p.pid for p in processes if p.pid],
             "services": {p.spec.name: {"pid": p.pid, "address": p.spec.address, "restarts": p.restarts}
                          for p in processes}}
    text = json.dumps(state, indent=2)
    if not state_file.exists() or state_file.read_text() != text:
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(state_file)


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent (e.g. a test) to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _kill_groups(groups: list[int]) -> None:
    for group in groups:
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
                       help="instances of text-api or vision-api (default 1 each)")
    start.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", "8080")))
    start.add_argument("--host", default="127.0.0.1", help="nginx listen address (0.0.0.0 to expose it)")
    start.add_argument("--ready-timeout", type=float, default=120.0)
    commands.add_parser("down", help="stop a stack started with `up`")
    commands.add_parser("status", help="print the running stack's processes")
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
