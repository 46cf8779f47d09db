"""`POST /lstm {"line": ...}` on BentoML 1.4, in the form of its adaptive-batching guide
(https://docs.bentoml.com/en/latest/guides/adaptive-batching.html): a per-request API service that
calls a batchable model service through `bentoml.depends`; a worker per core for the CPU-bound
model service (guides/workers.html: `workers="cpu_count"`).

    .venv-peers/bin/bentoml serve bench.peer_apps.bentoml_lstm:LstmApi --port 8000
"""

from __future__ import annotations

import bentoml

from bench.peer_apps.sentiment import Sentiment


@bentoml.service(workers="cpu_count")
class LstmModel:
    def __init__(self) -> None:
        self.sentiment = Sentiment()

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=1000)
    def predict(self, sentences: list[list[str]]) -> list[dict]:
        return self.sentiment.predict(sentences)


@bentoml.service
class LstmApi:
    model = bentoml.depends(LstmModel)

    @bentoml.api(route="/lstm")
    async def lstm(self, line: str) -> dict:
        [answer] = await self.model.to_async.predict([Sentiment.words(line)])
        return answer
