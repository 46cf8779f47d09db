"""Decoding callers' images in a child process of the worker, bounded in time and memory.

A decoder is a C library working on bytes an attacker chose. Whatever it does with them, a
progressive JPEG of 10,000 scans (30 s of libjpeg), a GIF that needs three times the memory its
header suggests, a bug, it does it here: the worker's gevent loop goes on serving while a child
decodes, a child past its time is killed (SIGKILL) and replaced, and a child past its memory share
fails its allocation (RLIMIT_DATA) or is the one the kernel's OOM killer picks (oom_score_adj),
never the worker with every request in flight on it. Measured against decoding on the loop and
in a thread: bench/results/decode_guard.md.

The child turns the image's bytes into the model's input (320x320x3 float32, 1.2 MB), so only that
comes back; the full-size pixels never exist in the worker. Messages over a socket pair: a header
(JSON) and a payload, each preceded by its length.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator

import cv2
import numpy as np

from model_preprocessing.image import MODEL_SIZE
from service_kit.core.input_errors import Busy, InputError, InputTooLarge, InvalidInput, UnsupportedInput, UnusableInput
from vision_api.image_decoding import ImageHeader, decode_file, decode_flags, model_example

log = logging.getLogger(__name__)

_LENGTHS = struct.Struct("!II")  # header bytes, payload bytes
_READY = b"R"
_ERRORS = {kind.__name__: kind for kind in (InvalidInput, InputTooLarge, UnsupportedInput, UnusableInput)}
# What a child holds beyond the image's own share while decoding: the interpreter's heap growing,
# allocator slack, OpenCV's buffers for one row of work.
CHILD_SLACK_BYTES = 48 * 2**20
# Most favourable to the kernel's OOM killer: in a full cgroup, a decoding child goes first.
_OOM_SCORE_ADJ = "1000"


class CallerGaveUp(TimeoutError):
    """The caller's deadline came before the child's answer (which is still to come)."""


class DecodeProcess:
    """One child and the socket to it; used by one request at a time (DecodePool hands it out)."""

    def __init__(self, max_image_pixels: int) -> None:
        # OpenCV reads its limit once, when it loads: only a process that has not imported it can be told.
        self.environment = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": str(max_image_pixels)}
        self.process: subprocess.Popen | None = None
        self.socket: socket.socket | None = None
        self.spawn()

    def spawn(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vision_api.decode_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True, env=self.environment)
        self.socket = ours
        self.ready = False  # the child says so once it has imported OpenCV
        self._abandoned_until: float | None = None  # a job whose caller stopped waiting ends by then
        # A pool dropped without close() (a test's app) must not leave its child behind.
        self._finalizer = weakref.finalize(self, _stop, self.process, ours)

    def wait_ready(self, seconds: float) -> None:
        """Wait for a starting child's word that it can decode (about 0.3 s after it started);
        Busy when that takes longer than `seconds`."""
        if self.ready:
            return
        assert self.socket is not None
        self.socket.settimeout(max(0.001, seconds))
        try:
            self.ready = _receive(self.socket, 1) == _READY
        except TimeoutError:
            raise Busy("this worker's image decoder is still starting; retry shortly") from None
        except (OSError, ConnectionError):
            self.replace("it died while starting")
            raise Busy("this worker's image decoder failed to start; retry shortly") from None

    def prepare(self, data: bytes, header: ImageHeader, memory_bytes: int, time_limit: float,
                wait_seconds: float | None = None) -> np.ndarray:
        """The model input of an image whose header was read and checked, or the InputError the
        child found. Past `time_limit` the child is killed (TimeoutError); past `memory_bytes` it
        fails (InputTooLarge). A caller that waits less (`wait_seconds`: its deadline) gets
        CallerGaveUp then, and the child finishes that image in its own time, its answer thrown
        away by whoever uses it next: a decode within its limits is not killed for the caller's haste."""
        assert self.socket is not None and self.ready
        self._finish_abandoned()
        job = {"flags": decode_flags(header, MODEL_SIZE), "orientation": header.orientation, "kind": header.kind,
               "memory_bytes": memory_bytes, "seconds": time_limit}
        header_bytes = json.dumps(job).encode()
        started = time.monotonic()
        try:
            self.socket.settimeout(max(0.001, time_limit))  # the child reads as fast as it can
            self.socket.sendall(_LENGTHS.pack(len(header_bytes), len(data)) + header_bytes)
            self.socket.sendall(data)
            wait = time_limit if wait_seconds is None else min(time_limit, wait_seconds)
            self.socket.settimeout(max(0.001, started + wait - time.monotonic()))
            try:
                lengths = _receive(self.socket, _LENGTHS.size)  # all at once: sent in one go, after the work
            except TimeoutError:
                if wait >= time_limit:
                    raise
                self._abandoned_until = started + time_limit
                raise CallerGaveUp("the request's deadline passed while its image was decoded") from None
            self.socket.settimeout(1.0)  # the rest is on its way: the child sends its answer in one go
            reply, payload = self._reply(lengths)
        except CallerGaveUp:
            raise
        except TimeoutError:
            self.replace(f"an image took more than {time_limit:g} s")
            raise
        except (OSError, ConnectionError, ValueError, KeyError) as error:  # the child died under the image
            self.replace(f"it died decoding an image ({type(error).__name__})")
            raise InputTooLarge("image_too_costly", "decoding the image took more memory than its share; "
                                "send a smaller or simpler image") from None
        if "error" in reply:
            raise _ERRORS[reply["error"]](reply["code"], reply["message"])
        return np.frombuffer(payload, dtype=reply["dtype"]).reshape(reply["shape"])

    def _reply(self, lengths: bytes | None = None) -> tuple[dict, bytes | bytearray]:
        assert self.socket is not None
        lengths = lengths or _receive(self.socket, _LENGTHS.size)
        reply = json.loads(_receive(self.socket, _LENGTHS.unpack(lengths)[0]))
        return reply, _receive(self.socket, reply["payload_bytes"])

    def _finish_abandoned(self) -> None:
        """Wait out (and drop) the answer to an image its caller stopped waiting for; past that
        image's own time limit, the child is killed."""
        if self._abandoned_until is None:
            return
        assert self.socket is not None
        self.socket.settimeout(max(0.001, self._abandoned_until - time.monotonic()))
        try:
            self._reply()
        except (OSError, ConnectionError, ValueError, KeyError) as error:  # TimeoutError is an OSError
            self.replace(f"an image whose caller gave up was not done in its time ({type(error).__name__})")
        self._abandoned_until = None

    def replace(self, reason: str) -> None:
        """Kill the child and start another (it imports OpenCV meanwhile, in parallel)."""
        log.warning("decoding child %s replaced: %s", self.process.pid if self.process else None, reason)
        self.close()
        self.spawn()

    def close(self) -> None:
        self._finalizer()
        self.process = self.socket = None


class DecodePool:
    """`size` children per worker; a request waits for a free one until its deadline (Busy).
    Children are started lazily, in the process that uses them (gunicorn forks workers)."""

    def __init__(self, size: int, max_image_pixels: int):
        self.size = size
        self.max_image_pixels = max_image_pixels
        self._idle: queue.LifoQueue[DecodeProcess] = queue.LifoQueue()
        self._started_in: int | None = None

    def start(self) -> None:
        if self._started_in != os.getpid():
            self._idle = queue.LifoQueue()
            for _ in range(self.size):
                self._idle.put(DecodeProcess(self.max_image_pixels))
            self._started_in = os.getpid()

    @contextlib.contextmanager
    def process(self, wait_seconds: float) -> Iterator[DecodeProcess]:
        self.start()
        try:
            child = self._idle.get(timeout=max(0.0, wait_seconds))
        except queue.Empty:
            raise Busy("every image decoder of this worker is busy; retry shortly") from None
        try:
            yield child
        finally:
            self._idle.put(child)

    def wait_ready(self, seconds: float) -> None:
        """Start the children if need be and wait until each can decode (Busy past `seconds`)."""
        self.start()
        for child in list(self._idle.queue):
            child.wait_ready(seconds)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


def _stop(process: subprocess.Popen, sock: socket.socket) -> None:
    sock.close()
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def _receive(sock: socket.socket, nbytes: int) -> bytes:
    buffer = bytearray(nbytes)
    view, received = memoryview(buffer), 0
    while received < nbytes:
        got = sock.recv_into(view[received:])
        if got == 0:
            raise ConnectionError("the decoder closed its socket")
        received += got
    return bytes(buffer) if nbytes < 4096 else buffer


# --- the child ---------------------------------------------------------------------------------

def _serve(sock: socket.socket) -> None:
    """Answer jobs until the worker closes the socket, or exits."""
    cv2.setNumThreads(1)  # one decode at a time; its memory then does not depend on the machine's cores
    sock.sendall(_READY)
    with contextlib.suppress(ConnectionError):  # the worker went: so does this child
        while True:
            header_bytes, data_bytes = _LENGTHS.unpack(_receive(sock, _LENGTHS.size))
            job = json.loads(_receive(sock, header_bytes))
            with _in_memory_file(sock, data_bytes) as path:
                reply, payload = _run(job, path)
            reply["payload_bytes"] = len(payload)
            encoded = json.dumps(reply).encode()
            sock.sendall(_LENGTHS.pack(len(encoded), len(payload)) + encoded + payload)


def _run(job: dict, path: str) -> tuple[dict, bytes]:
    """One job: the example's layout and bytes, or the error to raise in the worker."""
    try:
        with _limits(job["memory_bytes"], job["seconds"]):
            example = model_example(decode_file(path, job["flags"], job["kind"]), job["orientation"])
        return {"dtype": example.dtype.str, "shape": list(example.shape)}, example.tobytes()
    except InputError as error:
        return {"error": type(error).__name__, "code": error.code, "message": error.message}, b""
    except (MemoryError, cv2.error):
        return {"error": "InputTooLarge", "code": "image_too_costly", "message":
                "decoding the image needs more memory than its share; send a smaller or simpler image"}, b""


@contextlib.contextmanager
def _in_memory_file(sock: socket.socket, nbytes: int) -> Iterator[str]:
    """The next `nbytes` from the socket in a memfd (no disk; one copy of the image's bytes, which
    the worker's reservation counts), named as a path for cv2.imread."""
    descriptor = os.memfd_create("image", os.MFD_CLOEXEC)
    try:
        left = nbytes
        while left:
            chunk = sock.recv(min(left, _CHUNK_BYTES))
            if not chunk:
                raise ConnectionError("the worker closed its socket mid-image")
            os.write(descriptor, chunk)
            left -= len(chunk)
        yield f"/proc/self/fd/{descriptor}"
    finally:
        os.close(descriptor)


_CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def _limits(memory_bytes: int, seconds: float) -> Iterator[None]:
    """The job's memory (what the child has mapped now, plus its share) and CPU time (past it the
    kernel sends SIGXCPU, then SIGKILL: a backstop should the worker not be there to kill it)."""
    data_now = _vm_data_bytes()
    cpu_now = time.process_time()
    resource.setrlimit(resource.RLIMIT_DATA, (data_now + memory_bytes + CHILD_SLACK_BYTES, resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_now + seconds) + 2, resource.RLIM_INFINITY))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _vm_data_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _first_to_go() -> None:
    """In a full cgroup the kernel's OOM killer takes this child, not the worker. The child needs
    no watch on its worker: when the worker goes, its socket closes and the child's next read ends
    it; a decode that outlives it is ended by RLIMIT_CPU."""
    with contextlib.suppress(OSError):
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write(_OOM_SCORE_ADJ)


if __name__ == "__main__":
    _first_to_go()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole group; the worker decides
    child_end = socket.socket(fileno=int(sys.argv[1]))
    child_end.setblocking(True)  # made by gevent in the worker: non-blocking, which this loop is not
    _serve(child_end)
