"""vision-api: salient-object masks over HTTP, answered by the `cv_sod` model."""

from __future__ import annotations

import os

from flask import Flask

from service_kit.app import create_service_app
from tfserving_client import ModelServerClient
from vision_api.routes import blueprint
from vision_api.saliency import SaliencyModel
from vision_api.settings import VisionApiSettings


def create_app(settings: VisionApiSettings | None = None, client: ModelServerClient | None = None) -> Flask:
    settings = settings or VisionApiSettings.from_env()
    # A second line behind our own header check: OpenCV refuses larger images before allocating.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(settings.max_image_pixels))
    app = create_service_app(__name__, settings, client)
    app.extensions["saliency_model"] = SaliencyModel(app.extensions["model_client"], settings)
    app.register_blueprint(blueprint)
    return app
