"""gunicorn's gevent worker, with gRPC told about gevent at the one safe moment.

`grpc.experimental.gevent.init_gevent()` must run after the standard library is monkey-patched
and before any gRPC object exists. gunicorn's `post_fork` hook runs before the worker patches,
so the call belongs right after `patch()`. The app (and its channel) is created later, in the
worker, because `preload_app` stays off.
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent
from gunicorn.workers.ggevent import GeventWorker


class GrpcGeventWorker(GeventWorker):
    def patch(self) -> None:
        super().patch()
        grpc_gevent.init_gevent()
