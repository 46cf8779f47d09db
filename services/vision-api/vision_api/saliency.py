"""Salient-object masks with the `cv_sod` model: decode, prepare, predict, encode a PNG."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from model_preprocessing.image import MODEL_SIZE, mask_to_image
from service_kit.core import deadlines
from service_kit.core.batching import BatchDeadlineExceeded
from service_kit.core.memory import ByteBudget
from service_kit.core.model_endpoint import Busy, InputTooLarge, ModelEndpoint
from tfserving_client import ModelServerClient
from vision_api.decode_process import CallerGaveUp, DecodePool
from vision_api.image_decoding import ImageHeader, read_header
from vision_api.settings import VisionApiSettings

# One fixed PNG row filter instead of libpng's per-row choice among all five: a 1920x1080 mask
# encodes in 7 ms instead of 19 ms at about the same size (97 KB vs 96 KB).
PNG_FILTER = (cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB)


@dataclasses.dataclass(frozen=True)
class SaliencyMask:
    png: bytes  # 8-bit grayscale, the caller's image size, 255 = salient
    width: int
    height: int
    model_version: int | None


class SaliencyModel(ModelEndpoint[np.ndarray, np.ndarray]):
    """Masks within a memory budget: request bodies and decoded images each have a share of the
    worker's budget (settings.image_memory_budget_bytes), reserved before the memory is used; a
    request waits for its share (then 503), or is refused (413) when it could never have it."""

    output_names = ("img_out",)

    def __init__(self, client: ModelServerClient, settings: VisionApiSettings):
        super().__init__(client, settings)
        budget = settings.image_memory_budget_bytes()
        # Two pools taken in one order (body, then image) and never the other way: no request
        # holding an image share waits for a body share, so no two requests wait for each other.
        self.bodies = ByteBudget(budget // 4)
        self.images = ByteBudget(budget - budget // 4)
        self.decoders = DecodePool(settings.decode_processes, settings.max_image_pixels)

    @contextlib.contextmanager
    def room_for_body(self, nbytes: int) -> Iterator[None]:
        """Hold the memory a request body of this size takes while it is read and parsed; a body
        larger than the whole pool (the largest JSON) takes the pool alone."""
        with self._reserved(self.bodies, min(nbytes, self.bodies.capacity)):
            yield

    def mask(self, image_bytes: bytes) -> SaliencyMask:
        header = read_header(image_bytes)
        self._check_limits(header)
        needed = header.working_bytes(MODEL_SIZE) + len(image_bytes)  # decoding reads a copy of the bytes
        if needed > self.images.capacity:
            raise InputTooLarge("image_too_large", f"the image is {header.describe()}: {_mb(needed)} MB to "
                                f"process, more than the {_mb(self.images.capacity)} MB a worker has for images; "
                                f"at most about {self.max_pixels(header)} pixels of this kind")
        self.check_in_time()  # before decoding: refusing costs nothing yet
        with self._reserved(self.images, needed):
            return self._mask(image_bytes, header, needed)

    def _check_limits(self, header: ImageHeader) -> None:
        """What the header alone shows to be too costly, refused before any decoding."""
        limit = self.settings.max_image_pixels
        if header.pixels > limit:
            raise InputTooLarge("image_too_large", f"the image is {header.width}x{header.height} pixels; "
                                f"the limit is {limit} pixels")
        if max(header.width, header.height) > MAX_IMAGE_SIDE:
            raise InputTooLarge("image_too_large", f"the image is {header.width}x{header.height} pixels; "
                                f"the limit is {MAX_IMAGE_SIDE} pixels on a side")
        if header.scans > self.settings.max_jpeg_scans:
            raise InputTooLarge("too_many_scans", f"the JPEG has {header.scans} scans, each decoded over the "
                                f"whole image; the limit is {self.settings.max_jpeg_scans}")

    def max_pixels(self, header: ImageHeader) -> int:
        """The most pixels an image of this format and layout may have here."""
        per_pixel = header.working_bytes(MODEL_SIZE) / header.pixels
        return min(self.settings.max_image_pixels, int(self.images.capacity / per_pixel))

    @contextlib.contextmanager
    def _reserved(self, budget: ByteBudget, nbytes: int) -> Iterator[None]:
        try:
            with budget.reserve(nbytes, timeout=max(0.0, deadlines.current_or_default(self.settings).remaining())):
                yield
        except TimeoutError:
            raise Busy("too many images in progress; retry shortly") from None

    def _mask(self, image_bytes: bytes, header: ImageHeader, reserved: int) -> SaliencyMask:
        example = self._example(image_bytes, header, reserved)
        prediction = self.predict([example])
        [saliency], version = prediction.results, prediction.model_version
        width, height = header.display_size
        mask = mask_to_image(saliency, height, width)
        ok, png = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, self.settings.png_compression, *PNG_FILTER])
        del mask
        if not ok:
            raise RuntimeError("PNG encoding of the mask failed")
        return SaliencyMask(png.tobytes(), width, height, version)

    def _example(self, image_bytes: bytes, header: ImageHeader, reserved: int) -> np.ndarray:
        """The model input, made by a decoding child within the image's memory share and
        DECODE_TIMEOUT_SECONDS; the request waits for it until its deadline (then 504)."""
        budget = deadlines.current_or_default(self.settings)
        with self.decoders.process(wait_seconds=budget.remaining()) as decoder:
            decoder.wait_ready(budget.remaining())
            try:
                return decoder.prepare(image_bytes, header, reserved, self.settings.decode_timeout_seconds,
                                       wait_seconds=budget.remaining())
            except CallerGaveUp:
                raise BatchDeadlineExceeded("the request's deadline passed while its image was decoded") from None
            except TimeoutError:
                raise InputTooLarge("image_too_costly", f"decoding the image took more than "
                                    f"{self.settings.decode_timeout_seconds:g} s; send a smaller or simpler "
                                    "image") from None

    def to_inputs(self, examples: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"img_in": np.stack(examples)}

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> Sequence[np.ndarray]:
        return list(outputs["img_out"])

# OpenCV's own limit on a side (CV_IO_MAX_IMAGE_WIDTH and _HEIGHT): past it imread refuses.
MAX_IMAGE_SIDE = 1 << 20


def _mb(nbytes: int) -> int:
    return -(-nbytes // 2**20)
