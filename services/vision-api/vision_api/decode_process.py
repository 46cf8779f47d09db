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

A caller whose deadline comes first stops waiting; its child finishes the image within the image's
own time limit, off the request path (DecodePool drains it), and keeps its memory share until then.
Costly images (their header predicts a long decode) may hold all but one of a worker's children, so
a normal photo never waits seconds behind them (issue 33).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from model_preprocessing.image import MODEL_SIZE
from service_kit.core.refusals import Busy, InputError, InputTooLarge, InvalidInput, UnsupportedInput, UnusableInput
from vision_api.image_decoding import decode_file, decode_flags, model_example
from vision_api.image_headers import ImageHeader

log = logging.getLogger(__name__)

_LENGTHS = struct.Struct("!II")  # header bytes, payload bytes
_READY = b"R"
# What a reply may be: a header of at most this, and a payload of nothing (an error) or one example.
# Lengths read out of step (a reply's bytes taken for its lengths) are refused before anything is
# allocated for them: once, 1.37 GB was.
MAX_REPLY_HEADER_BYTES = 64 * 1024
EXAMPLE_BYTES = MODEL_SIZE * MODEL_SIZE * 3 * np.dtype(np.float32).itemsize
# Once a reply's lengths have come, the rest (1.2 MB, several socket reads) gets at least this long.
REST_OF_REPLY_SECONDS = 1.0
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
        self.abandoned: _Abandoned | None = None  # a job whose caller stopped waiting, still in the child
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
                wait_seconds: float | None = None,
                keep_memory: Callable[[], Callable[[], None]] | None = None) -> np.ndarray:
        """The model input of an image whose header was read and checked, or the InputError the
        child found. Past `time_limit` the child is killed (TimeoutError); past `memory_bytes` it
        fails (InputTooLarge). A caller that waits less (`wait_seconds`: its deadline) gets
        CallerGaveUp then; the child finishes that image in its own time (`finish_abandoned`), and
        `keep_memory()` is called to keep the image's memory share counted until it has (it returns
        what releases it). A decode within its limits is not killed for the caller's haste; a caller
        with no time left sends nothing."""
        if wait_seconds is not None and wait_seconds <= 0:
            raise CallerGaveUp("the request's deadline passed before its image was sent to be decoded")
        self.finish_abandoned()  # DecodePool hands out no child with an abandoned image; used alone, wait here
        self.wait_ready(time_limit if wait_seconds is None else wait_seconds)  # a replaced child says so first
        assert self.socket is not None
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
                self.abandoned = _Abandoned(started + time_limit, keep_memory() if keep_memory else None)
                raise CallerGaveUp("the request's deadline passed while its image was decoded") from None
            reply, payload = self._reply(lengths)
        except CallerGaveUp:
            raise
        except TimeoutError:
            self.replace(f"an image took more than {time_limit:g} s")
            raise
        except (OSError, ConnectionError, ValueError, KeyError) as error:  # the child died under the image
            self.replace(f"it died decoding an image ({type(error).__name__}: {error})")
            raise InputTooLarge("image_too_costly", "decoding the image took more memory than its share; "
                                "send a smaller or simpler image") from None
        if "error" in reply:
            raise _ERRORS[reply["error"]](reply["code"], reply["message"])
        return np.frombuffer(payload, dtype=reply["dtype"]).reshape(reply["shape"])

    def _reply(self, lengths: bytes) -> tuple[dict, bytes | bytearray]:
        """The rest of a reply whose lengths came: checked before anything is allocated for them."""
        assert self.socket is not None
        header_bytes, payload_bytes = _LENGTHS.unpack(lengths)
        if header_bytes > MAX_REPLY_HEADER_BYTES or payload_bytes not in (0, EXAMPLE_BYTES):
            raise ValueError(f"a reply of {header_bytes} + {payload_bytes} bytes is no decoder's reply")
        self.socket.settimeout(max(self.socket.gettimeout() or 0.0, REST_OF_REPLY_SECONDS))
        reply = json.loads(_receive(self.socket, header_bytes))
        return reply, _receive(self.socket, payload_bytes)

    def finish_abandoned(self) -> None:
        """Wait out (and drop) the answer to an image its caller stopped waiting for, then release
        its memory share; past that image's own time limit the child is killed and replaced."""
        abandoned, self.abandoned = self.abandoned, None
        if abandoned is None:
            return
        assert self.socket is not None
        try:
            self.socket.settimeout(max(0.001, abandoned.until - time.monotonic()))
            self._reply(_receive(self.socket, _LENGTHS.size))
        except (OSError, ConnectionError, ValueError, KeyError) as error:  # TimeoutError is an OSError
            self.replace(f"an image whose caller gave up was not done in its time ({type(error).__name__})")
        finally:
            if abandoned.release is not None:
                abandoned.release()

    def replace(self, reason: str) -> None:
        """Kill the child and start another (it imports OpenCV meanwhile, in parallel)."""
        log.warning("decoding child %s replaced: %s", self.process.pid if self.process else None, reason)
        self.close()
        self.spawn()

    def close(self) -> None:
        self._finalizer()
        self.process = self.socket = None


@dataclasses.dataclass(frozen=True)
class _Abandoned:
    until: float  # the image's own time limit: past it, its child is killed
    release: Callable[[], None] | None  # what frees the image's memory share once the child is done


class DecodePool:
    """`size` children per worker; a request waits for a free one until its deadline (Busy).
    Costly images may hold at most `size - 1` children at once (all of them when there is one), so
    that the others' decodes wait for a cheap decode at most. A child whose caller gave up goes back
    to the pool once it has finished that image (a drain of its own, off the request path).
    Children are started lazily, in the process that uses them (gunicorn forks workers)."""

    def __init__(self, size: int, max_image_pixels: int):
        self.size = size
        self.max_image_pixels = max_image_pixels
        self._children: list[DecodeProcess] = []
        self._idle: queue.LifoQueue[DecodeProcess] = queue.LifoQueue()
        self._costly_slots = threading.BoundedSemaphore(max(1, size - 1))
        self._started_in: int | None = None

    def start(self) -> None:
        if self._started_in != os.getpid():
            self._idle = queue.LifoQueue()
            self._costly_slots = threading.BoundedSemaphore(max(1, self.size - 1))
            self._children = [DecodeProcess(self.max_image_pixels) for _ in range(self.size)]
            for child in self._children:
                self._idle.put(child)
            self._started_in = os.getpid()

    @contextlib.contextmanager
    def process(self, wait_seconds: float, costly: bool = False) -> Iterator[DecodeProcess]:
        self.start()
        deadline = time.monotonic() + wait_seconds
        if costly and not self._costly_slots.acquire(timeout=max(0.0, wait_seconds)):
            raise Busy("this worker's image decoders are busy with other large or complex images; retry shortly")
        try:
            child = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            if costly:
                self._costly_slots.release()
            raise Busy("every image decoder of this worker is busy; retry shortly") from None
        child = self._ready_one(child)
        try:
            yield child
        finally:
            if child.abandoned is not None:
                threading.Thread(target=self._drain, args=(child, costly), name="decode-drain", daemon=True).start()
            else:
                self._give_back(child, costly)

    def _ready_one(self, child: DecodeProcess) -> DecodeProcess:
        """`child`, or an idle one that can decode now when `child` is still starting (a replaced
        child goes back on top of the pool: the next image would wait ~0.3 s for its start)."""
        if child.ready:
            return child
        try:
            other = self._idle.get_nowait()
        except queue.Empty:
            return child
        if other.ready:
            child, other = other, child
        self._idle.put(other)
        return child

    def _drain(self, child: DecodeProcess, costly: bool) -> None:
        try:
            child.finish_abandoned()
        finally:
            self._give_back(child, costly)

    def _give_back(self, child: DecodeProcess, costly: bool) -> None:
        self._idle.put(child)
        if costly:
            self._costly_slots.release()

    def wait_ready(self, seconds: float) -> None:
        """Start the children if need be and wait until each can decode (Busy past `seconds`)."""
        self.start()
        for child in list(self._idle.queue):
            child.wait_ready(seconds)

    def close(self) -> None:
        for child in self._children:
            child.close()
        self._children = []


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
