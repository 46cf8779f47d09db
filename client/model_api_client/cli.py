"""model-api: the model APIs from a shell.

    model-api lstm "我很喜欢这个产品" ["另一句" ...]     label and scores, one line per text
    model-api cv_sod photo.jpg -o mask.png              writes the mask
    model-api bench --route lstm -c 8 -d 5              a quick load: req/s, latency percentiles, errors

The API address is --url, else $MODEL_API_URL, else http://127.0.0.1:8080 (`./stack up`'s nginx;
compose publishes the same port).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

from model_api_client.client import DEFAULT_URL, ApiError, ModelApiClient

BENCH_SENTENCES = ["这个产品质量很好，我很喜欢", "物流太慢了，非常失望", "还可以吧，价格有点贵",
                   "服务态度很差，不会再买"]


def lstm(client: ModelApiClient, args: argparse.Namespace) -> int:
    results = client.sentiments(args.texts) if len(args.texts) > 1 else [client.sentiment(args.texts[0])]
    for text, result in zip(args.texts, results):
        if args.json:
            print(json.dumps({"text": text, "label": result.label, "probabilities": result.probabilities,
                              "model_version": result.model_version}, ensure_ascii=False))
        else:
            negative, positive = result.probabilities
            print(f"{result.label}  {result.score:.3f}  (NEG {negative:.3f}, POS {positive:.3f})  "
                  f"model v{result.model_version}  {text}")
    show_timing(client, args)
    return 0


def show_timing(client: ModelApiClient, args: argparse.Namespace) -> None:
    """Where the answer's time went on the server (its Server-Timing header), on stderr."""
    if args.timing:
        stages = ", ".join(f"{name} {ms:.2f} ms" for name, ms in client.last_timing.items())
        print(f"server timing: {stages or 'none sent'}", file=sys.stderr)


def cv_sod(client: ModelApiClient, args: argparse.Namespace) -> int:
    mask = client.saliency(args.image)
    output = args.output or Path(args.image).with_suffix(".mask.png")
    mask.save(output)
    print(f"{output}: {mask.width}x{mask.height} mask, model v{mask.model_version}")
    show_timing(client, args)
    return 0


def bench(client: ModelApiClient, args: argparse.Namespace) -> int:
    """Closed loop: each of `concurrency` threads sends a request as soon as its last one is answered."""
    image = Path(args.image).read_bytes() if args.image else None
    if args.route == "cv_sod" and image is None:
        sys.exit("model-api bench --route cv_sod needs --image PATH")
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + args.duration

    def worker(number: int) -> None:
        own = ModelApiClient(client.base_url, retries=0)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                if image is None:
                    own.sentiment(BENCH_SENTENCES[number % len(BENCH_SENTENCES)])
                else:
                    own.saliency(image)
                latencies.append(time.perf_counter() - started)
            except (ApiError, requests.RequestException) as error:
                key = f"{error.status} {error.code}" if isinstance(error, ApiError) else type(error).__name__
                errors[key] = errors.get(key, 0) + 1
            number += 1
        own.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    total = len(latencies) + sum(errors.values())
    print(f"{total} requests in {elapsed:.1f} s with {args.concurrency} connections: "
          f"{len(latencies) / elapsed:.1f} answers/s, {sum(errors.values())} errors {errors or ''}".rstrip())
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100)
        print(f"latency ms: p50 {1000 * cuts[49]:.1f}  p90 {1000 * cuts[89]:.1f}  p99 {1000 * cuts[98]:.1f}  "
              f"max {1000 * max(latencies):.1f}")
    return 1 if errors else 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="model-api", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    root.add_argument("--url", default=DEFAULT_URL, help="the API's base URL (default: %(default)s)")
    root.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    root.add_argument("--deadline-ms", type=int, help="how long the service may take (X-Request-Timeout-Ms)")
    root.add_argument("--timing", action="store_true", help="print where the server spent the time (stderr)")
    commands = root.add_subparsers(dest="command", required=True)
    text = commands.add_parser("lstm", help="sentiment of one or more texts")
    text.add_argument("texts", nargs="+")
    text.add_argument("--json", action="store_true", help="one JSON object per line")
    text.set_defaults(run=lstm)
    image = commands.add_parser("cv_sod", help="salient-object mask of an image")
    image.add_argument("image", type=Path)
    image.add_argument("-o", "--output", type=Path, help="where to write the mask (default: IMAGE.mask.png)")
    image.set_defaults(run=cv_sod)
    load = commands.add_parser("bench", help="a quick load for a sanity check (not the benchmark matrix)")
    load.add_argument("--route", choices=["lstm", "cv_sod"], default="lstm")
    load.add_argument("-c", "--concurrency", type=int, default=8)
    load.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    load.add_argument("--image", type=Path, help="the image to send with --route cv_sod")
    load.set_defaults(run=bench)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with ModelApiClient(args.url, read_timeout=args.timeout, deadline_ms=args.deadline_ms) as client:
            return args.run(client, args)
    except ApiError as error:
        print(f"model-api: {error}", file=sys.stderr)
        return 2
    except requests.RequestException as error:
        print(f"model-api: cannot reach {args.url}: {type(error).__name__}", file=sys.stderr)
        return 3
