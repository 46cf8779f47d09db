"""`POST /lstm {"line": ...}` on LitServe 0.2, with its documented settings for a CPU
(https://lightning.ai/docs/litserve: accelerator "cpu", an inference worker per core
(`workers_per_device`), as many API servers as workers (run's default), `fast_queue` (ZeroMQ) past
~100 requests/s, batching on the LitAPI with `max_batch_size` and `batch_timeout`).

    PEERS_PORT=8000 .venv-peers/bin/python -m bench.peer_apps.litserve_lstm
"""

from __future__ import annotations

import os

import litserve as ls

from bench.peer_apps.sentiment import Sentiment

WORKERS = int(os.environ.get("PEERS_WORKERS", str(os.cpu_count() or 1)))


class SentimentAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.sentiment = Sentiment()

    def decode_request(self, request: dict) -> list[str]:
        return Sentiment.words(request["line"])

    def batch(self, inputs: list[list[str]]) -> list[list[str]]:
        return inputs

    def predict(self, sentences: list[list[str]]) -> list[dict]:
        return self.sentiment.predict(sentences)

    def unbatch(self, outputs: list[dict]) -> list[dict]:
        return outputs

    def encode_response(self, output: dict) -> dict:
        return output


if __name__ == "__main__":
    api = SentimentAPI(max_batch_size=32, batch_timeout=0.005, api_path="/lstm")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=WORKERS, fast_queue=True)
    server.run(port=int(os.environ.get("PEERS_PORT", "8000")), generate_client_file=False)
