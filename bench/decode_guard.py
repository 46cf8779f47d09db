"""What decoding each image format costs, and what decoding in a child process costs (issue 20).

    .venv/bin/python -m bench.decode_guard [--megapixels 12 40] [--out bench/results/decode_guard.md]

1. Peak memory of one decode of each format and layout, in a fresh decoding child
   (vision_api.decode_process): its high-water mark (VmHWM) over its resident size before, per
   pixel, beside what the service charges (ImageHeader.working_bytes). The charge must not be
   below the peak.
2. Time per image of the three ways to keep a decode from stalling a gevent worker, on the
   benchmark's photos: on the loop (what the service did), in a thread (OpenCV releases the GIL;
   the loop would go on, but a thread cannot be stopped), in the child (can be killed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from model_preprocessing.image import MODEL_SIZE
from tests.services.vision_api import crafted_images
from vision_api.decode_process import DecodeProcess
from vision_api.image_decoding import decode_image, model_example
from vision_api.image_headers import read_header

PHOTOS = Path(__file__).parent / "images"
MB = 2**20


def _gradient(width: int, height: int, channels: int, depth: type = np.uint8) -> np.ndarray:
    top = np.iinfo(depth).max
    image = np.empty((height, width, channels), depth)
    image[:] = np.linspace(0, top, width).astype(depth)[None, :, None]
    if channels == 4:
        image[:, :, 3] = top // 2
    return image[:, :, 0] if channels == 1 else image


def _opencv(extension: str, image: np.ndarray) -> bytes:
    return cv2.imencode(extension, image, [cv2.IMWRITE_PNG_COMPRESSION, 1] if extension == ".png" else [])[1].tobytes()


def _pil(image: np.ndarray, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def kinds(width: int, height: int) -> dict[str, Callable[[], bytes]]:
    """Each format and pixel layout the service accepts, at this size."""
    return {
        "JPEG baseline": lambda: _opencv(".jpg", _gradient(width, height, 3)),
        "JPEG baseline, 600 high": lambda: _opencv(".jpg", _gradient(min(width * height // 600, 65_000), 600, 3)),
        "JPEG progressive 4:4:4": lambda: crafted_images.progressive_jpeg(width, height, 0),
        "JPEG progressive 4:2:0": lambda: crafted_images.progressive_jpeg(width, height, 2),
        "JPEG progressive gray": lambda: crafted_images.progressive_jpeg(width, height, gray=True),
        "JPEG of 32 scans": lambda: crafted_images.many_scan_jpeg(32 - 6, width, height),
        "PNG gray": lambda: _opencv(".png", _gradient(width, height, 1)),
        "PNG RGB": lambda: _opencv(".png", _gradient(width, height, 3)),
        "PNG RGBA": lambda: _opencv(".png", _gradient(width, height, 4)),
        "PNG 16-bit RGB": lambda: _opencv(".png", _gradient(width, height, 3, np.uint16)),
        "PNG 16-bit RGBA": lambda: _opencv(".png", _gradient(width, height, 4, np.uint16)),
        "GIF": lambda: crafted_images.flat_gif(width, height),
        "BMP 24-bit": lambda: _opencv(".bmp", _gradient(width, height, 3)),
        "BMP 32-bit": lambda: _pil(_gradient(width, height, 4), "BMP"),
        "WebP lossy": lambda: _opencv(".webp", _gradient(width, height, 3)),
        "WebP lossy with alpha": lambda: _pil(_gradient(width, height, 4), "WEBP", quality=80),
        "WebP lossless": lambda: crafted_images.lossless_webp(width, height),
        "WebP lossless with alpha": lambda: _pil(_gradient(width, height, 4), "WEBP", lossless=True),
    }


def _status_bytes(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def peak_rows(megapixels: float) -> list[str]:
    width = int((megapixels * 1e6 * 1.5) ** 0.5)
    height = int(width / 1.5)
    warm_up = [_opencv(ext, _gradient(64, 64, 3)) for ext in (".png", ".jpg", ".webp")]
    rows = []
    for name, make in kinds(width, height).items():
        data = make()
        header = read_header(data)
        child = DecodeProcess(max_image_pixels=10**9)
        try:
            child.wait_ready(60)
            for small in warm_up:
                child.prepare(small, read_header(small), 2**30, 30)
            before = _status_bytes(child.process.pid, "VmRSS:")
            started = time.perf_counter()
            child.prepare(data, header, 2**32, 120)
            seconds = time.perf_counter() - started
            peak = _status_bytes(child.process.pid, "VmHWM:") - before
        finally:
            child.close()
        charged = header.working_bytes(MODEL_SIZE)
        rows.append(f"| {name} | {header.width}x{header.height} | {len(data) >> 10:,} KB | {seconds:.2f} | "
                    f"{peak / MB:.0f} | {peak / header.pixels:.1f} | {charged / header.pixels:.1f} |")
        print(rows[-1], flush=True)
    return rows


def overhead_rows(rounds: int = 5, repeats: int = 20) -> list[str]:
    def in_process(data: bytes) -> np.ndarray:
        header = read_header(data)
        return model_example(decode_image(data, header, MODEL_SIZE), header.orientation)

    threads = concurrent.futures.ThreadPoolExecutor(1)
    child = DecodeProcess(max_image_pixels=40_000_000)
    child.wait_ready(60)
    ways = {"on the loop": in_process, "in a thread": lambda data: threads.submit(in_process, data).result(),
            "in the child": lambda data: child.prepare(data, read_header(data), 2**28, 10)}
    rows = []
    try:
        for path in sorted(PHOTOS.iterdir()):
            data = path.read_bytes()
            assert all(np.array_equal(way(data), in_process(data)) for way in ways.values())
            times = {name: [] for name in ways}
            for _ in range(rounds):  # the ways alternate, so that a busy moment costs each alike
                for name, way in ways.items():
                    started = time.perf_counter()
                    for _ in range(repeats):
                        way(data)
                    times[name].append((time.perf_counter() - started) / repeats * 1000)
            medians = [statistics.median(times[name]) for name in ways]
            rows.append(f"| {path.name} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
            print(rows[-1], flush=True)
    finally:
        child.close()
        threads.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[12, 40])
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode_guard.md"))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    lines = ["# Decoding: each format's peak, and the cost of a child process", "",
             "`.venv/bin/python -m bench.decode_guard` (one run; 2 cores shared with the rest of the machine).", ""]
    for megapixels in args.megapixels:
        lines += [f"## Peak of one decode in the child, {megapixels:g} MP", "",
                  "| kind | pixels | file | seconds | peak MB | peak B/px | charged B/px |",
                  "|---|---|---:|---:|---:|---:|---:|", *peak_rows(megapixels), ""]
    lines += ["## ms per image to the model's input, medians of 5 rounds of 20, alternated", "",
              "| photo | on the loop | in a thread | in the child |", "|---|---:|---:|---:|", *overhead_rows(), ""]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
