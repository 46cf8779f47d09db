"""Configurations of this stack side by side, /lstm cells alternated: for a setting, which value
holds up at 1, 10, 100 and 1000 connections, in one run (bench.compare does two checkouts).

    .venv/bin/python -m bench.variants default window0=MODEL_BATCH_WINDOW_MAX_MS=0 \\
        tf1=--tensorflow_intra_op_parallelism=1,--tensorflow_inter_op_parallelism=1 \\
        no-server-batching=-batching [--rounds 2] [--seconds 8] [--connections 1,10,100,1000]

A variant is NAME=SETTING[,SETTING...]: `ENV=VALUE` goes to every API service's environment,
`--flag=value` is added to the model server's flags (compose.yaml's), `-WORD` drops the model
server's flags that contain WORD, `instances=N` starts N text-api instances instead of
compose's replicas, `model_servers=N` N model servers; `default` alone is the stack as `./stack up` runs it. Every
stack is up at once (idle ones cost nothing); the cells are alternated as in bench.peers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
from pathlib import Path

from bench.peers import System, measure, median_cell
from bench.run import say, stack
from local_stack import compose_file
from local_stack.topology import free_port


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str]
    flags: list[str] | None = None  # the model server's; None: compose.yaml's
    instances: int | None = None  # text-api's; None: as local mode starts them
    model_servers: int = 1


def parse_variant(text: str) -> Variant:
    name, _, settings = text.partition("=")
    env: dict[str, str] = {}
    instances, model_servers = None, 1
    flags = list(compose_file.load().model_server_flags)
    changed = False
    for setting in filter(None, settings.split(",")):
        if setting.startswith("--"):
            flags.append(setting)
        elif setting.startswith("-"):
            flags = [flag for flag in flags if setting[1:] not in flag]
        elif setting.startswith("instances="):
            instances = int(setting.partition("=")[2])
            continue
        elif setting.startswith("model_servers="):
            model_servers = int(setting.partition("=")[2])
            continue
        else:
            key, _, value = setting.partition("=")
            env[key] = value
            continue
        changed = True
    return Variant(name, env, flags if changed else None, instances, model_servers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", default="1,10,100,1000")
    args = parser.parse_args(argv)
    connections = tuple(int(count) for count in args.connections.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-variants-"))
    with contextlib.ExitStack() as stacks:
        found = []
        for text in args.variants:
            variant = parse_variant(text)
            url, pids, _ = stacks.enter_context(stack(
                work / variant.name, free_port(), text_instances=variant.instances, env=variant.env,
                model_server_flags=variant.flags, model_servers=variant.model_servers))
            found.append(System(variant.name, f"{url}/lstm", pids, pausable=False))
        cells = measure(found, args.rounds, args.seconds, connections)
    first = found[0].name
    print(f"\n| connections | variant | answers/s | / {first} | p50 ms | p99 ms | CPU ms/req | failed |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for count in connections:
        base = median_cell(cells, first, count)
        for system in found:
            cell = median_cell(cells, system.name, count)
            print(f"| {count} | {system.name} | {cell.rps:.0f} | {cell.rps / base.rps:.2f}x | {cell.p50_ms:.1f} "
                  f"| {cell.p99_ms:.1f} | {cell.cpu_ms_per_request:.3f} | {cell.failed} |")
    say(f"{len(cells)} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
