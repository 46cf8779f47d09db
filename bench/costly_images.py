"""Normal photos beside a stream of costly images that are still accepted, with one decoding child
per worker and with two (issue 33: a normal image waited for whatever its worker's only child
was decoding, up to DECODE_TIMEOUT_SECONDS).

    .venv/bin/python -m bench.costly_images [--rounds 2] [--seconds 20] [--out bench/results/costly_images.md]

Local mode, the stack as compose deploys it (two vision-api instances of one worker); 4 callers
post the benchmark's photo back to back while 2 costly images a second arrive (a 40 MP GIF, a 27 MP
JPEG of 32 scans, a 12 MP PNG, in turn). The variants' stacks are started one after the other and
alternated round by round; the load generator shares the 2 cores with the stack.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from local_stack import topology
from tests.services.vision_api import crafted_images
from tests.services.vision_api.conftest import encode, photo

NORMAL = (Path(__file__).parent / "images" / "coffee_600x400.jpg").read_bytes()
HTTP_PORT = 18080


def costly_images() -> list[bytes]:
    return [crafted_images.flat_gif(), crafted_images.many_scan_jpeg(26, 6000, 4500), encode(photo(3000, 4000), ".png")]


def measure(url: str, seconds: float, costly_per_second: int, costly: list[bytes]) -> dict:
    stop = time.monotonic() + seconds
    latencies, failed, costly_answers = [], [], []

    def normal_caller() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            started = time.perf_counter()
            reply = session.post(f"{url}/cv_sod", data=NORMAL, headers={"Content-Type": "image/jpeg"}, timeout=30)
            latencies.append(time.perf_counter() - started)
            if reply.status_code != 200:
                failed.append(reply.status_code)

    def costly_caller(data: bytes) -> None:
        reply = requests.post(f"{url}/cv_sod", data=data, headers={"Content-Type": "image/png"}, timeout=60)
        costly_answers.append("200" if reply.ok else f"{reply.status_code} {reply.json()['error']['code']}")

    threads = [threading.Thread(target=normal_caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    images = itertools.cycle(costly)
    while time.monotonic() < stop:
        for _ in range(costly_per_second):
            thread = threading.Thread(target=costly_caller, args=(next(images),))
            thread.start()
            threads.append(thread)
        time.sleep(1)
    for thread in threads:
        thread.join()
    ms = np.array(latencies) * 1000
    return {"answers": len(ms), "p50": np.percentile(ms, 50), "p90": np.percentile(ms, 90),
            "p99": np.percentile(ms, 99), "max": ms.max(), "failed": len(failed),
            "costly": ", ".join(f"{answer} x{costly_answers.count(answer)}" for answer in sorted(set(costly_answers)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    costly = costly_images()
    rows = []
    for round_ in range(args.rounds):
        for children in (["1", "2"] if round_ % 2 == 0 else ["2", "1"]):
            options = topology.Options(run_dir=Path(tempfile.mkdtemp(prefix="costly-images-")), http_port=HTTP_PORT,
                                       env_overrides={"vision-api": {"DECODE_PROCESSES": children}})
            with topology.running(options, lambda message: None):
                result = measure(f"http://127.0.0.1:{HTTP_PORT}", args.seconds, 2, costly)
            rows.append((round_ + 1, children, result))
            print(children, {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}, flush=True)
    lines = ["| round | children per worker | normal answers | p50 ms | p90 ms | p99 ms | max ms | normal failed "
             "| costly images |", "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {round_} | {children} | {r['answers']} | {r['p50']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | "
              f"{r['max']:.0f} | {r['failed']} | {r['costly']} |" for round_, children, r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(f"# Normal photos beside costly images: one decoding child per worker or two\n\n"
                            f"`.venv/bin/python -m bench.costly_images --rounds {args.rounds} --seconds "
                            f"{args.seconds:g}` (one run; the load generator shares the 2 cores with the stack)."
                            f"\n\n{table}\n")


if __name__ == "__main__":
    main()
