"""Smooth grey images with no hand (gradients, vignettes, smooth noise, sine; with grain or a narrow
range; 300 to 2000 px) through every installed backend: how many are scored instead of refused.

    python benchmarks/non_hands.py [BACKEND ...]      (default: every installed backend)

Synthetic images only (nothing from RSNA). Prints each scored image and a count per backend.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edgeba.backends import installed
from edgeba.errors import EdgebaError
from edgeba.predictor import Predictor

SIZES = ((1000, 800), (512, 512), (300, 400), (2000, 1600), (800, 1200))


def images(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for h, w in SIZES:
        v, u = np.mgrid[0:h, 0:w].astype(np.float32)
        u, v = u / w, v / h
        r = np.sqrt((u - 0.5) ** 2 + (v - 0.5) ** 2) / 0.7071
        base = {
            "horizontal": u, "vertical": v, "diagonal": (u + v) / 2, "antidiagonal": (u + 1 - v) / 2,
            "radial": 1 - r, "radial_inverse": r, "vignette": np.clip(1 - r**2, 0, 1),
            "off_centre": 1 - np.clip(np.sqrt((u - 0.3) ** 2 + (v - 0.7) ** 2), 0, 1),
            "smooth_2d": cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), min(h, w) / 8),
            "saddle": (u - 0.5) * (v - 0.5), "sine": np.sin(2 * np.pi * u) * np.cos(np.pi * v),
            "clipped_ramp": np.clip((u - 0.3) * 3, 0, 1), "blob": np.exp(-(((u - 0.5) / 0.2) ** 2 + ((v - 0.6) / 0.3) ** 2)),
        }
        for name, g in base.items():
            g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
            out[f"{name}_{h}x{w}"] = g
            out[f"{name}_grain_{h}x{w}"] = np.clip(g + rng.normal(0, 0.03, g.shape), 0, 1)
            out[f"{name}_narrow_{h}x{w}"] = 0.3 + 0.3 * g
    return out


def main(backends: list[str]) -> int:
    imgs = images()
    with tempfile.TemporaryDirectory(prefix="edgeba-non-hands-") as tmp:
        for name, g in imgs.items():
            cv2.imwrite(str(Path(tmp) / f"{name}.png"), np.round(np.clip(g, 0, 1) * 255).astype(np.uint8))
        for backend in backends:
            predictor, scored = Predictor(None, backend), 0
            for name in imgs:
                try:
                    p = predictor.predict(Path(tmp) / f"{name}.png", "male")
                except EdgebaError:
                    continue
                scored += 1
                print(f"{backend} {name}: scored {p.bone_age_months:.1f} months, mask QC ok {p.mask_quality['ok']}, warnings {p.warnings}")
            print(f"{backend}: {scored} of {len(imgs)} scored", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or installed()))
