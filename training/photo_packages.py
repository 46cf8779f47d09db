"""Real photos for training cv_sod, from Debian packages (no image data set can be downloaded here).

- object cut-outs with an alpha channel: Tux Paint's stamps, most of them photos of real things
  (animals, fruit, tools, vehicles), so their masks are exact;
- backgrounds: KDE's and UKUI's wallpapers and OpenCV's sample pictures.

The packages are fetched once with `apt-get download` at pinned versions and unpacked into a
cache outside the repository; nothing from them is committed. Photos of the real-photo
evaluation set (`training/real_photos/`) are never read from here, not even as backgrounds.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

PACKAGES = {
    "tuxpaint-stamps-default": "2022.06.04-1",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "ukui-wallpapers": "20.04.3-1.1",
    "opencv-doc": "4.6.0+dfsg-12",
}
STAMPS_DIR = "tuxpaint-stamps-default/usr/share/tuxpaint/stamps"
# Drawings rather than photos, or not one object: left out of the foregrounds.
STAMP_PARTS_LEFT_OUT = ("cartoon", "symbols", "alphabets", "newyears", "roadsigns", "flags")
WALLPAPER_DIRS = ("plasma-workspace-wallpapers/usr/share/wallpapers", "ukui-wallpapers/usr/share/backgrounds")
OPENCV_DATA_DIR = "opencv-doc/usr/share/doc/opencv-doc/examples/data"
# OpenCV samples that are scenes (no single salient object) and so make honest backgrounds.
OPENCV_BACKGROUNDS = (
    "aero1.jpg", "aero3.jpg", "board.jpg", "building.jpg", "graf1.png", "graf3.png", "home.jpg",
    "leuvenA.jpg", "leuvenB.jpg", "left01.jpg", "left05.jpg", "right01.jpg", "stuff.jpg",
    "text_defocus.jpg", "starry_night.jpg", "sudoku.png", "notes.png",
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "model-serving" / "photo-packages"


def ensure_packages() -> Path:
    """Download and unpack the pinned packages once; return the folder they are unpacked in."""
    root = cache_dir()
    for name, version in PACKAGES.items():
        marker = root / f".{name}.done"
        if marker.exists() and marker.read_text() == version:
            continue
        with tempfile.TemporaryDirectory() as download:
            fetch = ["apt-get", "download", "-q", f"{name}={version}"]
            if subprocess.run(fetch, cwd=download, stdout=subprocess.DEVNULL).returncode != 0:
                # A machine whose package lists are older than the pinned version: refresh once.
                subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
                subprocess.run(fetch, cwd=download, check=True, stdout=subprocess.DEVNULL)
            (deb,) = Path(download).glob("*.deb")
            (root / name).mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root / name)], check=True)
        marker.write_text(version)
    return root


def stamp_files(root: Path) -> list[Path]:
    files = sorted((root / STAMPS_DIR).rglob("*.png"))
    return [f for f in files if not any(part in f.parts for part in STAMP_PARTS_LEFT_OUT)
            and not f.stem.endswith(("_mirror", "_thumb"))]


def background_files(root: Path, excluded_names: set[str]) -> list[Path]:
    """One file per wallpaper (its largest), OpenCV's scenes, minus anything in `excluded_names`
    (wallpaper folder or file names of the evaluation photos)."""
    files = []
    for folder in WALLPAPER_DIRS:
        for path in sorted((root / folder).iterdir()):
            if path.name in excluded_names:
                continue
            if path.is_dir():
                images = sorted((path / "contents" / "images").glob("*.*"), key=lambda p: p.stat().st_size)
                if images:
                    files.append(images[-1])
            elif path.suffix in (".jpg", ".png"):
                files.append(path)
    files += [root / OPENCV_DATA_DIR / name for name in OPENCV_BACKGROUNDS if name not in excluded_names]
    return files
