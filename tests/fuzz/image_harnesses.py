"""Fuzz harnesses of vision-api's image handling: plain functions of one input's bytes (atheris runs
them, tests/fuzz/test_fuzz.py replays the corpus through them). Each returns quietly for an input
handled as documented and raises FuzzFinding (or lets anything else escape) for one that is not.

- fuzz_image_header: read_header either raises one of service_kit.core.refusals' InputError kinds
  with a documented code, or returns a header every later step can use (a size, a layout
  describe() knows, a budget of at least a byte a pixel).
- fuzz_image_decode: for an image the header accepts and the service's limits pass (at most
  FUZZ_MAX_PIXELS here, to keep each execution fast), the decoding child's steps (decode_image at
  the model's size, then model_example) either raise an InputError or give an array no larger than
  header.working_bytes() and a 320x320x3 example, and resident memory never grows more than
  PEAK_SLACK_BYTES past working_bytes() while they run.

Decoding runs under the decoding child's own memory limit (its share plus CHILD_SLACK_BYTES,
RLIMIT_DATA), so that what the service contains is not a finding and the replaying test process is
safe. With FUZZ_DECODE_UNCAPPED=1 in the environment it runs unbounded (libFuzzer's -rss_limit_mb
is then the limit): that finds what a decoder would take if the child's limit were not there, a
gap between working_bytes() and the real peak.
"""

from __future__ import annotations

import contextlib
import os

# The decoding child's setting (vision_api.decode_process): OpenCV reads it once, when it loads.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "40000000")

import cv2  # noqa: E402 - after its environment
import numpy as np  # noqa: E402

from model_preprocessing.image import MODEL_SIZE  # noqa: E402
from service_kit.core.refusals import InputError  # noqa: E402
from tests.fuzz import FuzzFinding  # noqa: E402
from tests.fuzz.process_memory import allocating_at_most, peak_growth  # noqa: E402
from vision_api.decode_process import CHILD_SLACK_BYTES  # noqa: E402
from vision_api.image_decoding import decode_image, model_example  # noqa: E402
from vision_api.image_headers import ImageHeader, read_header  # noqa: E402
from vision_api.saliency import MAX_IMAGE_SIDE  # noqa: E402
from vision_api.settings import VisionApiSettings  # noqa: E402

# The service's limits of SaliencyService._check_limits, with fewer pixels: the fuzzer looks for
# shapes, not for large images, and each execution must stay within libFuzzer's -timeout.
FUZZ_MAX_PIXELS = 1_000_000
MAX_JPEG_SCANS = VisionApiSettings().max_jpeg_scans
# What decoding may hold beyond working_bytes(): the model-size steps' own arrays (the 320x320x3
# float32 example is 1.2 MB; measured 1.6-2.4 MB in all for every seed), a codec's fixed buffers
# and the allocator's slack.
PEAK_SLACK_BYTES = 4 * 2**20
# The codes the header step may answer with.
HEADER_CODES = {"empty_image", "not_an_image", "corrupt_image"}
UNCAPPED = os.environ.get("FUZZ_DECODE_UNCAPPED") == "1"


def fuzz_image_header(data: bytes) -> None:
    header = _header_or_none(data)
    if header is None:
        return
    if header.width <= 0 or header.height <= 0 or header.channels not in (1, 3, 4) or header.sample_bytes not in (1, 2):
        raise FuzzFinding(f"read_header accepted an impossible layout: {header}")
    if not 1 <= header.orientation <= 8 or header.scans < 0 or header.coefficient_bytes < 0:
        raise FuzzFinding(f"read_header accepted impossible facts: {header}")
    header.describe()
    header.display_size  # noqa: B018 - a property: computed for its exceptions
    if min(header.working_bytes(MODEL_SIZE), header.working_bytes()) < header.pixels:
        raise FuzzFinding(f"{header}: working_bytes() below a byte a pixel")


def fuzz_image_decode(data: bytes) -> None:
    header = _header_or_none(data)
    if header is None or not within_limits(header):
        return
    _warm_up()
    budget = header.working_bytes(MODEL_SIZE)
    growth = _decode_growth(data, header, budget)
    if growth > budget + PEAK_SLACK_BYTES:
        # Resident memory is the whole process's: in a long test session other threads (gRPC's,
        # earlier tests') allocate meanwhile (CI: one seed +4.2 MB once, +1.9 MB alone). What the
        # input costs happens again; a second measure tells the two apart.
        growth = min(growth, _decode_growth(data, header, budget))
    if growth > budget + PEAK_SLACK_BYTES:
        raise FuzzFinding(f"{header.describe()} ({len(data):,} bytes): resident memory grew {growth:,} bytes "
                          f"while decoding, over its working_bytes() of {budget:,} (+{PEAK_SLACK_BYTES:,} slack)")


def _decode_growth(data: bytes, header: ImageHeader, budget: int) -> int:
    """The decoding child's steps on one input, checked; how far resident memory rose meanwhile."""
    limit = contextlib.nullcontext() if UNCAPPED else allocating_at_most(budget + len(data) + CHILD_SLACK_BYTES)
    example = None
    with peak_growth() as peak, limit:
        try:
            image = decode_image(data, header, MODEL_SIZE)
        except InputError:  # refused: what it cost on the way is still checked
            image = None
        if image is not None:
            if image.nbytes > budget:
                raise FuzzFinding(f"{header.describe()} decoded to {image.shape} {image.dtype}: {image.nbytes:,} "
                                  f"bytes, over its working_bytes() of {budget:,}")
            example = model_example(image, header.orientation)
            del image
    if example is not None and (example.shape != (MODEL_SIZE, MODEL_SIZE, 3) or example.dtype != np.float32):
        raise FuzzFinding(f"{header.describe()}: model_example gave {example.shape} {example.dtype}")
    return peak["growth"]


def within_limits(header: ImageHeader) -> bool:
    """SaliencyService._check_limits, with the fuzzer's pixel limit."""
    return (header.pixels <= FUZZ_MAX_PIXELS and max(header.width, header.height) <= MAX_IMAGE_SIDE
            and header.scans <= MAX_JPEG_SCANS)


def _header_or_none(data: bytes) -> ImageHeader | None:
    try:
        return read_header(data)
    except InputError as error:
        if error.code not in HEADER_CODES:
            raise FuzzFinding(f"read_header raised an undocumented code {error.code!r}: {error.message}") from None
        return None


def _warm_up() -> None:
    """Decode one small image of each format once: a codec's first use maps its code and tables,
    which is no cost of the input that happens to come first."""
    if _warm_up.done:
        return
    _warm_up.done = True
    pixels = np.full((16, 16, 3), 100, np.uint8)
    for ext in (".png", ".jpg", ".bmp", ".webp", ".gif"):
        ok, encoded = cv2.imencode(ext, pixels)
        if ok:
            header = read_header(encoded.tobytes())
            image = decode_image(encoded.tobytes(), header, MODEL_SIZE)
            for orientation in range(1, 9):  # each EXIF orientation's flip or rotation
                model_example(image, orientation)


_warm_up.done = False
cv2.setNumThreads(1)  # as the decoding child: its memory then does not depend on the machine's cores
