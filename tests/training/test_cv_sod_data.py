"""The composited training data, and that no evaluation photo reaches training."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from training import cv_sod_data, photo_packages
from training.cv_sod_real_photos import annotations, real_photos

GENERIC_PATH_PARTS = {"samples", "data", "wallpapers", "contents", "images", "1920x1080.jpg"}


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    small = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (24, 24), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32) - small.mean()
    return small / (np.linalg.norm(small) + 1e-6)


def test_examples_are_deterministic_and_have_objects():
    (a_image, a_mask), (b_image, b_mask) = cv_sod_data.make_example(7), cv_sod_data.make_example(7)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert a_image.shape == (320, 320, 3) and a_image.dtype == np.uint8
    covered = [cv_sod_data.make_example(seed)[1].mean() for seed in range(40)]
    assert sum(0 < share < 1 for share in covered) >= 36, covered


def test_object_photos_come_with_alpha_masks():
    stamps = cv_sod_data.stamps()
    assert len(stamps) >= 300
    for rgb, alpha in stamps[::25]:
        assert rgb.shape[:2] == alpha.shape and 0.0 <= alpha.min() and alpha.max() <= 1.0
        assert 0.05 < (alpha > 0.5).mean() <= 0.97


def test_every_evaluation_photo_is_excluded_by_name():
    root = photo_packages.ensure_packages()
    used = photo_packages.background_files(root, cv_sod_data.evaluation_exclusions())
    used_names = {path.name for path in used} | {path.parents[2].name for path in used}
    for name, entry in annotations().items():
        if "(Debian)" in entry["source"]:
            names = set(entry["source"].split(": ", 1)[1].split("/")) - GENERIC_PATH_PARTS
            assert names and not names & used_names, name
    assert not set(cv_sod_data.SKIMAGE_BACKGROUNDS) & {"astronaut", "chelsea", "coffee", "rocket"}


@pytest.mark.slow
def test_no_background_looks_like_an_evaluation_photo():
    """By content, not name: a renamed copy of a photo would be caught too."""
    photos = [thumbnail(rgb) for _, rgb, _ in real_photos()]
    for background in cv_sod_data.backgrounds():
        for candidate in (background, background[:, ::-1]):
            similarity = max(float((thumbnail(candidate) * photo).sum()) for photo in photos)
            assert similarity < 0.9, similarity
