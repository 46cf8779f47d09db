"""The skeleton every model API service is built on; a service adds only its routes and model logic.

Import from the submodules (`service_kit.app`, `.errors`, `.settings`, ...). This file stays
empty on purpose: gunicorn imports `service_kit.gunicorn_base` in its master process, and that
must not pull in prometheus_client before PROMETHEUS_MULTIPROC_DIR is set.
"""
