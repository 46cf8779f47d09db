"""gunicorn's gevent worker, with gRPC told about gevent at the one safe moment, and each answer
written in one send.

`grpc.experimental.gevent.init_gevent()` must run after the standard library is monkey-patched
and before any gRPC object exists. gunicorn's `post_fork` hook runs before the worker patches,
so the call belongs right after `patch()`. The app (and its channel) is created later, in the
worker, because `preload_app` stays off.
"""

from __future__ import annotations

import contextlib

import grpc.experimental.gevent as grpc_gevent
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker


class OneSendResponse(wsgi.Response):
    """gunicorn sends an answer's head and its body in two sends: two system calls, and nginx
    woken twice, for every small JSON answer (socket sends were ~12% of a text-api worker's
    samples, bench/profile.py). Here the head waits for the first body bytes and leaves with
    them; it leaves alone when there is no body or the body is chunked or a file."""

    _head: bytes | None = None
    _head_at_once = False  # while a file goes out by sendfile(), past the head's buffering

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        head = self.default_headers()
        head.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._head = ("".join(head) + "\r\n").encode("latin-1")
        self.headers_sent = True
        if self._head_at_once:
            self._send_head()

    def _send_head(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            util.write(self.sock, head)

    def _emit_body(self, data: bytes) -> None:
        if self._head is not None and not self.chunked:
            head, self._head = self._head, None
            self.sock.sendall(head + data)
            return
        self._send_head()
        super()._emit_body(data)

    def sendfile(self, respiter) -> bool:
        self._send_head()
        self._head_at_once = True
        try:
            return super().sendfile(respiter)
        finally:
            self._head_at_once = False

    def close(self) -> None:
        self.send_headers()
        self._send_head()
        super().close()


class _NamedListener:
    """A listening socket whose address outlives it. When gunicorn's gevent worker stops accepting
    (max_requests reached, a graceful stop) it closes its listeners, and a connection it had just
    accepted is handled after that: gunicorn's handler asks the closed listener for its address
    (EBADF, "Socket error processing request") and resets the connection. nginx, reset while
    waiting for an answer, loses that request and takes the instance out for fail_timeout; two
    instances recycling at once left no live upstream (22,637 502s in 2 s, bench.soak in CI)."""

    def __init__(self, listener, name):
        self._listener, self._name = listener, name

    def getsockname(self):
        return self._name

    def __getattr__(self, attribute: str):
        return getattr(self._listener, attribute)


class DrainingStreamServer(StreamServer):
    """gevent's server, which on close() first accepts and serves every connection the kernel has
    already queued. Closing a listener resets the connections waiting in its accept queue: nginx
    had sent its request on one (a POST it never sends twice) and answered 502. On a graceful stop
    the worker answers with `Connection: close`, so nginx opens new connections to it until it
    stops listening: one in ~1,400 POSTs of a SIGTERMed compose replica was lost that way (35 ms,
    a clean-clone CI run). What arrives after the last accept is refused, and nginx tries another."""

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                while (accepted := self.do_read()) is not None:
                    self.do_handle(*accepted)
        super().close()


class GrpcGeventWorker(GeventWorker):
    _listener_names: dict[int, object] = {}

    def remember_listeners(self) -> None:
        """Each listener's address, while the listeners are open (run() calls this first)."""
        self._listener_names = {id(listener): listener.getsockname() for listener in self.sockets}

    def run(self) -> None:
        self.remember_listeners()
        super().run()

    def handle(self, listener, client, addr) -> None:
        name = self._listener_names.get(id(listener))
        super().handle(listener if name is None else _NamedListener(listener, name), client, addr)

    def patch(self) -> None:
        super().patch()
        grpc_gevent.init_gevent()
        # wsgi.create() makes each answer from the module's Response; run() makes each listener's
        # server from the module's StreamServer.
        wsgi.Response = OneSendResponse
        ggevent.StreamServer = DrainingStreamServer
