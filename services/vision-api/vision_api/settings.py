"""vision-api configuration: every environment variable it reads, with its default."""

from __future__ import annotations

import dataclasses

from service_kit.settings import ServiceSettings, env


@dataclasses.dataclass(frozen=True)
class VisionApiSettings(ServiceSettings):
    model_name: str = env("MODEL_NAME", "cv_sod")
    max_body_bytes: int = env("MAX_BODY_BYTES", 20 * 1024 * 1024)
    # Checked from the image header before decoding: a 50 kB PNG can claim 100000x100000 pixels.
    max_image_pixels: int = env("MAX_IMAGE_PIXELS", 40_000_000)
    # Images decoded at once per worker; more wait (bounded by MODEL_TIMEOUT_SECONDS, then 503).
    max_images_in_flight: int = env("MAX_IMAGES_IN_FLIGHT", 8)
    # PNG compression of the returned mask: 1 is several times faster than 9 and barely larger.
    png_compression: int = env("PNG_COMPRESSION", 1)
    # A 320x320 float image is 1.2 MB on the wire: keep one batched call well under 64 MB.
    model_max_batch_size: int = env("MODEL_MAX_BATCH_SIZE", 8)
