"""vision-api's requests and replies: validation, error codes and the OpenAPI document come from these.
No Flask, no OpenCV: pydantic only."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from service_kit.http.contract import Base64Bytes, Reply, Strict

ImageFile = Annotated[bytes, Field(description="the image file: JPEG, PNG, GIF, BMP or WebP")]


class ImageQuery(Strict):
    img: Annotated[Base64Bytes, Field(description="URL-safe base64 of the image file")]


class ImageJson(Strict):
    img: Annotated[Base64Bytes, Field(description="base64 of the image file")]


class ImageForm(BaseModel):
    img: ImageFile


class RawImage(BaseModel):
    data: ImageFile


class MaskAnswer(Reply):
    mask_png: str = Field(description="base64 of an 8-bit grayscale PNG the caller's image size, 255 = salient")
    width: int
    height: int
    model_version: int | None


class LegacyMaskAnswer(Reply):
    """The source documents' reply shape, with the mask as a PNG (theirs pickled a numpy array)."""

    status: int = 0
    mask_png: str
    width: int
    height: int
    model_version: int | None
