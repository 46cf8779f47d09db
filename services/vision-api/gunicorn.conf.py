"""gunicorn settings for vision-api; the same file in its container and in local mode."""

from service_kit.gunicorn_base import *  # noqa: F403 - shared worker model, timeouts, logs, metrics

wsgi_app = "vision_api:create_app()"
