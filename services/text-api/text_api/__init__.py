"""text-api: Chinese review sentiment over HTTP, answered by the `lstm` model."""

from __future__ import annotations

from flask import Flask

from service_kit.http.app import create_service_app
from text_api.routes import blueprint
from text_api.sentiment import SentimentModel
from text_api.settings import TextApiSettings
from tfserving_client import ModelServerClient


def create_app(settings: TextApiSettings | None = None, client: ModelServerClient | None = None) -> Flask:
    settings = settings or TextApiSettings.from_env()
    app = create_service_app(__name__, settings, client)
    app.extensions["sentiment_model"] = SentimentModel(app.extensions["model_client"], settings)
    app.register_blueprint(blueprint)
    return app
