"""The largest image of each kind vision-api accepts under a memory limit, made in memory.

Sizes come from the service's own rule (SaliencyService.max_pixels for the budget that limit
gives), so a change of rule changes what is tested. Gradients: they compress to little, as the
bodies must stay under MAX_BODY_BYTES.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import cv2
import numpy as np

from tests.services.vision_api import crafted_images
from vision_api.image_headers import read_header
from vision_api.saliency import SaliencyService
from vision_api.settings import VisionApiSettings


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    extension: str  # OpenCV encodes these; the crafted kinds say so with `make`
    channels: int
    depth: type = np.uint8
    aspect: float = 1.5  # width / height
    height: int | None = None  # fixed height (a strip too narrow for reduced JPEG decoding)
    make: Callable[[int, int], bytes] | None = None  # (width, height) -> file, instead of OpenCV's encoder
    max_pixels: int | None = None  # where the body limit (20 MB) binds before memory does


KINDS = (
    Kind("jpeg", ".jpg", 3),
    Kind("jpeg-strip", ".jpg", 3, height=600),
    Kind("jpeg-progressive-444", ".jpg", 3, make=crafted_images.progressive_jpeg),
    Kind("jpeg-32-scans", ".jpg", 1, make=lambda w, h: crafted_images.many_scan_jpeg(26, w, h)),
    Kind("png-gray", ".png", 1),
    Kind("png-rgba", ".png", 4),
    Kind("png-16bit", ".png", 3, np.uint16),
    Kind("png-16bit-rgba", ".png", 4, np.uint16),
    Kind("gif", ".gif", 4, make=crafted_images.flat_gif),
    Kind("webp-lossy", ".webp", 3),
    Kind("webp-lossless", ".webp", 4, make=crafted_images.lossless_webp),
    Kind("bmp", ".bmp", 3, max_pixels=6_000_000),
)


def largest_images(memory_limit_mb: int, kinds: tuple[Kind, ...] = KINDS) -> dict[str, bytes]:
    """Kind name -> encoded image of the most pixels a worker with this instance memory accepts."""
    model = SaliencyService(client=None, settings=VisionApiSettings(memory_limit_mb=memory_limit_mb, web_concurrency=1))
    return {kind.name: _largest(kind, model) for kind in kinds}


def _largest(kind: Kind, model: SaliencyService) -> bytes:
    width, height = _size(kind, 200_000)  # large enough that a JPEG's block padding does not count much
    sample = _encode(kind, width, height)
    allowed = min(model.max_pixels(read_header(sample)), kind.max_pixels or math.inf)
    # The body counts too (decoding reads a copy): leave it a little room.
    width, height = _size(kind, int(allowed * 0.97))
    data = _encode(kind, width, height)
    header = read_header(data)
    assert header.pixels <= model.max_pixels(header), (kind, header)
    return data


def _size(kind: Kind, pixels: int) -> tuple[int, int]:
    if kind.height is not None:
        return min(pixels // kind.height, 65_000), kind.height
    height = int(math.sqrt(pixels / kind.aspect))
    return int(height * kind.aspect), height


def _encode(kind: Kind, width: int, height: int) -> bytes:
    if kind.make is not None:
        return kind.make(width, height)
    top = np.iinfo(kind.depth).max
    row = np.linspace(0, top, width).astype(kind.depth)
    image = np.empty((height, width, kind.channels), kind.depth)
    image[:] = row[None, :, None]
    if kind.channels == 4:
        image[:, :, 3] = top // 2  # half transparent: compositing has work to do
    ok, data = cv2.imencode(kind.extension, image, [cv2.IMWRITE_PNG_COMPRESSION, 1] if kind.extension == ".png" else [])
    assert ok
    return data.tobytes()

