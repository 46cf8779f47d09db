"""Is a candidate's signature one the API services can call as they call the live version's? Read
from the model server's REST metadata (`GET /v1/models/NAME/versions/N/metadata`, the same JSON from
the official TF Serving and ours): every input and output of the signature the service calls,
with the same name, dtype and rank."""

from __future__ import annotations

import json
import urllib.request


def metadata(rest_url: str, model: str, version: int, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(f"{rest_url}/v1/models/{model}/versions/{version}/metadata", timeout=timeout) as reply:
        return json.load(reply)


def _tensors(document: dict, signature: str, side: str) -> dict[str, tuple[str, int | None]]:
    signatures = document["metadata"]["signature_def"]["signature_def"]
    if signature not in signatures:
        raise KeyError(signature)
    found = {}
    for name, info in signatures[signature].get(side, {}).items():
        shape = info.get("tensor_shape", {})
        rank = None if shape.get("unknown_rank") else len(shape.get("dim", []))
        found[name] = (info.get("dtype", "DT_INVALID"), rank)
    return found


def differences(live: dict, candidate: dict, signature: str = "serving_default") -> list[str]:
    """What the candidate's signature changes that a caller of the live one would notice; [] if none."""
    try:
        candidate_signature = {side: _tensors(candidate, signature, side) for side in ("inputs", "outputs")}
    except KeyError:
        return [f"the candidate has no signature {signature!r}"]
    found = []
    for side in ("inputs", "outputs"):
        before, after = _tensors(live, signature, side), candidate_signature[side]
        for name in sorted(before.keys() - after.keys()):
            found.append(f"{side[:-1]} {name!r} is gone (the candidate's {side}: {sorted(after)})")
        if side == "inputs":  # a new output is only more to read; a new input must be fed
            for name in sorted(after.keys() - before.keys()):
                found.append(f"input {name!r} is new")
        for name in sorted(before.keys() & after.keys()):
            (dtype, rank), (new_dtype, new_rank) = before[name], after[name]
            if dtype != new_dtype:
                found.append(f"{side[:-1]} {name!r}: dtype {dtype} became {new_dtype}")
            if rank != new_rank and None not in (rank, new_rank):
                found.append(f"{side[:-1]} {name!r}: rank {rank} became {new_rank}")
    return found
