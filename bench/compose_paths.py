"""Where the compose gap goes: the same tuned /lstm cells on local mode and on one compose stack,
both up at once, the compose stack reached three ways, alternated cell by cell and round by round
so that drift in the machine's speed falls on all alike:

- `published, loopback`: 127.0.0.1:<published port>, as bench.run's compose cells and most users
  on the host itself reach it; with the engine's default userland proxy on, a `docker-proxy`
  process copies every byte between two TCP connections;
- `published, host address`: the same port on this host's own non-loopback address, which the
  kernel rewrites to nginx's container (iptables DNAT), no userland copy; what a client on
  another host goes through;
- `container address`: nginx's address on the compose network, port 8080: no proxy, no NAT,
  only the veth pair and the bridge.

The difference between the first two is the userland proxy's cost, between the second and the
third the NAT's, and what is left between the third and local mode is the containers' own
(veth, bridge, the replicas' CPU limits). Each cell also meters the CPU the docker-proxy
processes spent per request, and the whole machine's, in user mode and in the kernel (where the
per-packet work of veth pairs, the bridge and NAT is done, outside any container's processes).

    .venv/bin/python -m bench.compose_paths [--rounds 2] [--seconds 10] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.run import Cell, compose_stack, cpu_seconds, run_wrk, say, stack
from local_stack.topology import free_port

CONNECTIONS = (10, 100, 1000)


def host_address() -> str | None:
    """An IPv4 address of this host outside loopback and the engine's bridges, if it has one."""
    for name, addresses in psutil.net_if_addrs().items():
        if name == "lo" or name.startswith(("docker", "br-", "veth")):
            continue
        for address in addresses:
            if address.family.name == "AF_INET" and not ipaddress.ip_address(address.address).is_loopback:
                return address.address
    return None


def proxy_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "docker-proxy"]


@dataclasses.dataclass
class Costs:
    """What a cell cost besides its answering processes, ms per request."""

    proxy: float  # the docker-proxy processes' CPU
    user: float  # the whole machine's, in user mode (every process, wrk included)
    kernel: float  # the whole machine's, in the kernel: system, irq and softirq (the network's work)


def machine_cpu() -> tuple[float, float]:
    """Seconds of CPU the whole machine has spent so far: (user, kernel), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice) / ticks, (system + irq + softirq) / ticks


def measure(path: str, url: str, connections: int, seconds: int, pids: list[int]) -> tuple[Cell, Costs]:
    """One wrk cell, and what it cost outside the answering processes."""
    proxies = proxy_pids()
    proxy_before, (user_before, kernel_before) = cpu_seconds(proxies), machine_cpu()
    cell = run_wrk(Cell(path, "/lstm", connections, seconds), url + "/lstm", "lstm_post.lua", pids)
    user, kernel = machine_cpu()
    per_request = 1000 / max(cell.requests, 1)
    return cell, Costs((cpu_seconds(proxies) - proxy_before) * per_request, (user - user_before) * per_request,
                       (kernel - kernel_before) * per_request)


def report(measured: list[tuple[Cell, Costs]], paths: list[str], rounds: int, seconds: int, proxies: int) -> str:
    cells = [cell for cell, _ in measured]
    lines = [
        "# Where the compose gap goes",
        "",
        f"`.venv/bin/python -m bench.compose_paths --rounds {rounds} --seconds {seconds}`: tuned /lstm, wrk on this "
        f"machine, local mode and one compose stack up at once, {seconds} s per cell, the paths alternated "
        f"in each round (rotated by round). docker-proxy processes running: {proxies}. Median of the rounds; "
        "the ratio is against local mode in the same rounds; CPU is the answering processes' per request "
        "(containers' main processes with their children, or the local stack's), proxy CPU the docker-proxy "
        "processes', machine CPU the whole machine's (/proc/stat: user mode, and kernel: system, irq and softirq, "
        "where the network's per-packet work is done).",
        "",
        "| path | connections | req/s | vs local | p50 ms | p99 ms | CPU ms/req | proxy CPU ms/req "
        "| machine user ms/req | machine kernel ms/req | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for connections in CONNECTIONS:
        local = statistics.median(c.rps for c in cells if c.variant == "local" and c.connections == connections)
        for path in paths:
            mine = [c for c in cells if c.variant == path and c.connections == connections]
            costs = [cost for c, cost in measured if c.variant == path and c.connections == connections]
            rps = statistics.median(c.rps for c in mine)
            lines.append(
                f"| {path} | {connections} | {rps:.0f} | {rps / local:.2f} | "
                f"{statistics.median(c.p50_ms for c in mine):.1f} | {statistics.median(c.p99_ms for c in mine):.1f} | "
                f"{statistics.median(c.cpu_ms_per_request for c in mine):.2f} | "
                f"{statistics.median(c.proxy for c in costs):.2f} | {statistics.median(c.user for c in costs):.2f} | "
                f"{statistics.median(c.kernel for c in costs):.2f} | "
                f"{sum(c.failed for c in mine)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cells: list[tuple[Cell, Costs]] = []
    with tempfile.TemporaryDirectory(prefix="compose-paths-") as work, contextlib.ExitStack() as stacks:
        work = Path(work)
        local_url, local_pids, _ = stacks.enter_context(stack(work / "local", free_port()))
        project_url, container_pids, project = stacks.enter_context(compose_stack(work / "compose"))
        published_port = project_url.rsplit(":", 1)[1]
        urls = {"local": (local_url, local_pids), "published, loopback": (project_url, container_pids)}
        address = host_address()
        if address:
            urls["published, host address"] = (f"http://{address}:{published_port}", container_pids)
        nginx = next(c["Name"] for c in project.containers("nginx"))
        urls["container address"] = (project.address(nginx, 8080), container_pids)
        paths = list(urls)
        say(f"paths: {urls}; docker-proxy processes: {proxy_pids()}")
        for round_number in range(args.rounds):
            order = paths[round_number % len(paths):] + paths[:round_number % len(paths)]
            for connections in CONNECTIONS:
                for path in order:
                    url, pids = urls[path]
                    cells.append(measure(path, url, connections, args.seconds, pids))
                    time.sleep(1)
        text = report(cells, paths, args.rounds, args.seconds, len(proxy_pids()))
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
