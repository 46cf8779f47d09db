"""No request under the body limit costs more than a stated bound (issue 20): generated inputs
through the real apps (Flask's test client, a stand-in model client; vision-api with its real
decoding child, settings as compose gives them), each answered 2xx, 4xx or 503 with a JSON error,
within its time, and the processes' peak memory during it within a stated bound.

vision-api: images of every accepted format and layout at small sizes, then one mutation an
attacker would make: the size the header claims, many more JPEG scans, an EXIF orientation of any
value, a truncation, flipped bytes, trailing bytes. text-api: texts up to the largest body (64
lines of 2,000 characters), from alphabets that segment differently (dictionary words, unknown
characters, digits, emoji, combining marks, runs of one character, lone surrogates).
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.fuzz.process_memory import peak_growth, reset_peak, status_bytes
from tests.services.conftest import FakeModelClient, fake_saliency, fake_sentiment
from tests.services.vision_api import crafted_images
from vision_api.decode_process import CHILD_SLACK_BYTES

pytestmark = pytest.mark.slow

MB = 2**20
# The bounds. Per request: its wall time (vision: the worker's and its decoding child's work
# together), and for text its CPU time (the worker's, time.process_time). Memory, as the peak of
# resident memory above where it was before the request: vision-api's worker, what it reserved
# for the image (its mask at full size and the PNG) and its body (twice: the test client's copy
# and the worker's), plus WORKER_SLACK_BYTES; its decoding child, what was reserved plus the
# child's own slack (what its RLIMIT_DATA allows); text-api's worker, TEXT_PEAK_BYTES.
# Measured (2 shared cores): the worst image 0.07 s; the worst text 1.55 s of CPU and 2.5 s in
# all (64 lines of 2,000 random rare CJK characters: jieba's HMM on unknown words, 12 us a
# character; dictionary text costs a third of that).
VISION_SECONDS = 2.0
TEXT_CPU_SECONDS = 3.0
TEXT_SECONDS = 6.0
WORKER_SLACK_BYTES = 16 * MB
TEXT_PEAK_BYTES = 64 * MB

GENERATED = settings(deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.function_scoped_fixture])


class Costs:
    """The worst of each bound's measure over a test's examples, printed at its end (pytest -s)."""

    def __init__(self) -> None:
        self.worst: dict[str, tuple[float, str]] = {}
        self.statuses: dict[int, int] = {}

    def post(self, client, path: str, data: bytes, content_type: str, what: str) -> tuple[object, float, float]:
        """The answer to one request, checked (2xx, 4xx or 503, errors as JSON), its wall and CPU seconds."""
        started, cpu = time.perf_counter(), time.process_time()
        reply = client.post(path, data=data, content_type=content_type)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        self.statuses[reply.status_code] = self.statuses.get(reply.status_code, 0) + 1
        assert reply.status_code < 500 or reply.status_code == 503, (what, reply.status_code, reply.get_data()[:300])
        if reply.status_code >= 300:
            assert reply.is_json and "code" in reply.json["error"], (what, reply.get_data()[:300])
        self.record("wall seconds", seconds, f"{what}: {reply.status_code}")
        self.record("worker CPU seconds", cpu, f"{what}: {reply.status_code}")
        return reply, seconds, cpu

    def record(self, measure: str, value: float, what: str) -> None:
        if value >= self.worst.get(measure, (-1.0, ""))[0]:
            self.worst[measure] = (value, what)

    def report(self, title: str) -> None:
        print(f"\n{title}: statuses {dict(sorted(self.statuses.items()))}")
        for measure, (value, what) in sorted(self.worst.items()):
            print(f"  worst {measure}: {value:,.3f} ({what})")


# --- vision-api ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vision():
    from service_kit.http.app import service_app
    from vision_api.saliency import SaliencyService
    from vision_api.settings import VisionApiSettings

    app = service_app(SaliencyService, VisionApiSettings(memory_limit_mb=512, web_concurrency=1),
                      client=FakeModelClient(fake_saliency))
    model = app.extensions["service"]
    model.decoders.wait_ready(30)
    costs = Costs()
    yield app.test_client(), model, costs
    costs.report("vision-api")
    model.decoders.close()


FORMATS = ["png", "png-gray", "png-rgba", "png-16bit", "jpeg", "jpeg-gray", "jpeg-progressive", "jpeg-cmyk",
           "gif", "bmp", "bmp-rgba", "webp", "webp-lossless"]
MUTATIONS = ["none", "claimed-size", "scans", "exif", "truncated", "flipped", "trailing"]
CLAIMED_SIDES = st.sampled_from([0, 1, 255, 256, 8191, 8192, 16383, 16384, 65535, 65536, 100_000, 1 << 20,
                                 (1 << 20) + 1, 1 << 31, (1 << 32) - 1]) | st.integers(0, (1 << 32) - 1)


@st.composite
def images(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(FORMATS))
    width, height = draw(st.integers(1, 200)), draw(st.integers(1, 200))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    content = draw(st.sampled_from(["flat", "noise", "stripes"]))
    data = encode(kind, pixels(width, height, content, rng))
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "claimed-size":
        data = claim_size(data, draw(CLAIMED_SIDES), draw(CLAIMED_SIDES))
    elif mutation == "scans" and data.startswith(b"\xff\xd8"):
        data = repeat_last_scan(data, draw(st.integers(1, 200)))
    elif mutation == "exif":
        data = with_orientation(data, draw(st.integers(0, 65535)))
    elif mutation == "truncated":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif mutation == "flipped":
        flipped = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            flipped[position] ^= draw(st.integers(1, 255))
        data = bytes(flipped)
    elif mutation == "trailing":
        data += bytes(draw(st.integers(1, 4 * MB)))
    return f"{kind} {width}x{height} {content}, {mutation}", data


def pixels(width: int, height: int, content: str, rng: np.random.Generator) -> np.ndarray:
    if content == "flat":
        return np.full((height, width, 4), rng.integers(0, 256, 4), np.uint8)
    if content == "noise":
        return rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    stripes = (np.arange(width) // max(1, width // 8) % 2 * 255).astype(np.uint8)
    return np.broadcast_to(stripes[None, :, None], (height, width, 4)).copy()


def encode(kind: str, bgra: np.ndarray) -> bytes:
    """The image in `kind` (FORMATS), from BGRA pixels."""
    bgr, gray = bgra[:, :, :3], bgra[:, :, 0]
    opencv = {"png": (".png", bgr), "png-gray": (".png", gray), "png-rgba": (".png", bgra),
              "png-16bit": (".png", bgr.astype(np.uint16) * 257), "jpeg": (".jpg", bgr), "jpeg-gray": (".jpg", gray),
              "bmp": (".bmp", bgr), "webp": (".webp", bgr)}
    if kind in opencv:
        ext, image = opencv[kind]
        return cv2.imencode(ext, image)[1].tobytes()
    rgb = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    saved = {"jpeg-progressive": (rgb, "JPEG", {"progressive": True}), "jpeg-cmyk": (rgb.convert("CMYK"), "JPEG", {}),
             "gif": (rgb.convert("P"), "GIF", {}), "bmp-rgba": (Image.fromarray(bgra), "BMP", {}),
             "webp-lossless": (Image.fromarray(bgra), "WEBP", {"lossless": True})}[kind]
    buffer = io.BytesIO()
    saved[0].save(buffer, saved[1], **saved[2])
    return buffer.getvalue()


def claim_size(data: bytes, width: int, height: int) -> bytes:
    """The same bytes with the header's size fields set to claim width x height (as far as each
    field's width allows); the pixels are those of the real size."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        out[16:24] = struct.pack(">II", width, height)
    elif data[:3] == b"GIF":
        out[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif data.startswith(b"BM"):
        out[18:26] = struct.pack("<ii", width & 0x7FFFFFFF, height & 0x7FFFFFFF)
    elif data[:4] == b"RIFF" and data[12:16] == b"VP8 ":
        out[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    elif data[:4] == b"RIFF" and data[12:16] == b"VP8L":
        w, h = (width - 1) & 0x3FFF, (height - 1) & 0x3FFF
        out[21:25] = (w | h << 14 | (data[24] >> 4) << 28).to_bytes(4, "little")
    elif data.startswith(b"\xff\xd8"):
        sof = jpeg_frame_offset(data)
        if sof is not None:
            out[sof + 5:sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    return bytes(out)


def jpeg_frame_offset(data: bytes) -> int | None:
    """Where the start-of-frame marker is (its size follows 5 bytes on)."""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return position
        if marker == 0xDA:
            return None
        position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    return None


def repeat_last_scan(data: bytes, copies: int) -> bytes:
    """crafted_images.many_scan_jpeg's trick on any JPEG: its last scan again `copies` times."""
    end = data.rindex(b"\xff\xd9")
    last = data[data.rindex(b"\xff\xda"):end]
    return data[:end] + last * copies + data[end:]


def with_orientation(data: bytes, orientation: int) -> bytes:
    """An EXIF block whose Orientation is `orientation` (any 16-bit value), where the format keeps it."""
    tiff = b"II*\x00" + struct.pack("<IHHHIHH", 8, 1, 0x0112, 3, 1, orientation, 0) + b"\x00" * 4
    if data.startswith(b"\xff\xd8"):
        segment = b"Exif\x00\x00" + tiff
        return data[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + data[2:]
    if data.startswith(b"\x89PNG"):
        chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
        return data[:33] + chunk + data[33:]
    return data


def decoder_pids(model) -> list[int]:
    return [child.process.pid for child in list(model.decoders._idle.queue) if child.process is not None]


def reserved_bytes(data: bytes) -> int:
    """What the service reserves for this image's decoding and mask (0: refused from its header);
    its body is reserved besides (room_for_body)."""
    from service_kit.core.refusals import InputError
    from vision_api.image_headers import read_header

    try:
        header = read_header(data)
    except InputError:
        return 0
    return header.working_bytes(320) + len(data)


@settings(GENERATED, max_examples=1500)
@given(image=images())
@example(image=("crafted: 200 scans", crafted_images.many_scan_jpeg(200, 640, 480)))
@example(image=("crafted: flat 1 MP GIF", crafted_images.flat_gif(1000, 1000)))
@example(image=("crafted: BMP header claiming 1,100,000 x 30", crafted_images.huge_bmp_header()))
def test_no_image_costs_more_than_its_bounds(vision, image):
    """Each answered within VISION_SECONDS; the worker's and the decoding child's peaks within what
    was reserved for the image, plus their slack."""
    client, model, costs = vision
    what, data = image
    before = {pid: reset_peak(pid) for pid in decoder_pids(model)}
    with peak_growth() as worker:
        reply, seconds, _ = costs.post(client, "/cv_sod", data, "application/octet-stream", what)
    assert seconds <= VISION_SECONDS, f"{what} took {seconds:.2f} s ({reply.status_code})"
    reserved = reserved_bytes(data)
    costs.record("worker's peak growth (MB)", worker["growth"] / MB, f"{what}: {reply.status_code}")
    costs.record("worker's peak growth past its reservation (MB)",
                 (worker["growth"] - reserved - 2 * len(data)) / MB, f"{what}: {reply.status_code}")
    allowed = reserved + 2 * len(data) + WORKER_SLACK_BYTES
    assert worker["growth"] <= allowed, (
        f"{what}: the worker grew {worker['growth'] / MB:.0f} MB, over {allowed / MB:.0f}")
    allowed = reserved + CHILD_SLACK_BYTES
    for pid, rss in before.items():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # replaced after a timeout
            grown = status_bytes("VmHWM", pid) - rss
            costs.record("decoding child's peak growth (MB)", grown / MB, what)
            assert grown <= allowed, f"{what}: the decoding child grew {grown / MB:.0f} MB, over {allowed / MB:.0f}"


# --- text-api -----------------------------------------------------------------------------------

ALPHABETS = {
    "common words": "我喜欢这个产品质量很好非常满意太差了真的不推荐服务态度一般价格便宜物流快",
    "rare CJK": "".join(chr(c) for c in range(0x4E00, 0x9FFF, 97)),
    "CJK extension B": "".join(chr(c) for c in range(0x20000, 0x2A6DF, 1013)),
    "digits and latin": "0123456789abcdefXYZ.%-",
    "emoji": "😀😂🤖👍🏽🇨🇳",
    "combining marks": "e\u0301\u0300\u0302a\u0308\u200d\u200b",
    "punctuation": "，。！？、；：（）【】…—",
    "one character": "好",
}


@st.composite
def texts(draw) -> tuple[str, bytes]:
    alphabet = draw(st.sampled_from(sorted(ALPHABETS)))
    symbols = ALPHABETS[alphabet] + (draw(st.sampled_from(["", "\ud800", "\udfff"])) if alphabet != "one character"
                                     else "")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.sampled_from([1, 2, 16, 64, 65]))
    length = draw(st.sampled_from([1, 10, 200, 1999, 2000, 2001]) | st.integers(1, 2000))
    pool = np.array(list(symbols))
    lines = ["".join(pool[rng.integers(0, len(pool), length)]) for _ in range(count)]
    body = {"line": lines[0]} if count == 1 and draw(st.booleans()) else {"lines": lines}
    ascii_only = draw(st.booleans())
    encoded = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    return f"{alphabet}: {count} x {length}, {len(encoded):,} bytes", encoded


@pytest.fixture(scope="module")
def text():
    from service_kit.http.app import service_app
    from text_api.sentiment import SentimentService
    from text_api.settings import TextApiSettings

    app = service_app(SentimentService, TextApiSettings(web_concurrency=1), client=FakeModelClient(fake_sentiment))
    client = app.test_client()
    assert client.post("/lstm", json={"line": "好"}).status_code == 200  # jieba's dictionary loaded
    costs = Costs()
    yield client, costs
    costs.report("text-api")


def largest_body(alphabet: str) -> tuple[str, bytes]:
    """64 lines of 2,000 random characters of an alphabet: the most text-api takes (the JSON
    stays under its 512 KB body for every alphabet of 3-byte characters)."""
    pool = np.array(list(ALPHABETS[alphabet]))
    rng = np.random.default_rng(0)
    lines = ["".join(pool[rng.integers(0, len(pool), 2000)]) for _ in range(64)]
    return f"the largest body of {alphabet}", json.dumps({"lines": lines}, ensure_ascii=False).encode()


@settings(GENERATED, max_examples=150)
@given(body=texts())
@example(body=largest_body("rare CJK"))
@example(body=largest_body("common words"))
def test_no_text_costs_more_than_its_bounds(text, body):
    """Each answered within TEXT_CPU_SECONDS of CPU and TEXT_SECONDS in all, the worker's peak
    within TEXT_PEAK_BYTES."""
    client, costs = text
    what, data = body
    with peak_growth() as worker:
        reply, seconds, cpu = costs.post(client, "/lstm", data, "application/json", what)
    costs.record("worker's peak growth (MB)", worker["growth"] / MB, f"{what}: {reply.status_code}")
    assert cpu <= TEXT_CPU_SECONDS, f"{what}: {cpu:.2f} s of CPU ({reply.status_code})"
    assert seconds <= TEXT_SECONDS, f"{what} took {seconds:.2f} s ({reply.status_code})"
    assert worker["growth"] <= TEXT_PEAK_BYTES, f"{what}: the worker grew {worker['growth'] / MB:.0f} MB"
