"""The real-photo evaluation set: complete, sourced, masks reproducible, metrics right."""

from __future__ import annotations

import cv2
import numpy as np

from training import cv_sod_real_photos
from training.cv_sod_data import REAL_PHOTOS_DIR


def test_every_photo_has_a_mask_a_source_and_a_licence():
    photos = sorted(p.stem for p in REAL_PHOTOS_DIR.glob("*.jpg"))
    assert len(photos) >= 10
    assert sorted(p.stem for p in (REAL_PHOTOS_DIR / "masks").glob("*.png")) == photos
    entries = cv_sod_real_photos.annotations()
    assert sorted(entries) == photos
    assert all(entry["source"] and entry["licence"] and len(entry["rect"]) == 4 for entry in entries.values())


def test_masks_are_what_grabcut_makes_from_the_annotations(tmp_path):
    names = ["orange"]  # box, foreground and background strokes: every step of the recipe
    cv_sod_real_photos.remake_masks(tmp_path, names)
    for name in names:
        made = cv2.imread(str(tmp_path / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        committed = cv2.imread(str(REAL_PHOTOS_DIR / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(made, committed)


def test_masks_hold_one_object_not_the_frame():
    for name, _, mask in cv_sod_real_photos.real_photos():
        assert 0.01 < mask.mean() < 0.85, name  # the rocket is 1.7% of its photo


def test_scores_of_a_perfect_an_inverted_and_a_flat_map():
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:40] = 1
    perfect = cv_sod_real_photos.score([mask * 255], [mask])
    assert perfect == {"mae": 0.0, "max_f_measure": 1.0, "iou_at_0_5": 1.0}
    inverted = cv_sod_real_photos.score([(1 - mask) * 255], [mask])
    assert inverted["mae"] == 1.0 and inverted["iou_at_0_5"] == 0.0
    flat = cv_sod_real_photos.score([np.full_like(mask, 127)], [mask])
    assert flat["iou_at_0_5"] == 0.0 and abs(flat["mae"] - 127 / 255) < 1e-3
