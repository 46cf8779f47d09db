"""The stack on a swarm lab (tests/swarm/hosts.py) as users deploy it: images pushed to the
registry, `docker stack deploy -c compose.swarm.yaml`, and what the tier asks of it: its tasks,
where they run, which addresses nginx sent requests to, whether an update finished.

The images are the ones the compose tier builds (tests/compose/docker_host.py; cached, so built
once a run). Every host is labelled model-server=true (two model servers, one a host, and a third
host to take over from a lost one), and the model server's image is loaded into each instead of
going through the registry: it stands in for tensorflow/serving, which users pull from Docker
Hub, and is 1.7 GB that gzip would take a minute over on this machine.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import requests
import yaml

from tests.compose.docker_host import ComposeProject
from tests.conftest import REPO_ROOT, wait_until
from tests.swarm.hosts import Host, SwarmLab, kernel_has_esp

STACK_FILE = REPO_ROOT / "compose.swarm.yaml"
STACK = "model-serving"
HTTP_PORT = 8080
MODEL_SERVER = "tfserving"
_UPSTREAM = re.compile(r'"upstream":"([^"]*)"')  # "10.0.1.5:8000, 10.0.1.6:8000" when retried
SMALL_PNG = cv2.imencode(".png", np.full((8, 8, 3), 200, np.uint8))[1].tobytes()
_ADDRESS = re.compile(r"(\d+\.\d+\.\d+\.\d+):\d+")


def _tagged(image: str) -> str:
    return image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest"


class SwarmStack:
    """compose.swarm.yaml deployed as STACK on `lab`, from `images`' builds."""

    def __init__(self, lab: SwarmLab, images: ComposeProject, work_dir: Path, stack_file: Path = STACK_FILE):
        self.lab, self.work_dir, self.stack_file = lab, work_dir, stack_file
        self.notes: list[str] = []  # what was deployed otherwise than the stack file says, and why
        built = yaml.safe_load(images.files[-1].read_text())["services"]  # the test override: image names
        self.services = list(yaml.safe_load(stack_file.read_text())["services"])
        self.source_images = {name: _tagged(built[name]["image"]) for name in self.services if name in built}
        self.tag = "1"
        self.timings: dict[str, float] = {}

    def url(self, host: Host | None = None) -> str:
        return f"http://{(host or self.lab.manager).address}:{HTTP_PORT}"

    def environment(self) -> dict[str, str]:
        return {"REGISTRY": self.lab.registry, "TAG": self.tag, "HTTP_PORT": str(HTTP_PORT),
                "MODEL_REPOSITORY": str(REPO_ROOT / "tfserving" / "models"),
                "MODEL_SERVER_IMAGE": self.source_images[MODEL_SERVER]}

    # Images.
    def publish_images(self) -> None:
        """Pushes and the model server's load side by side (each waits on the other's disk or CPU)."""
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as loader:
            loaded = loader.submit(self._load_model_server)
            for name, image in self.source_images.items():
                if name != MODEL_SERVER:
                    self.lab.push(image, f"model-serving/{name}", self.tag)
            self.timings["images pushed to the registry"] = time.monotonic() - started
            loaded.result()
        self.timings["... and the model server's loaded on each host, meanwhile"] = time.monotonic() - started

    def _load_model_server(self) -> None:
        archive = self.work_dir / "model-server.tar"
        subprocess.run(["docker", "save", "-o", str(archive), self.source_images[MODEL_SERVER]], check=True,
                       timeout=600)
        try:
            with concurrent.futures.ThreadPoolExecutor(len(self.lab.hosts)) as loads:
                for done in [loads.submit(self._load_into, host, archive) for host in self.lab.hosts]:
                    done.result()
        finally:
            archive.unlink()

    @staticmethod
    def _load_into(host: Host, archive: Path) -> None:
        with open(archive, "rb") as image:
            host.docker("load", "--quiet", stdin=image, timeout=600)

    def publish_new_tag(self, service: str, tag: str) -> str:
        """`service`'s image with one label changed (a new image, the same layers), pushed as `tag`."""
        source = f"{self.source_images[service].rsplit(':', 1)[0]}:swarm-{tag}"
        subprocess.run(["docker", "build", "-q", "-t", source, "-"], check=True, capture_output=True,
                       input=f"FROM {self.source_images[service]}\nLABEL org.opencontainers.image.version={tag}\n",
                       text=True)
        try:
            return self.lab.push(source, f"model-serving/{service}", tag)
        finally:
            subprocess.run(["docker", "image", "rm", source], capture_output=True)

    # The stack.
    def deploy(self) -> None:
        started = time.monotonic()
        for host in self.lab.hosts:
            self.lab.manager.docker("node", "update", "--label-add", "model-server=true", host.name)
        self.lab.manager.docker("stack", "deploy", "--resolve-image", "never", "-c", str(self.deployable()), STACK,
                                env=self.environment(), timeout=300)
        self.wait_converged(300)
        # nginx started before the API tasks existed and re-resolves their names every second.
        for host in self.lab.hosts:
            wait_until(lambda h=host: self.answers(h), 30, f"both APIs through {host.name}'s nginx", interval=0.5)
        self.timings["docker stack deploy, until every task is healthy and every nginx answers"] = \
            time.monotonic() - started

    def deployable(self) -> Path:
        """The stack file, or where this kernel cannot encrypt overlays (kernel_has_esp), a copy with
        their `encrypted` option taken out: encrypted, they would carry nothing between the hosts."""
        stack = yaml.safe_load(self.stack_file.read_text())
        encrypted = [name for name, network in (stack.get("networks") or {}).items()
                     if (network or {}).get("driver_opts", {}).get("encrypted")]
        if not encrypted or kernel_has_esp():
            return self.stack_file
        for name in encrypted:
            del stack["networks"][name]["driver_opts"]["encrypted"]
        copy = self.work_dir / "compose.swarm.unencrypted.yaml"
        copy.write_text(yaml.safe_dump(stack, sort_keys=False))
        self.notes.append(f"overlays {encrypted} deployed unencrypted: this kernel has no IPsec ESP "
                          "(CONFIG_INET_ESP), which swarm's encrypted overlays need")
        return copy

    def service(self, name: str) -> str:
        return f"{STACK}_{name}"

    def inspect(self, *objects: str) -> list[dict]:
        return json.loads(self.lab.manager.docker("inspect", *objects).stdout) if objects else []

    def tasks(self, name: str) -> list[dict]:
        """The service's tasks that should be running: node, state, address, image."""
        ids = self.lab.manager.docker("service", "ps", "-q", "--filter", "desired-state=running",
                                      self.service(name)).stdout.split()
        nodes = {n["ID"]: n["Description"]["Hostname"] for n in self.inspect(*{t["NodeID"] for t in self.inspect(*ids)
                                                                               if t.get("NodeID")})}
        return [{"id": t["ID"], "node": nodes.get(t.get("NodeID"), ""), "state": t["Status"]["State"],
                 "image": t["Spec"]["ContainerSpec"]["Image"],
                 "address": next((a.split("/")[0] for n in t.get("NetworksAttachments", [])
                                  for a in n.get("Addresses", [])), "")}
                for t in self.inspect(*ids)]

    def running(self, name: str) -> list[dict]:
        return [t for t in self.tasks(name) if t["state"] == "running"]

    def healthy_tasks(self) -> set[str]:
        """Task ids whose container is healthy, on the hosts the manager sees Ready (a host cut off
        still runs its containers, and this machine can still ask its engine)."""
        ready = self.lab.ready_nodes()
        found: set[str] = set()
        for host in self.lab.hosts:
            if host.name in ready:
                found |= set(host.docker("ps", "--filter", f"label=com.docker.stack.namespace={STACK}", "--filter",
                                         "health=healthy", "--format", '{{.Label "com.docker.swarm.task.id"}}',
                                         check=False, timeout=20).stdout.split())
        return found

    def converged(self) -> bool:
        """Every replicated service at its replica count and nginx on every active node, each task
        running and healthy (swarm calls a task running before its health check has passed)."""
        healthy = self.healthy_tasks()
        active = sum(1 for n in self.lab.nodes() if n["Availability"] == "Active" and n["Status"] == "Ready")
        for name in self.services:
            mode = self.inspect(self.service(name))[0]["Spec"]["Mode"]
            running = self.running(name)
            if len(running) != mode.get("Replicated", {}).get("Replicas", active):
                return False
            if not all(task["id"] in healthy for task in running):
                return False
        return True

    def wait_converged(self, timeout: float = 180) -> float:
        started = time.monotonic()
        wait_until(self.converged, timeout, "every service's tasks running and healthy", interval=1)
        return time.monotonic() - started

    def update_state(self, name: str) -> str:
        """The service's last `docker service update`: updating, completed, rollback_started, ..."""
        return (self.inspect(self.service(name))[0].get("UpdateStatus") or {}).get("State", "")

    def rolled_out(self, name: str, image: str) -> bool:
        """Every task of `name` that should run is of `image`, running and healthy, and no other
        is running (swarm keeps watching it for `monitor` after that: the update is not `completed`)."""
        tasks, healthy = self.tasks(name), self.healthy_tasks()
        return all(t["image"].split("@")[0] == image and t["state"] == "running" and t["id"] in healthy
                   for t in tasks) and self.converged()

    def nginx_upstreams(self, since: float) -> list[str]:
        """The API addresses nginx's access lines name since `since` (a time.time()), retries included."""
        out = self.lab.manager.docker("service", "logs", "--raw", "--since", f"{since:.3f}", self.service("nginx"),
                                      timeout=60).stdout
        return [address for field in _UPSTREAM.findall(out) for address in _ADDRESS.findall(field)]

    def nginx_account(self, request_id: str, since: float) -> str:
        """What nginx's access line says of one request: which tasks it tried, what each gave."""
        out = self.lab.manager.docker("service", "logs", "--raw", "--since", f"{since:.3f}", self.service("nginx"),
                                      timeout=60).stdout
        line = next((json.loads(line) for line in out.splitlines() if f'"request_id":"{request_id}"' in line), None)
        return f"upstream {line['upstream']} answered {line['upstream_status']}" if line else "no access line"

    def answers(self, host: Host) -> bool:
        """Both APIs answer through the host's nginx."""
        text = requests.post(f"{self.url(host)}/lstm", json={"line": "好"}, timeout=5)
        image = requests.post(f"{self.url(host)}/cv_sod", data=SMALL_PNG, headers={"Content-Type": "image/png"},
                              timeout=10)
        return text.status_code == image.status_code == 200

    def remove(self) -> float:
        """`docker stack rm`, until no container or network of the stack is left on any host."""
        started = time.monotonic()
        self.lab.manager.docker("stack", "rm", STACK)
        label = f"label=com.docker.stack.namespace={STACK}"

        def gone() -> bool:
            return not any(host.docker(*listing, "-q", "--filter", label).stdout.split()
                           for host in self.lab.hosts for listing in (["ps", "-a"], ["network", "ls"]))

        wait_until(gone, 120, "the stack's containers and networks gone from every host", interval=1)
        return time.monotonic() - started
