"""vision-api configuration: every environment variable it reads, with its default."""

from __future__ import annotations

import dataclasses

from service_kit.core.memory import container_memory_limit
from service_kit.core.settings import ServiceSettings, env


@dataclasses.dataclass(frozen=True)
class VisionApiSettings(ServiceSettings):
    # Checked from the image header before decoding: a 50 kB PNG can claim 100000x100000 pixels.
    # Images that need more memory than a worker's budget (below) are refused under this too.
    max_image_pixels: int = env("MAX_IMAGE_PIXELS", 40_000_000)
    # The instance's memory in MB; 0: its container's limit (cgroup). Local mode passes compose's
    # `deploy.resources.limits.memory` here, so both modes budget alike.
    memory_limit_mb: int = env("MEMORY_LIMIT_MB", 0)
    # What each worker may hold for request bodies and images at once, in MB; 0: derived from the
    # instance's memory (image_memory_budget_bytes). Requests past it wait, then 503.
    image_memory_budget_mb: int = env("IMAGE_MEMORY_BUDGET_MB", 0)
    # Images are decoded in child processes of the worker (vision_api.decode_process): this many
    # per worker, each decode killed past this many seconds (a caller whose deadline is nearer stops
    # waiting; its child finishes the image, or is killed, off the request path).
    decode_processes: int = env("DECODE_PROCESSES", 2)
    decode_timeout_seconds: float = env("DECODE_TIMEOUT_SECONDS", 5.0)
    # An image whose header predicts a longer decode than this (ImageHeader.decode_seconds) is costly:
    # costly images hold at most DECODE_PROCESSES - 1 of a worker's children at once, so that a normal
    # photo waits for a normal photo's decode at most, never seconds behind a 40 MP GIF.
    costly_decode_ms: float = env("COSTLY_DECODE_MS", 100.0)
    # libjpeg decodes each scan of a progressive JPEG over the whole image: 10,000 scans of 28 bytes
    # each took 30 s. Encoders write 10 (colour), 6 (gray) or 24 (CMYK) with libjpeg's scripts.
    max_jpeg_scans: int = env("MAX_JPEG_SCANS", 32)
    # PNG compression of the returned mask: 1 is several times faster than 9 and barely larger.
    png_compression: int = env("PNG_COMPRESSION", 1)
    # A 320x320 float image is 1.2 MB on the wire: keep one batched call well under 64 MB.
    model_max_batch_size: int = env("MODEL_MAX_BATCH_SIZE", 8)

    def image_memory_budget_bytes(self) -> int:
        """IMAGE_MEMORY_BUDGET_MB, or the instance's memory less what its processes take at rest,
        shared among its workers, with a margin for what is not counted (allocator slack, buffers)."""
        if self.image_memory_budget_mb:
            return self.image_memory_budget_mb * MB
        limit = self.memory_limit_mb * MB or container_memory_limit() or UNKNOWN_LIMIT_MB * MB
        workers = self.worker_processes()
        at_rest = WORKER_AT_REST_MB + self.decode_processes * DECODER_AT_REST_MB
        free = limit - ARBITER_MB * MB - workers * at_rest * MB
        return max(MINIMUM_BUDGET_MB * MB, int(free * BUDGET_SHARE / workers))


MB = 2**20
# Measured with tests/services/vision_api/test_memory.py (RSS of a started instance).
ARBITER_MB = 40
WORKER_AT_REST_MB = 130
# A decoding child's own memory (numpy and OpenCV's heap: 24 MB anonymous; the libraries' pages are the worker's).
DECODER_AT_REST_MB = 30
BUDGET_SHARE = 0.8
MINIMUM_BUDGET_MB = 64
# A bare host without a limit: budget as if it were compose's instance.
UNKNOWN_LIMIT_MB = 512
