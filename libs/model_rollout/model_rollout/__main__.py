"""python -m model_rollout MODEL VERSION | status, given where the model repository and the
servers are (`./stack rollout` fills these in for local mode; compose's `rollout` service for compose).

    python -m model_rollout lstm 2 --repository tfserving/models \
        --model-server 127.0.0.1:8500=http://127.0.0.1:8501 --api http://127.0.0.1:8101
    python -m model_rollout status --repository tfserving/models
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

from model_rollout import evidence, status
from model_rollout.controller import ModelServer, Rollout, RolloutRefused
from model_rollout.settings import RolloutSettings


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} rollout: {message}", flush=True)


def model_servers_named(name: str, grpc_port: int = 8500, rest_port: int = 8501) -> list[ModelServer]:
    """Every model server a DNS name has (compose's `tfserving`, however scaled)."""
    try:
        found = sorted({info[4][0] for info in socket.getaddrinfo(name, grpc_port, type=socket.SOCK_STREAM)})
    except OSError:
        return []
    return [ModelServer(f"{address}:{grpc_port}", f"http://{address}:{rest_port}") for address in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model of models.config, or `status`")
    parser.add_argument("version", nargs="?", type=int, help="the candidate version (a folder of the model's)")
    parser.add_argument("--repository", type=Path, required=True, help="the model repository (models.config)")
    parser.add_argument("--model-server", action="append", default=[], metavar="GRPC=REST",
                        help="host:port=http://host:port of each model server")
    parser.add_argument("--model-servers-named", metavar="NAME", help="every address of a DNS name (ports 8500, 8501)")
    parser.add_argument("--api", action="append", default=[], metavar="URL",
                        help="each API instance serving the model (a DNS name: each of its addresses)")
    args = parser.parse_args(argv)
    if args.model == "status":
        print(status.describe(args.repository / "rollouts"))
        return 0
    if args.version is None:
        parser.error("the candidate version is missing")
    fixed = [ModelServer(*pair.split("=", 1)) for pair in args.model_server]

    def servers() -> list[ModelServer]:
        return fixed + (model_servers_named(args.model_servers_named) if args.model_servers_named else [])

    def instances() -> list[str]:
        return [url for spec in args.api for url in evidence.instance_urls(spec)]

    if not servers() or not args.api:
        parser.error("name the model servers (--model-server or --model-servers-named) and the API instances (--api)")
    rollout = Rollout(args.model, args.version, args.repository, servers, instances, RolloutSettings.from_env(),
                      say=say)
    try:
        final = rollout.run()
    except RolloutRefused as refused:
        say(str(refused))
        return 2
    return 0 if final.stage == "promoted" else 1


if __name__ == "__main__":
    sys.exit(main())
