"""Memory a worker may spend on requests: how much the container has, and a budget counted in bytes.

A gevent worker takes every connection it is offered; without a bound in bytes, a few large
requests at once exceed the container's limit and the kernel kills the worker with everything in
flight (issue 13).
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a huge number


def container_memory_limit(proc_cgroup: Path = Path("/proc/self/cgroup"),
                           cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The tightest memory limit (bytes) of this process's cgroup and its ancestors, v1 or v2;
    None when there is none (a bare host)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one tree, memory.max in each folder
            limits += _limits_along(cgroup_root, path, "memory.max")
        elif "memory" in controllers.split(","):
            limits += _limits_along(cgroup_root / "memory", path, "memory.limit_in_bytes")
    limits = [limit for limit in limits if limit < _NO_LIMIT]
    return min(limits) if limits else None


def _limits_along(root: Path, path: str, file_name: str) -> list[int]:
    """The limit in `root/path` and every folder above it. In a container the cgroup root is the
    container's own and `path` may name a folder that is not mounted there: the root then counts."""
    folder, limits = root / path.strip("/"), []
    while True:
        try:
            raw = (folder / file_name).read_text().strip()
            limits.append(_NO_LIMIT if raw == "max" else int(raw))
        except (OSError, ValueError):
            pass
        if folder == root:
            return limits
        folder = folder.parent


class ByteBudget:
    """A semaphore counted in bytes, first come first served (a large request is not overtaken
    forever by small ones)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._queue: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, timeout: float) -> Iterator[None]:
        """Hold `nbytes` for the block; TimeoutError if they are not free within `timeout`. More than
        the whole budget is a caller's mistake (it would wait for ever): check `capacity` first."""
        if nbytes > self.capacity:
            raise ValueError(f"{nbytes} bytes needed, {self.capacity} in the whole budget")
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                fits = self._changed.wait_for(
                    lambda: self._queue[0] is ticket and self.used + nbytes <= self.capacity, timeout)
                if fits:
                    self.used += nbytes
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may fit now
        if not fits:
            raise TimeoutError(f"{nbytes} bytes not free within {timeout} s")
        try:
            yield
        finally:
            self._release(nbytes)

    def extend(self, nbytes: int) -> Callable[[], None]:
        """Keep counting `nbytes` that a reservation covered past its end (memory a helper process
        still holds for a request that is over), until the returned function is called. Never waits:
        the memory is in use already; until the reservation ends it is counted twice."""
        with self._changed:
            self.used += nbytes
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._release(nbytes)

        return release

    def _release(self, nbytes: int) -> None:
        with self._changed:
            self.used -= nbytes
            self._changed.notify_all()
