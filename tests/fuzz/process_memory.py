"""This process's memory, as the harnesses bound and measure it (Linux /proc)."""

from __future__ import annotations

import contextlib
import ctypes
import resource
from collections.abc import Iterator
from pathlib import Path

_LIBC = ctypes.CDLL("libc.so.6")


def status_bytes(field: str, pid: int | str = "self") -> int:
    """A size field of a process's /proc/<pid>/status (VmRSS, VmHWM, VmData), in bytes."""
    status = Path(f"/proc/{pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in {status}")


def reset_peak(pid: int | str = "self") -> int:
    """Reset a process's peak resident memory (VmHWM) to its current size, and return that size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_bytes("VmRSS", pid)


@contextlib.contextmanager
def allocating_at_most(nbytes: int) -> Iterator[None]:
    """Allocations past `nbytes` more than the process's data segment now fail (RLIMIT_DATA: a
    MemoryError in Python, a failed allocation in C) while the block runs, as vision-api's
    decoding child bounds each decode."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (status_bytes("VmData") + nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@contextlib.contextmanager
def peak_growth() -> Iterator[dict]:
    """How far resident memory rose above where it was while the block ran, in bytes, as
    `figures["growth"]` once the block is over. Free heap pages are given back first (malloc_trim),
    so that what the block touches counts even where it reuses them; writing 5 to clear_refs
    resets the peak (VmHWM) to the current size."""
    _LIBC.malloc_trim(0)
    figures = {"before": reset_peak(), "growth": 0}
    try:
        yield figures
    finally:
        figures["growth"] = status_bytes("VmHWM") - figures["before"]
