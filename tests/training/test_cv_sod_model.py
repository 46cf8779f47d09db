"""The exported `cv_sod` SavedModel: its signature, and how it does on real photos it never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from model_preprocessing.image import model_input
from tests.conftest import MODEL_REPOSITORY, REPO_ROOT
from training import cv_sod_real_photos
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


@pytest.mark.slow
def test_finds_the_object_in_real_photos_better_than_opencv(serve):
    """The issue's acceptance, measured on the committed model through its signature."""
    results = cv_sod_real_photos.evaluate(lambda batch: serve(img_in=tf.constant(batch))["img_out"].numpy())
    ours = results["cv_sod"]
    assert ours["iou_at_0_5"] >= 0.5 and ours["max_f_measure"] >= 0.6, ours
    for baseline in ("opencv_spectral_residual", "opencv_fine_grained"):
        theirs = results[baseline]
        assert ours["mae"] < theirs["mae"], (baseline, results)
        assert ours["max_f_measure"] > theirs["max_f_measure"], (baseline, results)
        assert ours["iou_at_0_5"] > theirs["iou_at_0_5"], (baseline, results)


def test_metrics_file_records_both_held_out_sets():
    metrics = json.loads((MODEL_REPOSITORY / "cv_sod" / "metrics.v1.json").read_text())
    assert set(metrics) >= {"mae", "max_f_measure", "s_measure", "held_out_images", "real_photos"}
    assert set(metrics["real_photos"]) >= {"cv_sod", "opencv_spectral_residual", "opencv_fine_grained"}


def test_example_pictures_are_evaluation_photos():
    pictures = sorted(p.stem for p in (REPO_ROOT / "docs" / "cv_sod_examples").glob("*.png"))
    assert len(pictures) >= 3
    assert set(pictures) <= set(cv_sod_real_photos.annotations()), "examples must be photos it was not trained on"
