"""The memory a worker may spend: the container's limit from its cgroup, and the byte budget."""

from __future__ import annotations

import threading
import time

import pytest

from service_kit.core.memory import ByteBudget, container_memory_limit


def cgroup_tree(tmp_path, proc_lines: str, files: dict[str, str]):
    (tmp_path / "proc").write_text(proc_lines)
    for relative, content in files.items():
        (tmp_path / "root" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / relative).write_text(content)
    return container_memory_limit(tmp_path / "proc", tmp_path / "root")


def test_v2_limit_is_the_tightest_along_the_path(tmp_path):
    assert cgroup_tree(tmp_path, "0::/pod/app\n", {
        "memory.max": "max\n", "pod/memory.max": "805306368\n", "pod/app/memory.max": "max\n"}) == 805306368


def test_v1_limit_in_a_container_where_only_the_root_is_mounted(tmp_path):
    """Docker with cgroup v1 names the host's path in /proc/self/cgroup but mounts the container's
    own cgroup at the root of the hierarchy."""
    assert cgroup_tree(tmp_path, "4:memory:/docker/abc\n1:cpu:/docker/abc\n", {
        "memory/memory.limit_in_bytes": "536870912\n"}) == 536870912


def test_no_limit_is_none(tmp_path):
    assert cgroup_tree(tmp_path, "4:memory:/\n", {"memory/memory.limit_in_bytes": "9223372036854771712\n"}) is None
    assert container_memory_limit(tmp_path / "missing", tmp_path) is None


def test_reservations_wait_for_room_first_come_first_served():
    budget = ByteBudget(100)
    order: list[str] = []
    held = budget.reserve(80, timeout=1)
    held.__enter__()

    def take(name: str, nbytes: int) -> None:
        with budget.reserve(nbytes, timeout=5):
            order.append(name)
            time.sleep(0.05)

    big = threading.Thread(target=take, args=("big", 60))
    big.start()
    time.sleep(0.05)
    small = threading.Thread(target=take, args=("small", 10))  # would fit now, but the big one came first
    small.start()
    time.sleep(0.05)
    assert order == []
    held.__exit__(None, None, None)
    big.join()
    small.join()
    assert order == ["big", "small"] and budget.used == 0


def test_a_reservation_that_does_not_fit_in_time_times_out_and_holds_nothing():
    budget = ByteBudget(100)
    with budget.reserve(100, timeout=1), pytest.raises(TimeoutError):
        with budget.reserve(1, timeout=0.05):
            pass
    assert budget.used == 0
    with budget.reserve(100, timeout=0.05):
        assert budget.used == 100


def test_more_than_the_whole_budget_is_refused_at_once():
    with pytest.raises(ValueError, match="whole budget"):
        with ByteBudget(100).reserve(101, timeout=10):
            pass
