"""Images in every form the vision-api must handle, made in memory."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def photo(height: int = 90, width: int = 120) -> np.ndarray:
    """A dark BGR frame with a bright square: something for the fake model to find."""
    image = np.full((height, width, 3), 20, np.uint8)
    image[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 230
    return image


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims the given size (a decompression bomb's calling card)."""
    data = bytearray(encode(np.zeros((1, 1), np.uint8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(data)
