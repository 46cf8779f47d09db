"""Image preparation for the `cv_sod` salient-object model and its mask output.

Memory matters more than anywhere else here: a caller's image can be 40 megapixels, and a worker
has a few hundred MB. Work is done at 320x320 wherever the result is the same, and in 8 bits
otherwise; no full-size float copy is ever made.
"""

from __future__ import annotations

import cv2
import numpy as np

MODEL_SIZE = 320
# Per-channel RGB mean the documents subtract before the model.
RGB_MEAN = np.array([126.88, 120.24, 112.19], dtype=np.float32)
RGB_MEAN_SCALAR = (*RGB_MEAN.tolist(), 0.0)  # as OpenCV takes a per-channel constant


def to_rgb8(image: np.ndarray, size: int | None = None, *, in_place: bool = False) -> np.ndarray:
    """Bring a decoded OpenCV image (BGR/BGRA/gray, 8 or 16 bit) to 8-bit RGB, `size` x `size`
    when given (area-averaged).

    RGBA is flattened the way the documents meant it (`rgb * alpha`, alpha as 0..1): composited
    onto black, before resizing, as compositing must be. That is the one full-size step: in place
    when `in_place` (the caller's array is overwritten), after an 8-bit copy when 16-bit.
    Everything else is resized first and converted at the small size.
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected an 8- or 16-bit image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        if image.dtype == np.uint16:
            image, in_place = cv2.convertScaleAbs(image, alpha=1 / 257), True
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2mRGBA, dst=image if in_place else None)  # any order, alpha last
    if size is not None:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=1 / 257)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def model_input(rgb: np.ndarray) -> np.ndarray:
    """One `img_in` example: float32 [320, 320, 3], resized and mean-subtracted."""
    if rgb.shape[:2] != (MODEL_SIZE, MODEL_SIZE):
        rgb = cv2.resize(rgb, (MODEL_SIZE, MODEL_SIZE), interpolation=cv2.INTER_AREA)
    # One pass from uint8 to the mean-subtracted float32 (astype, then subtract, took ~7x longer).
    return cv2.subtract(rgb, RGB_MEAN_SCALAR, dtype=cv2.CV_32F)


def mask_to_image(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Turn one `img_out` [320, 320, 1] saliency map into an 8-bit mask of the original size:
    quantised at 320x320, then resized in 8 bits (one byte per output pixel, nothing more)."""
    saliency = np.clip(np.asarray(mask, dtype=np.float32).reshape(MODEL_SIZE, MODEL_SIZE), 0.0, 1.0)
    saliency8 = (saliency * 255.0).round().astype(np.uint8)
    return cv2.resize(saliency8, (width, height), interpolation=cv2.INTER_LINEAR)
