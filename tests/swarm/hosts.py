"""Several Docker hosts on this one machine, for the live swarm tier, and a swarm of them.

Each host is a `dockerd` in a network namespace of its own, linked to the others only by a veth
pair to one bridge: its own address, routes and iptables, so swarm's control traffic (2377/tcp),
gossip (7946) and overlay (VXLAN, 4789/udp) cross a real, if virtual, network, and a host is
lost by cutting its link. Each has its own data root, exec root, socket, hostname (a UTS
namespace) and cgroup parent. A registry (Debian's `docker-registry`) runs on the first host;
images reach it from this machine's engine with skopeo, and the hosts pull them from it. The
first host is the swarm's manager, the others workers.

dockerd starts under `nsenter --net=`, not `ip netns exec`: the latter remounts /sys, which hides
the cgroup file system from dockerd ("Devices cgroup isn't mounted").

Every name a lab makes starts with its prefix (PREFIX and a run id); `leftovers()` lists what is
still there, so a test can say nothing was left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

from tests.conftest import wait_until

PREFIX = "msvsw"  # every namespace, link, path and process a lab makes has it in its name
REGISTRY_PORT = 5000
NETWORK_RANGE = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544's range for network tests


class SwarmUnavailable(RuntimeError):
    """This machine cannot run the lab (not root, no dockerd, registry or skopeo)."""


def run(*command: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n"
                           f"{result.stderr[-2000:]}")
    return result


def require_tools() -> None:
    missing = [tool for tool in ("dockerd", "docker-registry", "skopeo", "nsenter", "unshare", "ip", "iptables")
               if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]
    if missing:
        raise SwarmUnavailable(f"missing {missing} (scripts/bootstrap.sh --for-tests installs them)")
    if os.geteuid() != 0:
        raise SwarmUnavailable("network namespaces and dockerd need root")


def kernel_has_esp() -> bool:
    """Whether this kernel can encrypt an overlay network: swarm's `encrypted` overlays are IPsec ESP
    between hosts. Without it (CONFIG_INET_ESP unset, as on some VM kernels) the overlay is created
    and traffic between hosts is silently dropped. Asked by adding an ESP state in a throwaway
    network namespace."""
    namespace = f"esp-probe-{os.getpid()}"
    run("ip", "netns", "add", namespace)
    try:
        state = ["src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x100",
                 "enc", "cbc(aes)", "0x" + "00" * 16]
        return run("ip", "-n", namespace, "xfrm", "state", "add", *state, check=False).returncode == 0
    finally:
        run("ip", "netns", "del", namespace, check=False)


@dataclasses.dataclass
class Host:
    name: str  # its hostname, netns and swarm node name
    address: str  # on the lab's bridge
    link: str  # the bridge's end of its veth pair
    root: Path  # data root, logs
    exec_root: Path  # short: dockerd's and containerd's sockets live here
    daemon: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return f"unix://{self.exec_root}/docker.sock"

    def docker(self, *args: str, check: bool = True, timeout: float = 120, env: dict | None = None,
               **kwargs) -> subprocess.CompletedProcess:
        return run("docker", "-H", self.socket, *args, check=check, timeout=timeout,
                   env={**os.environ, **(env or {})}, **kwargs)

    def answers(self) -> bool:
        return self.docker("info", "--format", "{{.ID}}", check=False, timeout=20).returncode == 0


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of NETWORK_RANGE that no address or route of this machine is in."""
    words = (run("ip", "-4", "-o", "addr").stdout + run("ip", "-4", "route").stdout).split()
    taken = [ipaddress.ip_network(word, strict=False) for word in words
             if word[0].isdigit() and word.count(".") == 3]
    candidates = list(NETWORK_RANGE.subnets(new_prefix=24))
    random.shuffle(candidates)
    return next(net for net in candidates if not any(net.overlaps(other) for other in taken))


def _registry_answers(registry: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{registry}/v2/", timeout=3) as answer:
            return answer.status == 200
    except OSError:
        return False


class SwarmLab:
    """`hosts` Docker hosts linked by one bridge, a registry on the first, a swarm of them all."""

    def __init__(self, work_dir: Path, hosts: int = 3):
        self.run_id = uuid.uuid4().hex[:4]
        self.prefix = f"{PREFIX}{self.run_id}"
        self.bridge = self.prefix  # interface names have at most 15 characters
        self.work_dir = work_dir
        subnet = free_subnet()
        self.gateway = f"{subnet.network_address + 1}"
        self.prefix_length = subnet.prefixlen
        self.hosts = [Host(name=f"{self.prefix}-{i}", address=f"{subnet.network_address + 10 + i}",
                           link=f"{self.prefix}v{i}", root=work_dir / f"host-{i}",
                           exec_root=Path("/run") / self.prefix / f"h{i}") for i in range(1, hosts + 1)]
        self.registry = f"{self.hosts[0].address}:{REGISTRY_PORT}"
        self._registry: subprocess.Popen | None = None
        self._forward_rules = [["FORWARD", "-i", self.bridge, "-j", "ACCEPT"],
                               ["FORWARD", "-o", self.bridge, "-j", "ACCEPT"]]
        self.timings: dict[str, float] = {}

    def __enter__(self) -> SwarmLab:
        """Started; stopped and removed again if starting fails half-way."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def manager(self) -> Host:
        return self.hosts[0]

    @property
    def workers(self) -> list[Host]:
        return self.hosts[1:]

    # The network.
    def _link_hosts(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.gateway}/{self.prefix_length}", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        # A Docker engine on this machine sets FORWARD's policy to DROP, and bridged frames pass
        # through iptables (br_netfilter): the hosts' traffic to each other is let through.
        for rule in self._forward_rules:
            run("iptables", "-I", *rule)
        for host in self.hosts:
            run("ip", "netns", "add", host.name)
            run("ip", "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.name)
            run("ip", "link", "set", host.link, "master", self.bridge, "up")
            run("ip", "-n", host.name, "addr", "add", f"{host.address}/{self.prefix_length}", "dev", "eth0")
            run("ip", "-n", host.name, "link", "set", "eth0", "up")
            run("ip", "-n", host.name, "link", "set", "lo", "up")
            run("ip", "-n", host.name, "route", "add", "default", "via", self.gateway)

    def cut(self, host: Host) -> None:
        """The host's link down: to the others it is gone (its processes keep running, cut off)."""
        run("ip", "link", "set", host.link, "down")

    def reconnect(self, host: Host) -> None:
        run("ip", "link", "set", host.link, "up")

    # The engines and the registry.
    def _in_namespace(self, host: Host, *command: str) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{host.name}", "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', host.name, *command]

    def _start_engine(self, host: Host) -> None:
        host.root.mkdir(parents=True, exist_ok=True)
        host.exec_root.mkdir(parents=True, exist_ok=True)
        command = self._in_namespace(
            host, shutil.which("dockerd") or "/usr/sbin/dockerd", "--data-root", str(host.root / "data"),
            "--exec-root", str(host.exec_root), "--pidfile", str(host.exec_root / "dockerd.pid"),
            "-H", host.socket, "--insecure-registry", self.registry, "--cgroup-parent", f"/{host.name}",
            "--log-level", "warn")
        with open(host.root / "dockerd.log", "wb") as log:
            host.daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _start_registry(self) -> None:
        storage = self.work_dir / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "registry.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "version": 0.1, "log": {"level": "warn"}, "http": {"addr": self.registry},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}}}))
        with open(self.work_dir / "registry.log", "wb") as log:
            self._registry = subprocess.Popen(
                self._in_namespace(self.manager, "docker-registry", "serve", str(config)),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _form_swarm(self) -> None:
        self.manager.docker("swarm", "init", "--advertise-addr", self.manager.address)
        token = self.manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for worker in self.workers:
            worker.docker("swarm", "join", "--token", token, f"{self.manager.address}:2377")
        wait_until(lambda: self.ready_nodes() == {h.name for h in self.hosts}, 60, "every node Ready")

    def start(self) -> None:
        started = time.monotonic()
        self._link_hosts()
        for host in self.hosts:
            self._start_engine(host)
        self._start_registry()
        for host in self.hosts:
            wait_until(host.answers, 90, f"dockerd on {host.name} ({host.root / 'dockerd.log'})", interval=0.5)
        wait_until(lambda: _registry_answers(self.registry), 30, f"the registry ({self.work_dir / 'registry.log'})")
        self._form_swarm()
        self.timings["hosts, registry and swarm"] = time.monotonic() - started

    # The swarm.
    def nodes(self) -> list[dict]:
        out = self.manager.docker("node", "ls", "--format", "{{json .}}").stdout
        return [json.loads(line) for line in out.splitlines()]

    def ready_nodes(self) -> set[str]:
        return {node["Hostname"] for node in self.nodes() if node["Status"] == "Ready"}

    def push(self, image: str, name: str, tag: str) -> str:
        """This machine's engine's `image` as REGISTRY/name:tag."""
        target = f"{self.registry}/{name}:{tag}"
        run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"docker-daemon:{image}", f"docker://{target}",
            timeout=900)
        return target

    # Teardown.
    def _stop_engine(self, host: Host) -> None:
        """After SIGTERM (sent to every engine first, so that they stop side by side)."""
        if host.daemon is None:
            return
        try:
            host.daemon.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(host.daemon.pid, signal.SIGKILL)
            host.daemon.wait()
        # What a killed engine could leave: its containers' processes (in its cgroups), mounts.
        for cgroup in self.cgroups(host):
            for procs in cgroup.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for cgroup in self.cgroups(host):
            for folder in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        for mount in reversed(self.mounts()):
            if str(host.root) in mount or str(host.exec_root) in mount:
                run("umount", "-l", mount, check=False)

    def stop(self) -> None:
        for host in self.hosts:
            if host.daemon is not None:
                host.daemon.send_signal(signal.SIGTERM)  # it stops its containers, then its containerd
        for host in self.hosts:
            self._stop_engine(host)
        if self._registry is not None:
            self._registry.terminate()
            self._registry.wait(30)
        for host in self.hosts:
            run("ip", "netns", "delete", host.name, check=False)
        run("ip", "link", "delete", self.bridge, check=False)
        for rule in self._forward_rules:
            run("iptables", "-D", *rule, check=False)
        shutil.rmtree(Path("/run") / self.prefix, ignore_errors=True)
        for host in self.hosts:
            shutil.rmtree(host.root / "data", ignore_errors=True)
        shutil.rmtree(self.work_dir / "registry", ignore_errors=True)

    @staticmethod
    def cgroups(host: Host) -> list[Path]:
        """The host's cgroup parent: in each controller's hierarchy (cgroup v1), or the one (v2)."""
        hierarchies = [Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").iterdir()]
        return [h / host.name for h in hierarchies if (h / host.name).is_dir()]

    def mounts(self) -> list[str]:
        return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if self.prefix in line
                or str(self.work_dir) in line]

    def leftovers(self) -> dict[str, list[str]]:
        """What of this lab is still there: none of it, after stop()."""
        return {
            "network namespaces": [n for n in run("ip", "netns", "list").stdout.split() if n.startswith(self.prefix)],
            "links": [line for line in run("ip", "-o", "link").stdout.splitlines() if self.prefix in line],
            "processes": [p for p in run("ps", "-eo", "pid,args").stdout.splitlines()
                          if self.prefix in p or str(self.work_dir) in p],
            "mounts": self.mounts(),
            "iptables rules": [r for r in run("iptables", "-S", "FORWARD").stdout.splitlines() if self.bridge in r],
            "cgroups": [str(p) for h in self.hosts for p in self.cgroups(h)],
            "image data": [str(p) for p in [*(h.root / "data" for h in self.hosts), self.work_dir / "registry"]
                           if p.exists()],
        }


