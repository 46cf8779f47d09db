"""The gunicorn response that writes an answer's head and body in one send: the bytes on the wire
are what gunicorn's own response writes, in fewer sends."""

from __future__ import annotations

import io

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from service_kit.http.gunicorn_worker import OneSendResponse


class RecordingSocket:
    def __init__(self, request: bytes):
        self.incoming = io.BytesIO(request)
        self.sends: list[bytes] = []

    def recv(self, size: int) -> bytes:
        return self.incoming.read(size)

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def answer(response_class, method: str, body_chunks: list[bytes], headers: list[tuple[str, str]]):
    cfg = Config()
    sock = RecordingSocket(f"{method} /x HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    request = next(iter(RequestParser(cfg, sock, ("127.0.0.1", 1))))
    response = response_class(request, sock, cfg)
    response.start_response("200 OK", headers)
    for chunk in body_chunks:
        response.write(chunk)
    response.close()
    return sock.sends


@pytest.mark.parametrize(("method", "chunks", "headers"), [
    ("POST", [b'{"a":1}'], [("Content-Type", "application/json"), ("Content-Length", "7")]),
    ("GET", [b"abc", b"def"], [("Content-Length", "6")]),
    ("HEAD", [b""], [("Content-Length", "7")]),
    ("GET", [], [("Content-Length", "0")]),
    ("GET", [b"chunk one", b"chunk two"], []),  # no length: chunked
])
def test_the_same_bytes_leave_in_fewer_sends(method, chunks, headers):
    ours = answer(OneSendResponse, method, chunks, headers)
    theirs = answer(wsgi.Response, method, chunks, headers)

    def without_date(sends):
        return [line for line in b"".join(sends).split(b"\r\n") if not line.startswith(b"Date:")]

    assert without_date(ours) == without_date(theirs)
    assert len(ours) <= len(theirs)
    if chunks and chunks[0] and method != "HEAD" and headers:
        assert len(ours) == len(theirs) - 1, "the head left with the first body bytes"
