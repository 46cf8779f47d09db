"""What text-api's own code costs a request, in process: 1,000 `POST /lstm` through its Flask app
(the service kit's hooks, the contract, jieba, errors and metrics) with a stand-in model client, CPU
time of the fastest of `--runs` runs. No network, no gunicorn, no model server: the part of a
request a refactor of the kit can change, measured without the noise of a whole stack.

    .venv/bin/python -m bench.http_path_cost [--runs 12]

Run it from two checkouts' venvs in turn (before, after, before, after) to compare them.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from service_kit.http.app import service_app
from text_api.sentiment import SentimentService
from text_api.settings import TextApiSettings
from tfserving_client import PredictResult

BODY = '{"line": "我很喜欢这个产品"}'.encode()
REQUESTS = 1000


class StandInModel:
    """Answers every text POS at once."""

    def predict(self, name: str, inputs: dict, **options) -> PredictResult:
        count = len(inputs["nwords"])
        return PredictResult({"labels": np.array([b"POS"] * count, dtype=object),
                              "classes_id": np.ones(count, np.int64),
                              "softmax": np.tile(np.array([[0.2, 0.8]], np.float32), (count, 1))}, name, 1)

    def model_status(self, name: str, **options) -> list:
        return []

    def connection_failing(self) -> bool:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=12)
    args = parser.parse_args()
    client = service_app(SentimentService, TextApiSettings(model_batching="off"), client=StandInModel()).test_client()
    for _ in range(200):  # warm: Python specialises the path after a few calls
        client.post("/lstm", data=BODY, content_type="application/json")
    best = float("inf")
    for _ in range(args.runs):
        gc.collect()
        started = time.process_time()
        for _ in range(REQUESTS):
            reply = client.post("/lstm", data=BODY, content_type="application/json")
        best = min(best, time.process_time() - started)
    assert reply.status_code == 200, reply.data
    print(f"{best / REQUESTS * 1e6:.1f} us of CPU per request (fastest of {args.runs} runs of {REQUESTS})")


if __name__ == "__main__":
    main()
