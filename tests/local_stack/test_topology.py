"""local_stack.topology's start-up rule, with stand-in processes."""

from __future__ import annotations

import os
from types import SimpleNamespace

from local_stack import compose_file, topology


class StandIn:
    """A supervised process whose readiness answers are scripted."""

    def __init__(self, name: str, answers: list[bool]):
        self.answers = answers
        self.spec = SimpleNamespace(name=name, ready=self.ready)
        self.started = False

    def start(self) -> None:
        self.started = True

    def check(self) -> None:
        pass

    def ready(self) -> bool:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_ready_means_every_process_ready_in_one_pass():
    """Issue 33: an API instance ready early was never asked again; its channel then lost the model
    server, and `./stack up` said ready while it answered 503 to everything."""
    model_server = StandIn("model-server", [False, False, True])
    api = StandIn("text-api-1", [True, False, False, True])  # ready, then not while it reconnects, then ready
    pending = topology.start_and_wait([model_server, api], timeout=10)
    assert pending == [] and model_server.started and api.started
    assert api.answers == [True], "asked until it was ready in the same pass as the model server"


def test_those_not_ready_by_the_timeout_are_named():
    never = StandIn("vision-api-1", [False])
    assert topology.start_and_wait([StandIn("model-server", [True]), never], timeout=0.5) == [never]


def test_api_instances_default_to_compose_replicas_but_no_more_than_the_cores_given():
    """One gevent instance per core at most: a second on the same core only splits the batches
    and adds a process to the core's queue (bench/results/where_time_goes.md, third pass)."""
    replicas = compose_file.load().replicas
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert topology.default_scale() == dict.fromkeys(replicas, 1)
        assert topology.Options(run_dir=None).scale == dict.fromkeys(replicas, 1)
    finally:
        os.sched_setaffinity(0, cores)
    assert topology.default_scale() == {service: min(count, len(cores)) for service, count in replicas.items()}
    assert max(replicas.values()) > 1, "compose asks for several instances: the test would prove nothing"
