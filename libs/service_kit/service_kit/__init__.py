"""The skeleton every model API service is built on; a service is one class of hooks
(service_kit.core.service.ModelService) and its request and response models.

Two layers: `service_kit.core` (Flask-free: the hooks runner, batching, deadlines, the Predict
call) and `service_kit.http` (Flask, gunicorn, the OpenAPI document). Import from the submodules.
This file stays empty on purpose: gunicorn imports `service_kit.http.gunicorn_config` in its master
process, and that must not pull in prometheus_client before PROMETHEUS_MULTIPROC_DIR is set.
"""
