"""bench.variants' settings: environment for the API services, model server flags added or taken
out of compose.yaml's, text-api's instances, model servers, and the default stack untouched."""

from __future__ import annotations

from bench.variants import Variant, parse_variant
from local_stack import compose_file


def test_a_variant_names_environment_model_server_flags_and_instances():
    flags = compose_file.load().model_server_flags
    assert parse_variant("default") == Variant("default", {})
    assert parse_variant("w0=MODEL_BATCH_WINDOW_MAX_MS=0,A=b") == Variant("w0", {"MODEL_BATCH_WINDOW_MAX_MS": "0",
                                                                                 "A": "b"})
    assert parse_variant("tf1=--tensorflow_intra_op_parallelism=1") == Variant(
        "tf1", {}, [*flags, "--tensorflow_intra_op_parallelism=1"])
    dropped = parse_variant("plain=-batching").flags
    assert "--enable_batching" in flags and dropped == [f for f in flags if "batching" not in f]
    assert parse_variant("one=instances=1,A=b") == Variant("one", {"A": "b"}, instances=1)
    assert parse_variant("two=model_servers=2") == Variant("two", {}, model_servers=2)
