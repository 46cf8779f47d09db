"""OpenCV's classical saliency (opencv-contrib's `cv2.saliency`): the floor a learned model must clear.

opencv-contrib cannot share a venv with opencv-python-headless (both install `cv2`), so this
file runs in a venv of its own, `.venv/opencv-contrib`, made by `saliency_maps()` on first use.
It needs only numpy and cv2: run as a script, it writes one 8-bit map per photo and method.

    .venv/opencv-contrib/bin/python training/opencv_saliency.py PHOTOS_DIR OUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

METHODS = ("spectral_residual", "fine_grained")
OPENCV_CONTRIB = "opencv-contrib-python-headless==4.14.0.94"  # the same OpenCV as the services
VENV = Path(__file__).resolve().parent.parent / ".venv" / "opencv-contrib"


def _write_maps(photos_dir: Path, out_dir: Path) -> None:
    import cv2
    import numpy as np

    makers = {"spectral_residual": cv2.saliency.StaticSaliencySpectralResidual_create,
              "fine_grained": cv2.saliency.StaticSaliencyFineGrained_create}
    for photo in sorted(photos_dir.glob("*.jpg")):
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        for method, make in makers.items():
            ok, saliency = make().computeSaliency(image)
            if not ok:
                raise RuntimeError(f"{method} failed on {photo.name}")
            saliency = np.asarray(saliency, dtype=np.float32)
            span = float(saliency.max() - saliency.min())
            saliency = (saliency - saliency.min()) / span if span > 0 else saliency * 0
            (out_dir / method).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out_dir / method / f"{photo.stem}.png"), (saliency * 255).round().astype(np.uint8))


def saliency_maps(photos_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Compute both methods' maps for every photo in `photos_dir`; {method: folder of PNGs}."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", OPENCV_CONTRIB, "numpy"], check=True)
    subprocess.run([str(python), __file__, str(photos_dir), str(out_dir)], check=True)
    return {method: out_dir / method for method in METHODS}


if __name__ == "__main__":
    _write_maps(Path(sys.argv[1]), Path(sys.argv[2]))
