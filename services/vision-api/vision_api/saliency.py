"""Salient-object masks with the `cv_sod` model: the image's header, its decoding in a child
process, the model, the mask as a PNG."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from model_preprocessing.image import MODEL_SIZE, mask_to_image
from service_kit.core.memory import ByteBudget
from service_kit.core.model_call import Prediction
from service_kit.core.refusals import Busy, DeadlineExceeded, InputTooLarge
from service_kit.core.rollout import Comparison
from service_kit.core.service import Binary, ModelService
from service_kit.http.contract import BINARY, QUERY, Operation, Reply
from tfserving_client import ModelServerClient
from vision_api.decode_process import CallerGaveUp, DecodePool
from vision_api.image_headers import ImageHeader, read_header
from vision_api.schemas import ImageForm, ImageJson, ImageQuery, LegacyMaskAnswer, MaskAnswer, RawImage
from vision_api.settings import VisionApiSettings

# One fixed PNG row filter instead of libpng's per-row choice among all five: a 1920x1080 mask
# encodes in 7 ms instead of 19 ms at about the same size (97 KB vs 96 KB).
PNG_FILTER = (cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB)


@dataclasses.dataclass(frozen=True)
class Image:
    data: bytes  # the file
    header: ImageHeader
    working_bytes: int  # what decoding and answering it hold (reserved from the image share)
    costly: bool  # its decode is predicted to be long (VisionApiSettings.costly_decode_ms)


JSON, PNG = "application/json", "image/png"
_BODIES = {"image/*": RawImage, "application/octet-stream": RawImage, "multipart/form-data": ImageForm,
           JSON: ImageJson}
_IMAGE_ERRORS = {
    413: "an image over a limit (`image_too_large`, `too_many_scans`, `image_too_costly`)",
    415: "a body of another media type (`unsupported_media_type`), or not an image (`not_an_image`)",
    422: "well-formed but unusable: an empty or 0-pixel image (`empty_image`)",
}
_LEGACY = ("The legacy `/predict` form existing clients call (the source documents' API). Their reply pickled a "
           "numpy array, which lets a server run code in its client; here the mask is a PNG in `mask_png`.")


class SaliencyService(ModelService[Image, np.ndarray, np.ndarray]):
    """Masks within a memory budget: request bodies and decoded images each have a share of the
    worker's budget (settings.image_memory_budget_bytes), reserved before the memory is used; a
    request waits for its share (then 503), or is refused (413) when it could never have it."""

    settings_class = VisionApiSettings
    output_names = ("img_out",)
    operations = (
        Operation("POST", "/cv_sod", "The salient-object mask of an image: a PNG, or JSON with the PNG in base64 "
                  "when the caller prefers JSON (Accept or ?format=json)", _BODIES,
                  {PNG: BINARY, JSON: MaskAnswer}, _IMAGE_ERRORS),
        Operation("GET", "/cv_sod", "The mask of an image sent in the URL", {QUERY: ImageQuery},
                  {PNG: BINARY, JSON: MaskAnswer}, _IMAGE_ERRORS),
        Operation("POST", "/cv_sod/predict", "The mask in the legacy reply shape", _BODIES,
                  {JSON: LegacyMaskAnswer}, _IMAGE_ERRORS, description=_LEGACY),
        Operation("GET", "/cv_sod/predict", "The mask in the legacy reply shape, of an image sent in the URL",
                  {QUERY: ImageQuery}, {JSON: LegacyMaskAnswer}, _IMAGE_ERRORS, description=_LEGACY),
    )

    def __init__(self, client: ModelServerClient, settings: VisionApiSettings):
        super().__init__(client, settings)
        budget = settings.image_memory_budget_bytes()
        # Two pools taken in one order (body, then image) and never the other way: no request
        # holding an image share waits for a body share, so no two requests wait for each other.
        self.bodies = ByteBudget(budget // 4)
        self.images = ByteBudget(budget - budget // 4)
        self.decoders = DecodePool(settings.decode_processes, settings.max_image_pixels)

    def setup(self) -> None:
        # A worker serves once its decoding children can decode (they import OpenCV: ~0.3 s); a request
        # that came sooner would wait for them, or be refused as busy when its deadline is short.
        self.decoders.wait_ready(DECODERS_START_SECONDS)

    def room_for_body(self, nbytes: int, deadline: float) -> contextlib.AbstractContextManager:
        """Hold the memory a request body of this size takes while it is read and parsed; a body
        larger than the whole pool (the largest JSON) takes the pool alone."""
        return self._reserved(self.bodies, min(nbytes, self.bodies.capacity), deadline - time.monotonic())

    def decode(self, request: ImageQuery | ImageJson | ImageForm | RawImage) -> list[Image]:
        """The image's header, and what it would cost: refused (413) before any decoding when too much."""
        data = request.data if isinstance(request, RawImage) else request.img
        header = read_header(data)
        self._check_limits(header)
        needed = header.working_bytes(MODEL_SIZE) + len(data)  # decoding reads a copy of the bytes
        if needed > self.images.capacity:
            raise InputTooLarge("image_too_large", f"the image is {header.describe()}: {_mb(needed)} MB to "
                                f"process, more than the {_mb(self.images.capacity)} MB a worker has for images; "
                                f"at most about {self.max_pixels(header)} pixels of this kind")
        return [Image(data, header, needed, header.decode_seconds(MODEL_SIZE) * 1000 > self.settings.costly_decode_ms)]

    def holding(self, images: list[Image], deadline: float) -> contextlib.AbstractContextManager:
        return self._reserved(self.images, sum(image.working_bytes for image in images),
                              deadline - time.monotonic())

    def prepare(self, images: list[Image], deadline: float) -> list[np.ndarray]:
        return [self._example(image, deadline) for image in images]

    def encode(self, request: object, images: list[Image], prediction: Prediction[np.ndarray],
               reply: type | None) -> Binary | Reply:
        [saliency], [image] = prediction.results, images
        width, height = image.header.display_size
        mask = mask_to_image(saliency, height, width)
        ok, png = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, self.settings.png_compression, *PNG_FILTER])
        del mask
        if not ok:
            raise RuntimeError("PNG encoding of the mask failed")
        version = prediction.model_version
        if reply is BINARY:
            return Binary(png.tobytes(), {} if version is None else {"X-Model-Version": str(version)})
        return reply(mask_png=base64.b64encode(png).decode("ascii"), width=width, height=height,
                     model_version=version)

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
    def _reserved(self, budget: ByteBudget, nbytes: int, wait_seconds: float) -> Iterator[None]:
        try:
            with budget.reserve(nbytes, timeout=max(0.0, wait_seconds)):
                yield
        except TimeoutError:
            raise Busy("too many images in progress; retry shortly") from None

    def _example(self, image: Image, deadline: float) -> np.ndarray:
        """The model input, made by a decoding child within the image's memory share and
        DECODE_TIMEOUT_SECONDS; the request waits for it until its deadline (then 504). A request
        whose deadline has passed sends nothing to decode; one whose deadline passes mid-decode
        leaves the image's memory share counted until its child is done with it."""
        def remaining() -> float:
            return deadline - time.monotonic()

        def expired() -> DeadlineExceeded:
            return DeadlineExceeded("the request's deadline passed while its image was decoded")

        if remaining() <= 0:
            raise expired()
        with self.decoders.process(wait_seconds=remaining(), costly=image.costly) as decoder:
            decoder.wait_ready(remaining())
            try:
                return decoder.prepare(image.data, image.header, image.working_bytes,
                                       self.settings.decode_timeout_seconds, wait_seconds=remaining(),
                                       keep_memory=lambda: self.images.extend(image.working_bytes))
            except CallerGaveUp:
                raise expired() from None
            except TimeoutError:
                raise InputTooLarge("image_too_costly", f"decoding the image took more than "
                                    f"{self.settings.decode_timeout_seconds:g} s; send a smaller or simpler "
                                    "image") from None

    def to_inputs(self, examples: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"img_in": np.stack(examples)}

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> Sequence[np.ndarray]:
        return list(outputs["img_out"])

    def compare(self, live: np.ndarray, candidate: np.ndarray) -> Comparison:
        """A rollout's shadow: the masks (saliency over 0.5) overlap with an IoU of at least
        MASK_AGREEMENT_IOU; the distance is 1 - IoU."""
        ours, theirs = np.asarray(live) > 0.5, np.asarray(candidate) > 0.5
        union = int(np.logical_or(ours, theirs).sum())
        iou = 1.0 if union == 0 else int(np.logical_and(ours, theirs).sum()) / union
        return Comparison(iou >= MASK_AGREEMENT_IOU, round(1.0 - iou, 6))


# Two masks agree when they overlap this much (intersection over union, saliency over 0.5).
MASK_AGREEMENT_IOU = 0.9
# The decoding children's start (setup() waits for it).
DECODERS_START_SECONDS = 60
# OpenCV's own limit on a side (CV_IO_MAX_IMAGE_WIDTH and _HEIGHT): past it imread refuses.
MAX_IMAGE_SIDE = 1 << 20


def _mb(nbytes: int) -> int:
    return -(-nbytes // 2**20)
