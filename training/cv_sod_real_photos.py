"""Score cv_sod on real photos it was never trained on, beside OpenCV's classical saliency.

The set is `training/real_photos/`: photos from packages that ship them, each with a mask made
once with GrabCut from a hand-placed box and strokes (`annotations.json`, `--remake-masks`), and
checked by eye. Metrics are the field's usual: MAE, max F-measure (pysodmetrics) and mean IoU of
the map cut at 0.5.

    python -m training.cv_sod_real_photos --model tfserving/models/cv_sod/1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

from model_preprocessing.image import mask_to_image, model_input, to_rgb8
from training import opencv_saliency
from training.cv_sod_data import REAL_PHOTOS_DIR


def real_photos() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB uint8, mask uint8 {0,1}) of every evaluation photo."""
    out = []
    for photo in sorted(REAL_PHOTOS_DIR.glob("*.jpg")):
        rgb = to_rgb8(cv2.imread(str(photo), cv2.IMREAD_COLOR))
        mask = cv2.imread(str(REAL_PHOTOS_DIR / "masks" / f"{photo.stem}.png"), cv2.IMREAD_GRAYSCALE)
        out.append((photo.stem, rgb, (mask > 127).astype(np.uint8)))
    return out


def score(maps: list[np.ndarray], masks: list[np.ndarray]) -> dict:
    """MAE, max F-measure and mean IoU at 0.5 of 8-bit saliency maps against {0,1} masks."""
    import py_sod_metrics

    mae, fm = py_sod_metrics.MAE(), py_sod_metrics.Fmeasure()
    ious = []
    for saliency, mask in zip(maps, masks):
        for metric in (mae, fm):
            metric.step(pred=saliency, gt=mask * 255)
        cut = saliency >= 128
        union = np.logical_or(cut, mask).sum()
        ious.append(np.logical_and(cut, mask).sum() / union if union else 1.0)
    return {
        "mae": round(float(mae.get_results()["mae"]), 4),
        "max_f_measure": round(float(fm.get_results()["fm"]["curve"].max()), 4),
        "iou_at_0_5": round(float(np.mean(ious)), 4),
    }


def model_maps(predict, photos) -> list[np.ndarray]:
    """The served path: photo -> 320x320 model input -> img_out -> mask at the photo's size.
    `predict` takes a float32 batch [n, 320, 320, 3] and returns [n, 320, 320, 1] in [0, 1]."""
    maps = []
    for _, rgb, _ in photos:
        saliency = np.asarray(predict(model_input(rgb)[None]))[0]
        maps.append(mask_to_image(saliency, *rgb.shape[:2]))
    return maps


def baseline_maps(photos) -> dict[str, list[np.ndarray]]:
    with tempfile.TemporaryDirectory() as out:
        folders = opencv_saliency.saliency_maps(REAL_PHOTOS_DIR, Path(out))
        return {method: [cv2.imread(str(folder / f"{name}.png"), cv2.IMREAD_GRAYSCALE) for name, _, _ in photos]
                for method, folder in folders.items()}


def evaluate(predict) -> dict:
    """{"cv_sod": metrics, "spectral_residual": ..., "fine_grained": ..., "photos": n}."""
    photos = real_photos()
    masks = [mask for _, _, mask in photos]
    results = {"cv_sod": score(model_maps(predict, photos), masks)}
    for method, maps in baseline_maps(photos).items():
        results[f"opencv_{method}"] = score(maps, masks)
    results["photos"] = len(photos)
    return results


def annotations() -> dict[str, dict]:
    """Per photo: its source, licence, and the box and strokes its mask was made from."""
    return json.loads((REAL_PHOTOS_DIR / "annotations.json").read_text(encoding="utf-8"))


def remake_masks(out_dir: Path = REAL_PHOTOS_DIR / "masks", names: list[str] | None = None) -> None:
    """Re-run GrabCut from the committed boxes and strokes (fixed seed): how the masks were made."""
    for name, entry in annotations().items():
        if names is not None and name not in names:
            continue
        cv2.setRNGSeed(0)
        image = cv2.imread(str(REAL_PHOTOS_DIR / f"{name}.jpg"), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        x0, y0, x1, y1 = entry["rect"]
        rect = (int(x0 * w), int(y0 * h), int((x1 - x0) * w) - 1, int((y1 - y0) * h) - 1)
        mask = np.zeros((h, w), np.uint8)
        models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(image, mask, rect, *models, 8, cv2.GC_INIT_WITH_RECT)
        strokes = [(box, cv2.GC_BGD) for box in entry.get("bg", [])]
        strokes += [(box, cv2.GC_FGD) for box in entry.get("fg", [])]
        for (a, b, c, d), value in strokes:
            mask[int(b * h) : int(d * h), int(a * w) : int(c * w)] = value
        if strokes:
            cv2.grabCut(image, mask, None, *models, 8, cv2.GC_INIT_WITH_MASK)
        foreground = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
        cv2.imwrite(str(out_dir / f"{name}.png"), foreground.astype(np.uint8) * 255)


def saved_model_predictor(model_dir: str):
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    return lambda batch: serve(img_in=tf.constant(batch))["img_out"].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a cv_sod SavedModel version folder")
    parser.add_argument("--remake-masks", action="store_true", help="re-run GrabCut from annotations.json")
    args = parser.parse_args()
    if args.remake_masks:
        remake_masks()
    if args.model:
        print(json.dumps(evaluate(saved_model_predictor(args.model)), indent=2))


if __name__ == "__main__":
    main()
