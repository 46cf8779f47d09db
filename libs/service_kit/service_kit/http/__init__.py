"""The HTTP layer over the core: the Flask app and its shared routes, request and response models
turned into routes and the OpenAPI document (service_kit.http.contract), JSON errors, request ids,
JSON logs, and gunicorn's config and worker."""
