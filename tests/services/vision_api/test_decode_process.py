"""The decoding child (vision_api.decode_process): what it answers, and that nothing it is sent,
however slow or hungry to decode, costs more than its time and memory (issue 20)."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import psutil
import pytest

from service_kit.core.refusals import Busy, InputTooLarge, InvalidInput
from tests.services.vision_api import crafted_images
from tests.services.vision_api.conftest import encode, photo
from vision_api.decode_process import (
    _LENGTHS,
    EXAMPLE_BYTES,
    CallerGaveUp,
    DecodePool,
    DecodeProcess,
    _Abandoned,
    _receive,
)
from vision_api.image_decoding import decode_image, model_example
from vision_api.image_headers import read_header

MB = 2**20


@pytest.fixture
def child():
    process = DecodeProcess(max_image_pixels=40_000_000)
    process.wait_ready(30)
    yield process
    process.close()


def prepare(child: DecodeProcess, data: bytes, memory_bytes: int = 512 * MB, seconds: float = 30.0) -> np.ndarray:
    return child.prepare(data, read_header(data), memory_bytes, seconds)


def test_the_child_answers_what_decoding_in_the_worker_would(child):
    for data in (encode(photo(300, 500), ".jpg"), encode(photo(90, 120), ".png"), crafted_images.lossless_webp(64, 48)):
        header = read_header(data)
        expected = model_example(decode_image(data, header, 320), header.orientation)
        assert np.array_equal(prepare(child, data), expected)
        assert expected.shape == (320, 320, 3) and expected.dtype == np.float32


def test_what_the_child_finds_wrong_is_raised_in_the_worker(child):
    data = encode(photo(200, 200), ".png")
    with pytest.raises(InvalidInput) as caught:
        prepare(child, data[:100])
    assert caught.value.code == "corrupt_image"
    assert prepare(child, data).shape == (320, 320, 3), "the same child goes on"


def test_a_decode_past_its_time_is_killed_and_the_child_replaced(child):
    """10,000 scans: 30 s of libjpeg in the worker before (item 1); here the child is killed at
    its limit and the next image is decoded by a new one."""
    bomb = crafted_images.many_scan_jpeg(10_000)
    first = child.process.pid
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        prepare(child, bomb, seconds=0.5)
    assert time.monotonic() - started < 1.5
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    child.wait_ready(30)
    assert child.process.pid != first
    assert prepare(child, encode(photo(), ".png")).shape == (320, 320, 3)


@pytest.mark.parametrize("make", [crafted_images.flat_gif, lambda: crafted_images.lossless_webp(6000, 4000),
                                  crafted_images.progressive_jpeg], ids=["gif", "webp", "progressive jpeg"])
def test_a_decode_past_its_memory_share_fails_in_the_child_alone(child, make):
    """An image whose decoding needs more than the share it was given (the budget undercounted
    it, item 3) fails its allocation in the child: an error, not an OOM-killed worker."""
    data = make()
    pid = child.process.pid
    with pytest.raises((InputTooLarge, InvalidInput)):
        prepare(child, data, memory_bytes=4 * MB)
    child.wait_ready(30)
    assert prepare(child, encode(photo(), ".png")).shape == (320, 320, 3)
    assert child.process.pid == pid, "a refused allocation leaves the child as it was"


def test_opencv_in_the_child_is_told_the_pixel_limit_before_it_loads():
    """OPENCV_IO_MAX_IMAGE_PIXELS is read once, when OpenCV loads: set in the worker after cv2 was
    imported, it did nothing (item 2). The child is started with it."""
    limited = DecodeProcess(max_image_pixels=10_000)
    try:
        limited.wait_ready(30)
        assert prepare(limited, encode(photo(90, 110), ".png")).shape == (320, 320, 3)  # 9,900 pixels
        with pytest.raises(InvalidInput):
            prepare(limited, encode(photo(100, 110), ".png"))  # 11,000 pixels: OpenCV itself refuses
    finally:
        limited.close()


def test_a_caller_that_stops_waiting_does_not_cost_the_decode(child):
    """A request whose deadline comes mid-decode is answered then; the child finishes the image
    within its own limit and serves the next one (killing it would cost a restart each time)."""
    slow = crafted_images.many_scan_jpeg(26, 6000, 4500)  # about 0.7 s
    pid = child.process.pid
    with pytest.raises(CallerGaveUp):
        child.prepare(slow, read_header(slow), 512 * MB, time_limit=30, wait_seconds=0.1)
    assert prepare(child, encode(photo(), ".png")).shape == (320, 320, 3)
    assert child.process.pid == pid


def test_a_pool_hands_out_its_children_and_says_busy_when_none_is_free():
    pool = DecodePool(1, max_image_pixels=40_000_000)
    try:
        pool.wait_ready(30)
        with pool.process(wait_seconds=1):
            started = time.monotonic()
            with pytest.raises(Busy), pool.process(wait_seconds=0.2):
                pass
            assert 0.15 < time.monotonic() - started < 1
        with pool.process(wait_seconds=1) as child:
            assert prepare(child, encode(photo(), ".png")).shape == (320, 320, 3)
    finally:
        pool.close()


def test_a_dropped_child_does_not_outlive_its_owner():
    process = DecodeProcess(max_image_pixels=40_000_000)
    pid = process.process.pid
    del process
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child outlived its DecodeProcess"
        time.sleep(0.05)


# --- issue 33: a replaced child, abandoned decodes, costly images ----------------------------------

def test_a_child_replaced_after_an_abandoned_decode_does_not_corrupt_the_next_read(child):
    """The caller gave up (0.01 s) on an image that then overran its limit; the child was replaced,
    and the new child's ready byte was read as the next reply's first byte: 1.37 GB allocated for its
    'length', and the next normal image failed with TimeoutError after 2.2 s."""
    bomb = crafted_images.many_scan_jpeg(10_000)
    with pytest.raises(CallerGaveUp):
        child.prepare(bomb, read_header(bomb), 512 * MB, time_limit=0.5, wait_seconds=0.01)
    time.sleep(0.6)
    before = psutil.Process().memory_info().rss
    started = time.monotonic()
    assert prepare(child, encode(photo(300, 500), ".jpg"), seconds=5).shape == (320, 320, 3)
    assert time.monotonic() - started < 2 and psutil.Process().memory_info().rss - before < 100 * MB


class _StandInChild(DecodeProcess):
    """A DecodeProcess whose 'child' is this test, at the other end of its socket."""

    def __init__(self) -> None:  # no process
        self.socket, self.peer = socket.socketpair()
        self.ready, self.abandoned, self.process = True, None, None
        self.replaced: list[str] = []

    def replace(self, reason: str) -> None:
        self.replaced.append(reason)


def reply_bytes(payload: bytes = b"\0" * EXAMPLE_BYTES) -> tuple[bytes, bytes]:
    header = json.dumps({"dtype": "<f4", "shape": [320, 320, 3], "payload_bytes": len(payload)}).encode()
    return _LENGTHS.pack(len(header), len(payload)), header + payload


def test_lengths_no_decoder_sends_are_refused_before_anything_is_allocated():
    stand_in = _StandInChild()
    stand_in.peer.sendall(b"R" + _LENGTHS.pack(1_370_000_000, 0)[:7])  # a ready byte read as lengths
    before = psutil.Process().memory_info().rss
    with pytest.raises(ValueError, match="no decoder's reply"):
        stand_in._reply(_receive(stand_in.socket, _LENGTHS.size))
    assert psutil.Process().memory_info().rss - before < 100 * MB


def test_an_abandoned_reply_that_started_in_time_gets_time_to_arrive_whole():
    """Its lengths came within the image's time limit; the rest (1.2 MB, several reads) came after
    it, and each read was given 1 ms: the child was killed for nothing."""
    stand_in = _StandInChild()
    released = []
    stand_in.abandoned = _Abandoned(time.monotonic() + 0.05, lambda: released.append(True))
    lengths, rest = reply_bytes()

    def answer_late() -> None:
        stand_in.peer.sendall(lengths)
        time.sleep(0.1)  # past the image's time limit
        stand_in.peer.sendall(rest)

    threading.Thread(target=answer_late, daemon=True).start()
    stand_in.finish_abandoned()
    assert stand_in.replaced == [] and released == [True] and stand_in.abandoned is None


def test_a_caller_with_no_time_left_sends_nothing_to_decode(child):
    slow = crafted_images.many_scan_jpeg(26, 6000, 4500)
    cpu_before = sum(psutil.Process(child.process.pid).cpu_times()[:2])
    with pytest.raises(CallerGaveUp):
        child.prepare(slow, read_header(slow), 512 * MB, time_limit=30, wait_seconds=0)
    time.sleep(0.5)
    assert sum(psutil.Process(child.process.pid).cpu_times()[:2]) - cpu_before < 0.1, "the child decoded it anyway"
    assert child.abandoned is None


def test_an_abandoned_decode_keeps_its_memory_until_the_child_is_done_and_the_child_waits_meanwhile():
    pool = DecodePool(2, max_image_pixels=40_000_000)
    slow = crafted_images.many_scan_jpeg(26, 6000, 4500)  # about 0.5 s
    kept = []
    try:
        pool.wait_ready(30)
        with pytest.raises(CallerGaveUp), pool.process(wait_seconds=1) as first:
            first.prepare(slow, read_header(slow), 512 * MB, time_limit=30, wait_seconds=0.05,
                          keep_memory=lambda: kept.append("held") or (lambda: kept.append("released")))
        assert kept == ["held"], "the 504 does not free what the child still holds"
        with pool.process(wait_seconds=1) as second:  # the other child, at once
            assert second is not first
            assert prepare(second, encode(photo(), ".png")).shape == (320, 320, 3)
        deadline = time.monotonic() + 10
        while kept != ["held", "released"]:
            assert time.monotonic() < deadline, kept
            time.sleep(0.02)
        with pool.process(wait_seconds=1) as again:  # both back, the drained one included
            with pool.process(wait_seconds=1) as other:
                assert {again, other} == {first, second} and first.abandoned is None
    finally:
        pool.close()


def test_costly_images_hold_all_but_one_child_so_a_normal_image_never_waits_behind_them():
    pool = DecodePool(2, max_image_pixels=40_000_000)
    try:
        pool.wait_ready(30)
        with pool.process(wait_seconds=1, costly=True):
            started = time.monotonic()
            with pytest.raises(Busy, match="large or complex"), pool.process(wait_seconds=0.2, costly=True):
                pass
            assert 0.15 < time.monotonic() - started < 1
            with pool.process(wait_seconds=0.01) as cheap:  # the child kept for normal images
                assert prepare(cheap, encode(photo(), ".png")).shape == (320, 320, 3)
        with pool.process(wait_seconds=0.01, costly=True):
            pass  # the costly slot is free again
    finally:
        pool.close()


def test_one_child_takes_costly_images_too():
    pool = DecodePool(1, max_image_pixels=40_000_000)
    try:
        pool.wait_ready(30)
        with pool.process(wait_seconds=1, costly=True) as child:
            assert prepare(child, encode(photo(), ".png")).shape == (320, 320, 3)
    finally:
        pool.close()





def test_a_child_still_starting_is_passed_over_for_one_that_can_decode():
    """A replaced child went back on top of the pool, and the next image waited for its start."""
    pool = DecodePool(2, max_image_pixels=40_000_000)
    try:
        pool.wait_ready(30)
        with pool.process(wait_seconds=1) as first:
            first.replace("the test")  # as after a decode past its time: starting again
        with pool.process(wait_seconds=1) as chosen:
            assert chosen is not first and chosen.ready
    finally:
        pool.close()
