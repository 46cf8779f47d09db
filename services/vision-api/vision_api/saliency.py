"""Salient-object masks with the `cv_sod` model: decode, prepare, one Predict call, encode a PNG."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from model_preprocessing.image import mask_to_image, model_input, to_rgb8
from service_kit.metrics import MODEL_BATCH_SIZE
from tfserving_client import ModelServerClient
from vision_api.image_decoding import decode_image
from vision_api.settings import VisionApiSettings


@dataclasses.dataclass(frozen=True)
class SaliencyMask:
    png: bytes  # 8-bit grayscale, the caller's image size, 255 = salient
    width: int
    height: int
    model_version: int | None


class SaliencyModel:
    def __init__(self, client: ModelServerClient, settings: VisionApiSettings):
        self.client = client
        self.settings = settings

    def mask(self, image_bytes: bytes) -> SaliencyMask:
        rgb = to_rgb8(decode_image(image_bytes, self.settings.max_image_pixels))
        height, width = rgb.shape[:2]
        MODEL_BATCH_SIZE.labels(self.settings.model_name).observe(1)
        result = self.client.predict(
            self.settings.model_name, {"img_in": model_input(rgb)[np.newaxis]},
            signature_name=self.settings.model_signature, output_filter=["img_out"],
        )
        mask = mask_to_image(result.outputs["img_out"][0], height, width)
        ok, png = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, self.settings.png_compression])
        if not ok:
            raise RuntimeError("PNG encoding of the mask failed")
        return SaliencyMask(png.tobytes(), width, height, result.model_version)
