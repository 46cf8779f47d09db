"""local_stack.topology's start-up rule, with stand-in processes."""

from __future__ import annotations

from types import SimpleNamespace

from local_stack import topology


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
