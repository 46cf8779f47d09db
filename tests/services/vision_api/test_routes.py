"""vision-api's HTTP layer against a stand-in model client: the image in every request form,
the mask as PNG or JSON, and the errors."""

from __future__ import annotations

import base64
import io
import time

import cv2
import grpc
import numpy as np
import pytest

import service_kit.http.routes
from local_stack import compose_file
from service_kit.http.app import service_app
from tests.conftest import REPO_ROOT
from tests.services.vision_api import crafted_images
from tests.services.vision_api.conftest import encode, photo, png_claiming
from vision_api.image_headers import ImageHeader
from vision_api.saliency import SaliencyService
from vision_api.settings import VisionApiSettings


@pytest.fixture
def client(vision_client_fake):
    app = service_app(SaliencyService, VisionApiSettings(max_body_bytes=2_000_000), client=vision_client_fake)
    return app.test_client()


def read_png(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG")
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


IMAGE = encode(photo(90, 120), ".png")


def check_mask(mask: np.ndarray) -> None:
    """At the caller's size, bright where the square was."""
    assert mask.shape == (90, 120) and mask.dtype == np.uint8
    assert mask[45, 60] == 255 and mask[5, 5] == 0


@pytest.mark.parametrize("form", ["raw", "multipart", "json", "get"])
def test_every_request_form_returns_the_mask(client, vision_client_fake, form):
    if form == "raw":
        reply = client.post("/cv_sod", data=IMAGE, content_type="image/png")
    elif form == "multipart":
        reply = client.post("/cv_sod", data={"img": (io.BytesIO(IMAGE), "x.png")})
    elif form == "json":
        reply = client.post("/cv_sod", json={"img": base64.b64encode(IMAGE).decode()})
    else:
        reply = client.get("/cv_sod?img=" + base64.urlsafe_b64encode(IMAGE).decode().rstrip("="))
    assert reply.status_code == 200 and reply.mimetype == "image/png"
    assert reply.headers["X-Model-Version"] == "1"
    check_mask(read_png(reply.data))
    sent = vision_client_fake.calls[-1]["inputs"]["img_in"]
    assert sent.shape == (1, 320, 320, 3) and sent.dtype == np.float32


def test_json_reply_when_asked(client):
    for reply in (client.post("/cv_sod?format=json", data=IMAGE, content_type="image/png"),
                  client.post("/cv_sod", data=IMAGE, content_type="image/png", headers={"Accept": "application/json"})):
        assert reply.status_code == 200 and reply.is_json
        assert reply.json["width"] == 120 and reply.json["height"] == 90 and reply.json["model_version"] == 1
        check_mask(read_png(base64.b64decode(reply.json["mask_png"])))


def test_the_legacy_route_answers_json_with_status(client):
    reply = client.post("/cv_sod/predict", data={"img": (io.BytesIO(IMAGE), "x.png")})
    assert reply.status_code == 200 and reply.json["status"] == 0
    check_mask(read_png(base64.b64decode(reply.json["mask_png"])))
    assert "img_out" not in reply.json, "the documents' pickled array is never sent"
    get = client.get("/cv_sod/predict?img=" + base64.urlsafe_b64encode(IMAGE).decode())
    assert get.status_code == 200 and get.json["status"] == 0


def test_rgba_gray_and_16_bit_inputs(client):
    rgba = np.dstack([photo(90, 120), np.full((90, 120), 255, np.uint8)])
    gray = photo(90, 120)[:, :, 0]
    deep = photo(90, 120).astype(np.uint16) * 257
    for image in (rgba, gray, deep):
        reply = client.post("/cv_sod", data=encode(image), content_type="image/png")
        assert reply.status_code == 200
        check_mask(read_png(reply.data))


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"data": b"hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ({"data": b"hello", "content_type": "image/png"}, 415, "not_an_image"),
    ({"data": b"", "content_type": "image/png"}, 422, "empty_image"),
    ({"data": png_claiming(100_000, 100_000), "content_type": "image/png"}, 413, "image_too_large"),
    ({"data": b"x" * 2_000_001, "content_type": "image/png"}, 413, "payload_too_large"),
    ({"json": {"img": "***"}}, 400, "invalid_base64"),
    ({"json": {"image": "abc"}}, 400, "missing_field"),
    ({"data": "{broken", "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": {"other": (io.BytesIO(IMAGE), "x.png")}}, 400, "missing_field"),
])
def test_bad_requests_get_json_errors(client, vision_client_fake, kwargs, status, code):
    reply = client.post("/cv_sod", **kwargs)
    assert reply.status_code == status and reply.is_json
    assert reply.json["error"]["code"] == code
    assert not vision_client_fake.calls


def test_get_without_image_and_bad_base64(client):
    assert client.get("/cv_sod").json["error"]["code"] == "missing_field"
    assert client.get("/cv_sod?img=%%%").json["error"]["code"] == "invalid_base64"


def test_model_server_down_is_a_fast_503(client, vision_client_fake):
    vision_client_fake.fail_with = grpc.StatusCode.UNAVAILABLE
    reply = client.post("/cv_sod", data=IMAGE, content_type="image/png")
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
    assert reply.json["error"]["code"] == "model_unavailable"


def test_images_past_the_memory_budget_wait_then_get_a_503(vision_client_fake):
    app = service_app(SaliencyService, VisionApiSettings(image_memory_budget_mb=64, model_timeout_seconds=0.05),
                     client=vision_client_fake)
    images = app.extensions["service"].images
    with images.reserve(images.capacity, timeout=1):  # other requests hold the whole image share
        reply = app.test_client().post("/cv_sod", data=IMAGE, content_type="image/png")
    assert reply.status_code == 503 and reply.json["error"]["code"] == "busy" and reply.headers["Retry-After"]
    second = app.test_client().post("/cv_sod", data=IMAGE, content_type="image/png")
    assert second.status_code == 200, second.json
    assert images.used == 0


def test_an_image_answered_504_mid_decode_keeps_its_memory_share_until_its_child_is_done(vision_client_fake):
    """Issue 33: the share was released at the 504 while the decoding child still held the memory."""
    app = service_app(SaliencyService, VisionApiSettings(image_memory_budget_mb=256), client=vision_client_fake)
    images = app.extensions["service"].images
    slow = crafted_images.many_scan_jpeg(26, 6000, 4500)  # about 0.5 s
    reply = app.test_client().post("/cv_sod", data=slow, content_type="image/jpeg",
                                   headers={"X-Request-Timeout-Ms": "100"})
    assert reply.status_code == 504, reply.json
    assert images.used > 0, "released while the child decodes"
    deadline = time.monotonic() + 10
    while images.used:
        assert time.monotonic() < deadline, "never released"
        time.sleep(0.02)
    assert app.test_client().post("/cv_sod", data=IMAGE, content_type="image/png").status_code == 200


def test_the_body_share_is_taken_before_the_body_is_read(vision_client_fake, monkeypatch):
    app = service_app(SaliencyService, VisionApiSettings(image_memory_budget_mb=64, model_timeout_seconds=0.05),
                     client=vision_client_fake)
    bodies = app.extensions["service"].bodies
    monkeypatch.setattr(service_kit.http.routes, "read_request",
                        lambda *args: pytest.fail("read a body without room for it"))
    with bodies.reserve(bodies.capacity, timeout=1):
        reply = app.test_client().post("/cv_sod", data=IMAGE, content_type="image/png")
    assert reply.status_code == 503 and reply.json["error"]["code"] == "busy"


def test_an_image_larger_than_the_budget_is_refused_before_decoding(vision_client_fake, monkeypatch):
    """A 30 MP 16-bit RGBA PNG needs ~400 MB: more than a 64 MB budget ever has. The answer names
    the limit for that kind of image."""
    app = service_app(SaliencyService, VisionApiSettings(image_memory_budget_mb=64), client=vision_client_fake)
    monkeypatch.setattr(cv2, "imdecode", lambda *args: pytest.fail("decoded an image over the budget"))
    claim = bytearray(encode(np.zeros((1, 1, 4), np.uint16)))
    claim[16:24] = (6000).to_bytes(4, "big") + (5000).to_bytes(4, "big")
    reply = app.test_client().post("/cv_sod", data=bytes(claim), content_type="image/png")
    assert reply.status_code == 413 and reply.json["error"]["code"] == "image_too_large"
    message = reply.json["error"]["message"]
    assert "6000x5000 16-bit color with alpha PNG" in message
    per_pixel = 8 + 4  # decoded, and its 8-bit copy
    assert f"at most about {48 * 2**20 // per_pixel} pixels of this kind" in message


def test_the_readme_states_the_budget_and_limits_compose_gives():
    limit = int(compose_file.load().environments["vision-api"]["MEMORY_LIMIT_MB"])
    model = SaliencyService(client=None, settings=VisionApiSettings(memory_limit_mb=limit, web_concurrency=1))
    readme = (REPO_ROOT / "services" / "README.md").read_text()
    readme = " ".join(readme.split())
    assert f"{model.settings.image_memory_budget_bytes() >> 20} MB of compose's {limit} MB" in readme
    png16, png16_alpha = (model.max_pixels(ImageHeader("PNG", 10, 10, channels, 2)) for channels in (3, 4))
    assert f"{png16 / 1e6:.1f} MP for 16-bit color and {png16_alpha / 1e6:.1f} MP for 16-bit color with alpha" in readme
    gif, webp = (model.max_pixels(ImageHeader(kind, 10, 10, 4)) for kind in ("GIF", "WebP"))
    progressive = model.max_pixels(ImageHeader("JPEG", 80, 80, 3, coefficient_bytes=3 * 100 * 128))
    assert f"{gif / 1e6:.1f} MP for GIF and progressive 4:4:4 JPEG, {webp / 1e6:.1f} MP for WebP" in readme
    assert gif == progressive


# --- issue 20: small crafted images that cost much -------------------------------------------------

@pytest.fixture
def compose_sized(vision_client_fake):
    """The app with the memory budget compose's limit gives one worker."""
    limit = int(compose_file.load().environments["vision-api"]["MEMORY_LIMIT_MB"])
    return service_app(SaliencyService, VisionApiSettings(memory_limit_mb=limit, web_concurrency=1),
                       client=vision_client_fake)


def post_image(app, data: bytes):
    return app.test_client().post("/cv_sod", data=data, content_type="image/png")


def test_a_jpeg_of_many_scans_is_refused_from_its_header(compose_sized):
    """1,000 repeated scans of 28 bytes (94 KB) held a worker for 6 s (item 1)."""
    started = time.monotonic()
    reply = post_image(compose_sized, crafted_images.many_scan_jpeg(1000))
    assert reply.status_code == 413 and reply.json["error"]["code"] == "too_many_scans", reply.json
    assert "1006 scans" in reply.json["error"]["message"]
    assert time.monotonic() - started < 1


def test_a_bmp_claiming_more_than_opencv_takes_on_a_side_is_a_413(compose_sized):
    """54 bytes claiming 1,100,000 x 30 pixels (under the pixel limit) was a 500 (item 2)."""
    reply = post_image(compose_sized, crafted_images.huge_bmp_header())
    assert reply.status_code == 413 and reply.json["error"]["code"] == "image_too_large", reply.json
    assert "on a side" in reply.json["error"]["message"]


def test_a_flat_40_mp_gif_is_refused_for_what_decoding_it_takes(compose_sized):
    """A 40 KB GIF of one colour: 8 bytes a pixel to decode, 320 MB; charged 4 it was let in,
    and OOM-killed a replica's worker under compose (items 0 and 3)."""
    reply = post_image(compose_sized, crafted_images.flat_gif())
    assert reply.status_code == 413 and reply.json["error"]["code"] == "image_too_large", reply.json
    assert "8000x5000 8-bit color with alpha GIF" in reply.json["error"]["message"]


def test_a_phone_photo_gets_the_mask_its_viewer_sees_at_any_size(client):
    """EXIF Orientation 6 (item 10): the same photo at 2560x1280 (decoded reduced, where OpenCV
    applied the tag) and at 320x160 (decoded whole, where it did not) got masks of IoU 0.00. Now
    both are turned as shown: 1280 wide and 2560 high, the disc at the top."""
    masks = []
    for width, height in ((2560, 1280), (320, 160)):
        reply = client.post("/cv_sod", data=crafted_images.exif_rotated_jpeg(width, height), content_type="image/jpeg")
        assert reply.status_code == 200, reply.json
        mask = read_png(reply.data)
        assert mask.shape == (width, height), "the displayed size: height and width of the stored pixels swapped"
        masks.append(cv2.resize(mask, (1280, 2560), interpolation=cv2.INTER_NEAREST) > 127)
    large, small = masks
    assert large[: 2560 // 3].mean() > 0.1 and large[2 * 2560 // 3:].mean() < 0.01, "the disc is at the top"
    assert (large & small).sum() / (large | small).sum() > 0.8
