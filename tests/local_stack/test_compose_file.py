"""What local mode takes from compose.yaml, so both modes run alike."""

from __future__ import annotations

import pytest
import yaml

from local_stack import compose_file


@pytest.mark.parametrize(("size", "mb"), [("512m", 512), ("1g", 1024), ("768M", 768), ("256mb", 256),
                                          (268435456, 256), ("1536k", 1)])
def test_compose_memory_sizes_in_mb(size, mb):
    assert compose_file.memory_mb(size) == mb


def test_local_instances_are_told_the_memory_limit_their_container_would_have():
    """In a container vision-api budgets its memory from its cgroup; a local process has none."""
    services = yaml.safe_load(compose_file.COMPOSE_FILE.read_text())["services"]
    settings = compose_file.load()
    environments = settings.environments
    for name in (s.name for s in settings.services):
        limit = services[name]["deploy"]["resources"]["limits"]["memory"]
        assert environments[name]["MEMORY_LIMIT_MB"] == str(compose_file.memory_mb(limit))
