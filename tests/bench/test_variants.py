"""bench.variants' settings: environment for the API services, model server flags added or taken
out of compose.yaml's, and the default stack untouched."""

from __future__ import annotations

from bench.variants import parse_variant
from local_stack import compose_file


def test_a_variant_names_environment_and_model_server_flags():
    flags = compose_file.load().model_server_flags
    assert parse_variant("default") == ("default", {}, None)
    assert parse_variant("w0=MODEL_BATCH_WINDOW_MAX_MS=0,A=b") == ("w0", {"MODEL_BATCH_WINDOW_MAX_MS": "0", "A": "b"},
                                                                   None)
    name, env, added = parse_variant("tf1=--tensorflow_intra_op_parallelism=1")
    assert (name, env, added) == ("tf1", {}, [*flags, "--tensorflow_intra_op_parallelism=1"])
    name, env, dropped = parse_variant("plain=-batching")
    assert "--enable_batching" in flags and dropped == [f for f in flags if "batching" not in f]
