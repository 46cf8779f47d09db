"""vision-api: salient-object masks over HTTP, answered by the `cv_sod` model.

The app's modules are imported inside create_app: the decoding child process
(vision_api.decode_process) is in this package and must not load Flask or gRPC.
"""

from __future__ import annotations

import typing

if typing.TYPE_CHECKING:
    from flask import Flask

    from tfserving_client import ModelServerClient
    from vision_api.settings import VisionApiSettings


DECODERS_START_SECONDS = 60


def create_app(settings: VisionApiSettings | None = None, client: ModelServerClient | None = None) -> Flask:
    from service_kit.http.app import create_service_app
    from vision_api.routes import blueprint
    from vision_api.saliency import SaliencyModel
    from vision_api.settings import VisionApiSettings

    settings = settings or VisionApiSettings.from_env()
    app = create_service_app(__name__, settings, client)
    app.extensions["saliency_model"] = model = SaliencyModel(app.extensions["model_client"], settings)
    # A worker serves once its decoding children can decode (they import OpenCV: ~0.3 s); a request
    # that came sooner would wait for them, or be refused as busy when its deadline is short.
    model.decoders.wait_ready(DECODERS_START_SECONDS)
    app.register_blueprint(blueprint)
    return app
