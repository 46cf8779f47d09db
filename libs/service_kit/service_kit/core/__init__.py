"""The inference core: a service's hooks run in order (service_kit.core.service), the micro-batcher,
each request's deadline, the Predict call, the input errors model code raises, settings and metrics.
Flask-free (tests/libs/test_service_kit_layers.py): a process that only prepares inputs, or another
HTTP framework, can use it."""
