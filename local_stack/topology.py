"""The local topology: which processes, on which ports, with which settings, from compose.yaml.

Used by `./stack up` and by the benchmark (which swaps settings or an app to compare variants).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from local_stack import compose_file
from local_stack.processes import ServiceSpec, SupervisedProcess, http_ok, model_settled, port_is_free
from service_roster import nginx_conf

REPO_ROOT = compose_file.REPO_ROOT
PROMETHEUS_CONFIG = REPO_ROOT / "monitoring" / "prometheus.yml"
STOP_TIMEOUT_SECONDS = 25.0
GUNICORN_CONFIG = "python:service_kit.http.gunicorn_config"  # as services/api.Dockerfile's CMD
# How long an API instance restarted to follow a moved model server may take to be ready.
FOLLOW_TIMEOUT_SECONDS = 120.0
EPHEMERAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
ROLLOUTS = "rollouts"  # the rollouts' state files, in the model repository (service_kit.core.rollout_state)


def default_scale() -> dict[str, int]:
    """compose's `deploy.replicas` per API service, but no more instances than this process may
    use cores (its CPU affinity, which the stack's processes inherit). An instance is one gevent
    worker, one core at most, and each batches its own requests: on one core two instances of
    /lstm answered 825/s at most where one answered 1,070/s, and more slowly at every load
    (bench/results/where_time_goes.md, "Issue 35, third pass"); on two, two are worth their cost."""
    cores = len(os.sched_getaffinity(0))
    return {service: min(count, cores) for service, count in compose_file.load().replicas.items()}


@dataclasses.dataclass
class Options:
    run_dir: Path
    http_port: int = 8080
    host: str = "127.0.0.1"
    scale: dict[str, int] = dataclasses.field(default_factory=default_scale)
    # Benchmark variants: extra environment per API service, another WSGI app, other model server flags.
    env_overrides: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    app_overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    model_server_flags: list[str] | None = None
    # Model servers on the same repository (`--scale tfserving=N`, as compose's service is named).
    model_servers: int = 1
    # Benchmark variant: nginx without the roster's max_in_flight bounds (every request queues in a worker).
    unbounded: bool = False
    # Mounted at /models in compose; MODEL_REPOSITORY names another folder in both modes.
    model_repository: Path = compose_file.MODEL_REPOSITORY


def free_port(exclude: frozenset[int] | set[int] = frozenset()) -> int:
    """A free loopback port below the kernel's ephemeral range: a port from that range can be
    taken by any outgoing connection (nginx's to an upstream, a client's) while its service is
    down for a restart."""
    try:
        ephemeral_low = int(EPHEMERAL_PORT_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 0
    if ephemeral_low > 12_000:
        for _ in range(100):
            port = random.randrange(ephemeral_low - 10_000, ephemeral_low)
            if port not in exclude and port_is_free("127.0.0.1", port):
                return port
    with socket.socket() as sock:  # no room below it: any free port
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        raise SystemExit("local_stack: nginx is missing; scripts/bootstrap.sh installs it (apt-get install nginx)")
    return found


def build_specs(options: Options, nginx_temp: Path, ports: dict[str, int] | None = None) -> list[ServiceSpec]:
    """Every process of the stack; `ports` (by role, as in ServiceSpec.ports) keeps those given,
    and free ones are chosen for the rest. Writes nginx.conf for the upstreams' ports."""
    settings = compose_file.load(repository=options.model_repository)
    run_dir = options.run_dir
    logs = run_dir / "logs"
    ports = dict(ports or {})

    def port(role: str) -> int:
        if role not in ports:
            ports[role] = free_port(exclude=set(ports.values()))
        return ports[role]

    python = sys.executable
    base_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    flags = settings.model_server_flags if options.model_server_flags is None else options.model_server_flags
    specs = []
    grpc_addresses = []
    for index in range(1, options.model_servers + 1):
        # The first is `model-server`, as with one; more are `model-server-2`, ...
        name = "model-server" if index == 1 else f"model-server-{index}"
        grpc_port, rest_port = port(f"{name}-grpc"), port(f"{name}-rest")
        grpc_addresses.append(f"127.0.0.1:{grpc_port}")
        # A model server is ready once every model's first load has finished, well or badly.
        model_check = [model_settled(f"http://127.0.0.1:{rest_port}/v1/models/{model}")
                       for model in settings.model_names]
        specs.append(ServiceSpec(
            name=name,
            args=[python, "-m", "model_server", "--listen_address=127.0.0.1", f"--port={grpc_port}",
                  f"--rest_api_port={rest_port}", *flags,
                  f"--rebase_model_base_path={compose_file.CONTAINER_MODEL_ROOT}={options.model_repository}"],
            env=base_env, cwd=REPO_ROOT, log_path=logs / f"{name}.log",
            ready=lambda checks=model_check: all(check() for check in checks),
            address=f"gRPC 127.0.0.1:{grpc_port}, REST http://127.0.0.1:{rest_port}",
            ports={f"{name}-grpc": grpc_port, f"{name}-rest": rest_port},
        ))
    # Every API instance calls every model server, a call each in turn (tfserving_client's round_robin).
    tfserving_address = grpc_addresses[0] if len(grpc_addresses) == 1 else "ipv4:" + ",".join(grpc_addresses)
    upstreams: dict[str, list[str]] = {}
    for service, count in options.scale.items():
        service_dir = REPO_ROOT / "services" / service
        for index in range(1, count + 1):
            api_port = port(f"{service}-{index}")
            upstreams.setdefault(service, []).append(f"127.0.0.1:{api_port}")
            env = {**base_env, **settings.environments[service], **options.env_overrides.get(service, {}),
                   "TFSERVING_GRPC_ADDRESS": tfserving_address, "API_BIND": f"127.0.0.1:{api_port}",
                   "ROLLOUT_DIR": str(options.model_repository / ROLLOUTS)}
            # Each instance sums its own workers' metrics; emptied by gunicorn at every (re)start.
            env["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics" / f"{service}-{index}")
            # The same gunicorn config the service's container runs; it reads ./service.toml.
            gunicorn = [python, "-m", "gunicorn", "-c", GUNICORN_CONFIG, "--chdir", str(service_dir)]
            if service in options.app_overrides:  # the benchmark's constant-answer app
                gunicorn.append(options.app_overrides[service])
            specs.append(ServiceSpec(
                name=f"{service}-{index}",
                args=gunicorn,
                env=env, cwd=service_dir, log_path=logs / f"{service}-{index}.log",
                # Ready when its model is, or when its model failed to load (then its routes
                # answer 503 and `./stack up` says so); other services do not wait on it.
                ready=model_settled(f"http://127.0.0.1:{api_port}/readyz"), address=f"http://127.0.0.1:{api_port}",
                readiness_url=f"http://127.0.0.1:{api_port}/readyz", ports={f"{service}-{index}": api_port},
            ))
    conf_file = nginx_conf_file(run_dir)
    nginx_dir = conf_file.parent
    nginx_dir.mkdir(parents=True, exist_ok=True)
    # nginx's workers (user nobody when started as root) may not reach the checkout; /tmp they can.
    shutil.copytree(REPO_ROOT / nginx_conf.STATIC, nginx_temp / "static", dirs_exist_ok=True)
    services = [dataclasses.replace(s, max_in_flight=0) for s in settings.services] if options.unbounded \
        else settings.services
    values = nginx_conf.values_for_local(services, f"{options.host}:{options.http_port}", nginx_dir,
                                         upstreams, static_dir=nginx_temp / "static")
    values["temp_dir"] = str(nginx_temp)
    conf_file.write_text(nginx_conf.render(values, (REPO_ROOT / nginx_conf.TEMPLATE).read_text()))
    specs.append(ServiceSpec(
        name="nginx",
        args=[find_nginx(), "-p", str(nginx_dir), "-c", str(conf_file),
              "-e", str(nginx_dir / "error.log"), "-g", "daemon off;"],
        env=base_env, cwd=nginx_dir, log_path=logs / "nginx.log",
        ready=http_ok(f"http://127.0.0.1:{options.http_port}/nginx-health"),
        address=f"http://{options.host}:{options.http_port}",
    ))
    return specs


def nginx_conf_file(run_dir: Path) -> Path:
    return run_dir / "nginx" / "nginx.conf"


def supervised(options: Options, nginx_temp: Path, say: Callable[[str], None]) -> list[SupervisedProcess]:
    """The stack's processes, each restarted when it dies; one whose port another program took
    while it was down restarts on a new port, and whoever reaches it follows."""
    processes = [SupervisedProcess(spec, say) for spec in build_specs(options, nginx_temp)]

    def move(process: SupervisedProcess) -> None:
        assignment = {role: number for p in processes for role, number in p.spec.ports.items()}
        for role, number in process.spec.ports.items():
            if not port_is_free("127.0.0.1", number):
                assignment[role] = free_port(exclude=set(assignment.values()))
                say(f"{process.spec.name}: port {number} was taken while it was down; moving to {assignment[role]}")
        conf_file = nginx_conf_file(options.run_dir)
        conf_before = conf_file.read_text()
        renewed = {spec.name: spec for spec in build_specs(options, nginx_temp, assignment)}
        followers = []
        for other in processes:
            before, other.spec = other.spec, renewed[other.spec.name]
            if other is process or other.process is None:
                continue
            if other.spec.name == "nginx" and conf_file.read_text() != conf_before:
                say("nginx: reloading with the new upstream")
                other.reload()
            elif (before.args, before.env) != (other.spec.args, other.spec.env):
                followers.append(other)
        if followers:
            process.start()  # the model server first: the API instances are ready only once it is
            for follower in followers:  # one at a time, each ready before the next: nginx always has one
                say(f"{follower.spec.name}: restarting to follow the model server")
                follower.restart(STOP_TIMEOUT_SECONDS)
                follower.wait_ready(FOLLOW_TIMEOUT_SECONDS)
            say(f"{len(followers)} API instances follow the model server")
        prometheus = options.run_dir / "prometheus.yml"
        if prometheus.exists():
            prometheus.write_text(prometheus_config([p.spec for p in processes]))

    for process in processes:
        process.on_ports_taken = move
    return processes


def prometheus_config(specs: list[ServiceSpec]) -> str:
    """monitoring/prometheus.yml with this stack's loopback addresses instead of Docker's DNS, for
    anyone who runs a Prometheus beside local mode (`prometheus --config.file=.run/prometheus.yml`)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for job in config["scrape_configs"]:
        if job["job_name"] == "tfserving":
            targets = [s.address.split("REST http://", 1)[1] for s in specs if s.name.startswith("model-server")]
        else:
            targets = [s.address.removeprefix("http://") for s in specs if s.name.startswith(job["job_name"] + "-")]
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": targets}]
    return "# Rendered by local_stack from monitoring/prometheus.yml for this run.\n" + yaml.safe_dump(config)


def start_and_wait(processes: list[SupervisedProcess], timeout: float,
                   stopping: Callable[[], bool] = lambda: False) -> list[SupervisedProcess]:
    """Start everything at once (the API services retry until the model server is up) and wait
    until all say they are ready at once, in one pass: one that was ready a moment ago may not be
    now (an API instance whose channel lost the model server while it started); returns those that
    are not (empty on success)."""
    started = time.monotonic()
    for process in processes:
        process.start()
    while True:
        for process in processes:
            process.check()
        pending = [p for p in processes if not p.spec.ready()]
        if not pending or stopping() or time.monotonic() - started >= timeout:
            return pending
        time.sleep(0.2)


def stop_all(processes: list[SupervisedProcess]) -> None:
    for process in reversed(processes):  # nginx first, the model server last
        process.stop(STOP_TIMEOUT_SECONDS)


def nginx_temp_dir() -> Path:
    """nginx workers (user nobody when started as root) must reach their temp dirs; /tmp is safe."""
    path = Path(tempfile.mkdtemp(prefix="local-stack-nginx-"))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def running(options: Options, say: Callable[[str], None], timeout: float = 120.0) -> Iterator[list[SupervisedProcess]]:
    """The whole topology, ready, for the duration of a `with` block (the benchmark's use)."""
    nginx_temp = nginx_temp_dir()
    processes = supervised(options, nginx_temp, say)
    try:
        not_ready = start_and_wait(processes, timeout)
        if not_ready:
            raise RuntimeError(f"not ready after {timeout:.0f}s: {[p.spec.name for p in not_ready]}")
        yield processes
    finally:
        stop_all(processes)
        shutil.rmtree(nginx_temp, ignore_errors=True)
