"""The exported `cv_sod` SavedModel and the generated data it was trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from model_preprocessing.image import model_input
from tests.conftest import MODEL_REPOSITORY, REPO_ROOT
from training.cv_sod_data import make_example

CV_SOD_DIR = MODEL_REPOSITORY / "cv_sod" / "1"


@pytest.fixture(scope="module")
def serve():
    return tf.saved_model.load(str(CV_SOD_DIR)).signatures["serving_default"]


def test_signature_is_the_documented_one_with_a_dynamic_batch(serve):
    spec = serve.structured_input_signature[1]["img_in"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 320, 320, 3]
    assert serve.structured_outputs["img_out"].shape.as_list() == [None, 320, 320, 1]


def test_batch_answers_equal_single_answers(serve):
    images = np.stack([model_input(make_example(seed)[0]) for seed in (11, 12, 13)])
    together = serve(img_in=tf.constant(images))["img_out"].numpy()
    alone = serve(img_in=tf.constant(images[1:2]))["img_out"].numpy()
    assert together.shape == (3, 320, 320, 1)
    assert 0.0 <= together.min() and together.max() <= 1.0
    np.testing.assert_allclose(together[1:2], alone, atol=1e-4)


def test_finds_a_generated_object(serve):
    image, truth = make_example(10_000_000 + 12345)  # from the held-out seed range
    mask = serve(img_in=tf.constant(model_input(image)[None]))["img_out"].numpy()[0, :, :, 0]
    assert np.abs(mask - truth).mean() < 0.1


def test_generated_examples_are_deterministic_and_have_objects():
    (a_image, a_mask), (b_image, b_mask) = make_example(7), make_example(7)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert a_image.shape == (320, 320, 3) and a_image.dtype == np.uint8
    assert 0 < a_mask.mean() < 1


def test_metrics_file_records_held_out_quality():
    metrics = json.loads((MODEL_REPOSITORY / "cv_sod" / "metrics.v1.json").read_text())
    assert set(metrics) >= {"mae", "max_f_measure", "s_measure", "held_out_images"}
    assert metrics["mae"] <= 0.03, "the target of the model issue"


def test_example_pictures_are_committed():
    pictures = sorted((REPO_ROOT / "docs" / "cv_sod_examples").glob("*.png"))
    assert len(pictures) >= 3
