"""A memory cgroup for a process under test: the same limit the kernel enforces on a container.

cgroup v1 (a `memory` hierarchy) and v2 (one tree with the memory controller) are both handled;
where neither can be written (no root, a read-only /sys/fs/cgroup), `memory_cgroup` raises
CgroupUnavailable and the caller skips (or fails under CI).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(Exception):
    pass


class MemoryCgroup:
    def __init__(self, folder: Path, version: int):
        self.folder = folder
        self.version = version

    def command(self, args: list[str]) -> list[str]:
        """`args` run inside the cgroup: the shell joins it, then becomes the command."""
        procs = self.folder / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *args]

    def usage_bytes(self) -> int:
        return int((self.folder / ("memory.usage_in_bytes" if self.version == 1 else "memory.current")).read_text())

    def peak_bytes(self) -> int:
        return int(self._peak_file().read_text())

    def reset_peak(self) -> None:
        """From now on the peak is the current usage (v2 kernels before 6.12 cannot: the peak stays)."""
        with contextlib.suppress(OSError):
            self._peak_file().write_text("0")

    def _peak_file(self) -> Path:
        return self.folder / ("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        fields = dict(line.split() for line in (self.folder / name).read_text().splitlines())
        return int(fields.get("oom_kill", 0))

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.folder / "cgroup.procs").read_text().split()]


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int, name: str) -> Iterator[MemoryCgroup]:
    """A new cgroup below this process's own, limited to `limit_bytes` (no swap either); whatever
    still runs in it at the end is killed, and the cgroup removed."""
    cgroup = _create(limit_bytes, f"{name}-{os.getpid()}")
    try:
        yield cgroup
    finally:
        for _ in range(50):
            pids = cgroup.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        cgroup.folder.rmdir()


def _create(limit_bytes: int, name: str) -> MemoryCgroup:
    own = {controllers: path for _, controllers, path in
           (line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines())}
    v1 = next((path for controllers, path in own.items() if "memory" in controllers.split(",")), None)
    if v1 is not None and (CGROUP_ROOT / "memory").is_dir():
        folder, version, limit_files = CGROUP_ROOT / "memory" / v1.strip("/") / name, 1, \
            ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    elif "" in own and (CGROUP_ROOT / "cgroup.controllers").exists():
        folder, version, limit_files = CGROUP_ROOT / own[""].strip("/") / name, 2, \
            ["memory.max", "memory.swap.max"]
    else:
        raise CgroupUnavailable("no memory cgroup hierarchy is mounted")
    try:
        folder.mkdir()
    except OSError as error:
        raise CgroupUnavailable(f"cannot create {folder}: {error}") from None
    try:
        for file_name in limit_files:
            target = folder / file_name
            if target.exists():
                target.write_text("0" if file_name == "memory.swap.max" else str(limit_bytes))
        if not (folder / limit_files[0]).exists():
            raise CgroupUnavailable(f"{folder} has no {limit_files[0]} (memory controller not enabled)")
    except (OSError, CgroupUnavailable) as error:
        folder.rmdir()
        raise CgroupUnavailable(str(error)) from None
    return MemoryCgroup(folder, version)
