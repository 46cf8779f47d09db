"""Pre/post-processing shared by training and the API services."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model_preprocessing.image import MODEL_SIZE, RGB_MEAN, mask_to_image, model_input, to_rgb8
from model_preprocessing.text import PAD_TOKEN, pad_batch, segment


def test_segment_uses_jieba_precise_mode_and_drops_whitespace():
    assert segment("  我很喜欢这个产品 \n") == ["我", "很", "喜欢", "这个", "产品"]
    assert segment("质量 非常好") == ["质量", "非常", "好"]
    assert segment("   ") == []


def test_pad_batch_pads_with_the_pad_token_and_counts_true_lengths():
    words, nwords = pad_batch([["很", "喜欢"], ["差"]])
    assert words.shape == (2, 2) and words.dtype == object
    assert words.tolist() == [["很".encode(), "喜欢".encode()], ["差".encode(), PAD_TOKEN.encode()]]
    assert nwords.tolist() == [2, 1] and nwords.dtype == np.int32


def test_pad_batch_of_empty_sentences_keeps_a_valid_shape():
    words, nwords = pad_batch([[]])
    assert words.shape == (1, 1) and nwords.tolist() == [0]


def test_bgr_becomes_rgb():
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    assert to_rgb8(bgr)[0, 0].tolist() == [0, 0, 255]


def test_rgba_is_composited_onto_black():
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 2] = 200  # red
    bgra[0, 0, 3], bgra[0, 1, 3], bgra[1, :, 3] = 255, 0, 128
    rgb = to_rgb8(bgra)
    assert rgb[0, 0].tolist() == [200, 0, 0]
    assert rgb[0, 1].tolist() == [0, 0, 0]
    assert rgb[1, 0].tolist() == [100, 0, 0]


def test_gray_and_16_bit_become_8_bit_rgb():
    gray16 = np.full((3, 3), 65535, np.uint16)
    assert to_rgb8(gray16).shape == (3, 3, 3) and to_rgb8(gray16).max() == 255
    assert to_rgb8(np.full((3, 3, 1), 7, np.uint8))[0, 0].tolist() == [7, 7, 7]


def test_model_input_is_resized_and_mean_subtracted():
    rgb = np.full((100, 50, 3), 200, np.uint8)
    x = model_input(rgb)
    assert x.shape == (MODEL_SIZE, MODEL_SIZE, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 200 - RGB_MEAN, rtol=1e-5)


def test_mask_comes_back_at_the_original_size():
    saliency = np.zeros((MODEL_SIZE, MODEL_SIZE, 1), np.float32)
    saliency[:, MODEL_SIZE // 2 :] = 1.0
    mask = mask_to_image(saliency, 90, 140)
    assert mask.shape == (90, 140) and mask.dtype == np.uint8
    assert mask[:, :60].max() == 0 and mask[:, 80:].min() == 255
    assert cv2.imencode(".png", mask)[0]


@pytest.mark.parametrize("layout", ["bgr", "gray", "bgr16", "bgra", "bgra16"])
def test_resizing_first_gives_what_converting_first_gives(layout):
    """to_rgb8 resizes before converting wherever the result is the same (memory: the full-size
    work stays 8-bit, one copy at most); against the plain order, within one level."""
    rng = np.random.default_rng(7)
    shapes = {"bgr": (3,), "gray": (), "bgr16": (3,), "bgra": (4,), "bgra16": (4,)}
    depth = np.uint16 if layout.endswith("16") else np.uint8
    image = rng.integers(0, np.iinfo(depth).max, (700, 500, *shapes[layout]), dtype=depth, endpoint=True)
    plain = cv2.resize(to_rgb8(image), (MODEL_SIZE, MODEL_SIZE), interpolation=cv2.INTER_AREA)
    original = image.copy()
    small = to_rgb8(image, MODEL_SIZE)
    assert small.shape == (MODEL_SIZE, MODEL_SIZE, 3) and small.dtype == np.uint8
    assert np.abs(small.astype(int) - plain.astype(int)).max() <= 1
    assert np.array_equal(image, original), "the caller's image is left alone unless in_place"


def test_in_place_compositing_overwrites_the_callers_8_bit_image():
    bgra = np.full((4, 4, 4), 200, np.uint8)
    bgra[..., 3] = 0
    assert to_rgb8(bgra, in_place=True).max() == 0
    assert bgra[..., :3].max() == 0, "premultiplied where it lay: no full-size copy"
