"""Training images for cv_sod: real objects cut and pasted onto real backgrounds, with exact masks.

No saliency data set can be downloaded on these machines, so examples are composited the way
photos look: one to three photographed objects (Tux Paint's stamps, whose alpha channel is the
mask) placed with a centre bias on a crop of a wallpaper or sample scene that is often blurred
(depth of field), then colour, light, noise and JPEG artefacts over the whole. A share of the
objects are drawn shapes (ellipses, polygons, blobs) filled with texture, so the model does not
learn the stamps' look alone. None of the real-photo evaluation set is used here, not even as a
background: `evaluation_exclusions()` names them and `photo_packages` leaves them out.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np

from training import photo_packages

SIZE = 320
REAL_PHOTOS_DIR = Path(__file__).parent / "real_photos"
# scikit-image's bundled pictures that are textures or scenes; its object photos (astronaut,
# chelsea, coffee, rocket) are in the evaluation set, camera and coins hold salient objects.
SKIMAGE_BACKGROUNDS = ["brick", "grass", "gravel", "hubble_deep_field", "retina", "moon", "text", "page",
                       "immunohistochemistry"]
BACKGROUND_MAX_SIDE = 1024
STAMP_MAX_SIDE = 400
DECODED_VERSION = 1  # bump when what backgrounds() or stamps() return changes


def evaluation_exclusions() -> set[str]:
    """File and folder names of the evaluation photos' sources, which training must not read."""
    annotations = json.loads((REAL_PHOTOS_DIR / "annotations.json").read_text(encoding="utf-8"))
    names = set()
    for entry in annotations.values():  # "package: path/in/package", or a library's function
        names.update(Path(entry["source"].split(": ", 1)[1]).parts)
    return names


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    scale = max_side / max(image.shape[:2])
    if scale >= 1:
        return image
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def _cached(name: str, load) -> list[np.ndarray]:
    """Decoding 450 PNGs (some 5K wallpapers) takes ~20 s: keep the decoded arrays beside the
    packages they came from (plain .npz arrays, no pickle), rebuilt when the code says so."""
    path = photo_packages.ensure_packages() / f"{name}-v{DECODED_VERSION}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return [stored[f"a{i}"] for i in range(len(stored.files))]
    arrays = load()
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **{f"a{i}": array for i, array in enumerate(arrays)})
    partial.replace(path)
    return arrays


@functools.cache
def backgrounds() -> tuple[np.ndarray, ...]:
    """Every background as 8-bit RGB, at most 1024 px on a side, loaded once."""
    return tuple(_cached("backgrounds", _load_backgrounds))


def _load_backgrounds() -> list[np.ndarray]:
    from skimage import data

    root = photo_packages.ensure_packages()
    images = []
    for path in photo_packages.background_files(root, evaluation_exclusions()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            images.append(_shrink(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), BACKGROUND_MAX_SIDE))
    for name in SKIMAGE_BACKGROUNDS:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        images.append(_shrink(np.ascontiguousarray(image[:, :, :3]).astype(np.uint8), BACKGROUND_MAX_SIDE))
    return images


@functools.cache
def stamps() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(RGB uint8, alpha float32 0..1) of each photographed object, cropped to its alpha."""
    rgba = _cached("stamps", _load_stamps)
    return tuple((image[:, :, :3], image[:, :, 3].astype(np.float32) / 255) for image in rgba)


def _load_stamps() -> list[np.ndarray]:
    root = photo_packages.ensure_packages()
    out = []
    for path in photo_packages.stamp_files(root):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.ndim != 3 or image.shape[2] != 4:
            continue
        alpha = image[:, :, 3]
        ys, xs = np.nonzero(alpha > 127)
        if len(ys) < 400:
            continue
        image = image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        # Objects that fill their box (a flat rectangle) teach nothing about outlines.
        if (image[:, :, 3] > 127).mean() > 0.97:
            continue
        out.append(cv2.cvtColor(_shrink(image, STAMP_MAX_SIDE), cv2.COLOR_BGRA2RGBA))
    return out


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A non-photo fill: gradient, stripes, checks or blurred noise, in two random colours."""
    a, b = _random_colour(rng), _random_colour(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient
        angle = rng.uniform(0, np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    elif kind == 1:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 60)
        t = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    elif kind == 2:  # checks
        cell = int(rng.integers(8, 48))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:  # smooth noise
        noise = rng.random((max(2, height // 16), max(2, width // 16))).astype(np.float32)
        t = np.clip(cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
    return a * (1 - t[..., None]) + b * t[..., None]


def _crop(rng: np.random.Generator, image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A random crop of `image` at a random zoom, resized to height x width, maybe mirrored."""
    ih, iw = image.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    side = min(ih, iw * height / width) * scale
    ch, cw = max(8, int(side)), max(8, int(side * width / height))
    y, x = rng.integers(0, ih - ch + 1), rng.integers(0, iw - cw + 1)
    crop = image[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    choice = rng.random()
    if choice < 0.75:
        pool = backgrounds()
        image = _crop(rng, pool[rng.integers(len(pool))], SIZE, SIZE)
    elif choice < 0.93:
        image = _texture(rng, SIZE, SIZE)
    else:
        image = np.full((SIZE, SIZE, 3), _random_colour(rng), dtype=np.float32)
    if rng.random() < 0.6:  # depth of field: the object is in focus, what is behind it is not
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(1.0, 6.0))
    return image


def _placement(rng: np.random.Generator, height: int, width: int) -> tuple[int, int]:
    """Top-left corner of an object, centred on a point drawn with photographers' centre bias;
    objects may run off the frame as close-ups do."""
    cy = np.clip(rng.normal(0.5, 0.17), 0.1, 0.9) * SIZE
    cx = np.clip(rng.normal(0.5, 0.2), 0.1, 0.9) * SIZE
    return int(cy - height / 2), int(cx - width / 2)


def _paste(canvas: np.ndarray, truth: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, top: int, left: int) -> None:
    """Alpha-blend `rgb` at (top, left), clipped to the canvas; the mask is alpha > 0.5."""
    h, w = alpha.shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, SIZE), min(left + w, SIZE)
    if y0 >= y1 or x0 >= x1:
        return
    a = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
    region = canvas[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] = region * (1 - a) + rgb[y0 - top : y1 - top, x0 - left : x1 - left] * a
    truth[y0:y1, x0:x1] |= (a[..., 0] > 0.5).astype(np.uint8)


def _jitter_object(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Light, contrast and hue of one object, so stamps do not all look like studio shots."""
    rgb = rgb.astype(np.float32) * rng.uniform(0.7, 1.25) + rng.uniform(-25, 25)
    if rng.random() < 0.3:
        hsv = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + int(rng.integers(-12, 13))) % 180
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    return rgb


def _stamp_object(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pool = stamps()
    rgb, alpha = pool[rng.integers(len(pool))]
    # Size as a share of the frame's longer side: small far objects to close-ups.
    side = rng.choice([rng.uniform(0.2, 0.5), rng.uniform(0.45, 0.8), rng.uniform(0.75, 1.1)], p=[0.25, 0.45, 0.3])
    scale = side * SIZE / max(alpha.shape)
    if rng.random() < 0.5:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    angle = rng.normal(0, 10)
    h, w = alpha.shape
    out_w, out_h = max(2, int(w * scale * 1.1)), max(2, int(h * scale * 1.1))
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)  # about the centre, then centred
    matrix[0, 2] += out_w / 2 - w / 2
    matrix[1, 2] += out_h / 2 - h / 2
    rgb = cv2.warpAffine(_jitter_object(rng, rgb), matrix, (out_w, out_h), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(np.ascontiguousarray(alpha), matrix, (out_w, out_h), flags=cv2.INTER_LINEAR)
    return rgb, alpha


def _shape_mask(rng: np.random.Generator) -> np.ndarray:
    """A drawn silhouette: ellipse, rotated rectangle, polygon, star or smooth blob."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    radius = rng.uniform(0.08, 0.3) * SIZE
    cy, cx = rng.uniform(radius * 0.6, SIZE - radius * 0.6, size=2)
    kind = rng.integers(5)
    if kind == 0:
        axes = (int(radius), int(radius * rng.uniform(0.4, 1.0)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    elif kind == 1:
        box = ((cx, cy), (radius * 2, radius * 2 * rng.uniform(0.3, 1.0)), rng.uniform(0, 180))
        cv2.fillPoly(mask, [cv2.boxPoints(box).astype(np.int32)], 255)
    else:
        n = {2: int(rng.integers(3, 9)), 3: int(rng.integers(5, 9)) * 2, 4: 64}[int(kind)]
        angles = np.sort(rng.uniform(0, 2 * np.pi, n)) if kind == 2 else np.linspace(0, 2 * np.pi, n, endpoint=False)
        if kind == 2:
            radii = radius * rng.uniform(0.6, 1.0, n)
        elif kind == 3:
            radii = radius * np.where(np.arange(n) % 2 == 0, 1.0, rng.uniform(0.35, 0.7))
        else:
            phases, amps = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0, 0.25, 3)
            radii = radius * (1 + sum(a * np.sin((k + 2) * angles + p) for k, (a, p) in enumerate(zip(amps, phases))))
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [points.astype(np.int32)], 255)
    return mask


def _drawn_object(rng: np.random.Generator, canvas: np.ndarray, truth: np.ndarray) -> None:
    mask = _shape_mask(rng)
    inside = mask > 0
    if not inside.any():
        return
    if rng.random() < 0.5:
        fill = _texture(rng, SIZE, SIZE)
    else:
        behind = canvas[inside].mean(axis=0)
        colour = _random_colour(rng)
        for _ in range(20):
            if np.linalg.norm(colour - behind) > 90:
                break
            colour = _random_colour(rng)
        fill = colour * (0.85 + 0.3 * _texture(rng, SIZE, SIZE).mean(axis=-1, keepdims=True) / 255.0)
    canvas[inside] = fill[inside]
    truth[inside] = 1


def _camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """What a camera and its file format add: softness, exposure, gamma, sensor noise, JPEG."""
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.2))
    image = image * rng.uniform(0.75, 1.2) + rng.uniform(-20, 20)
    image = 255 * (np.clip(image, 0, 255) / 255) ** rng.uniform(0.75, 1.35)
    image = image + rng.normal(0, rng.uniform(0, 8), image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 95))])
        image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return image


def make_example(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 [320,320,3], mask uint8 {0,1} [320,320]) pair, fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    canvas = _background(rng)
    truth = np.zeros((SIZE, SIZE), dtype=np.uint8)
    count = int(rng.choice([1, 2, 3], p=[0.7, 0.22, 0.08]))
    for _ in range(count):
        if rng.random() < 0.8:
            rgb, alpha = _stamp_object(rng)
            _paste(canvas, truth, rgb, alpha, *_placement(rng, *alpha.shape))
        else:
            _drawn_object(rng, canvas, truth)
    return _camera(rng, canvas), truth


def make_dataset(first_seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` examples with seeds first_seed, first_seed+1, ...: disjoint ranges never overlap."""
    pairs = [make_example(first_seed + i) for i in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
