"""Child processes that are restarted when they die, like compose's `restart: unless-stopped`."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_MAX_SECONDS = 10.0
# A process that stayed up this long has recovered: its next crash restarts it at once again.
HEALTHY_RUN_SECONDS = 30.0


def _die_with_parent() -> None:
    """Runs in the child before exec: if the launcher dies (even by SIGKILL), the child gets
    SIGTERM, so no process outlives the stack."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_ok(url: str, must_contain: tuple[str, ...] = ()) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                body = reply.read().decode("utf-8", "replace")
                return reply.status == 200 and all(text in body for text in must_contain)
        except OSError:
            return False

    return check


# A model version's states once its load has finished, well or badly (TF Serving's names).
SETTLED_STATES = {"AVAILABLE", "END"}


def model_settled(status_url: str) -> Callable[[], bool]:
    """Whether every version the model server lists at `status_url` (`/v1/models/NAME`, or an API's
    `/readyz`, which relays them) has finished loading, available or failed: a broken model must
    not hold the whole stack back, nor make it wait for ever."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(status_url, timeout=2) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as refused:  # an API's /readyz says 503 while its model is away
            try:
                body = json.loads(refused.read())
            except ValueError:
                return False
        except (OSError, ValueError):
            return False
        states = [v["state"] for v in body.get("model_version_status", [])] or list(body.get("versions", {}).values())
        return body.get("status") == "ready" or bool(states) and set(states) <= SETTLED_STATES

    return check


@dataclasses.dataclass
class ServiceSpec:
    name: str
    args: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    ready: Callable[[], bool]
    address: str  # what to print: where it listens
    readiness_url: str = ""  # an API instance's /readyz: 200 while its model is available
    ports: dict[str, int] = dataclasses.field(default_factory=dict)  # loopback ports it listens on, by role


class SupervisedProcess:
    def __init__(self, spec: ServiceSpec, say: Callable[[str], None]):
        self.spec = spec
        self.say = say
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0
        self._crashes_in_a_row = 0
        self._restart_at: float | None = None
        # Called before a restart when another program took one of `spec.ports` meanwhile; it
        # gives this process (and whoever reaches it) new ports. Without it, the restart would
        # fail to bind, and again, for ever.
        self.on_ports_taken: Callable[[SupervisedProcess], None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.spec.args, cwd=self.spec.cwd, env=self.spec.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()
        self._restart_at = None

    def check(self) -> None:
        """Notice an exit and restart after a backoff that grows while it keeps crashing."""
        if self.process is None:
            return
        now = time.monotonic()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self.restarts += 1
                self.say(f"restarting {self.spec.name} (restart #{self.restarts})")
                if self.on_ports_taken and not all(port_is_free("127.0.0.1", p) for p in self.spec.ports.values()):
                    self.on_ports_taken(self)  # may start it itself, before those that follow it
                if self.process is None or self.process.poll() is not None:
                    self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        self._kill_group(signal.SIGKILL)  # leftovers, e.g. gunicorn workers of a killed master
        ran_for = now - self.started_at
        self._crashes_in_a_row = 0 if ran_for > HEALTHY_RUN_SECONDS else self._crashes_in_a_row + 1
        delay = min(RESTART_BACKOFF_MAX_SECONDS, 0.5 * 2 ** self._crashes_in_a_row) if self._crashes_in_a_row else 0.0
        self.say(f"{self.spec.name} exited with code {code} after {ran_for:.1f}s; restarting in {delay:.1f}s "
                 f"(log: {self.spec.log_path})")
        self._restart_at = now + delay

    def stop(self, timeout: float) -> None:
        if self.process is None:
            return
        self._restart_at = None
        if self.process.poll() is None:
            started = time.monotonic()
            self._kill_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
                self.say(f"{self.spec.name} stopped in {time.monotonic() - started:.1f}s")
            except subprocess.TimeoutExpired:
                self.say(f"{self.spec.name} did not stop within {timeout:.0f}s; killing it")
        self._kill_group(signal.SIGKILL)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def restart(self, timeout: float) -> None:
        self.stop(timeout)
        self.start()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.spec.ready():
                return True
            time.sleep(0.2)
        return False

    def reload(self) -> None:
        """SIGHUP: nginx re-reads its configuration without dropping a connection."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def _kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
