"""Visual QC: the radiograph with the hand outline and the regressor's crop box drawn on it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgeba.errors import EdgebaError

MAX_SIDE = 1024  # enough to judge a mask; keeps the PNG small


def draw(pixels: np.ndarray, mask: np.ndarray | None, margin: float, label: str, crops: bool = True) -> np.ndarray:
    """BGR uint8 image: mask outline green, crop box (rotated back to the image) orange when the model
    `crops` to the hand (a whole-image model sees the full frame: no box), label on top."""
    from edgeba.crop import canonical_crop

    h, w = pixels.shape
    s = min(1.0, MAX_SIDE / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    grey = cv2.resize((np.clip(pixels, 0, 1) * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    thick = max(1, round(max(size) / 400))
    if mask is not None and mask.any():
        small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 200, 0), thick)
    if crops and mask is not None and mask.any():
        # The box the regressor saw lives in the rotated work frame: map its corners back.
        _, info = canonical_crop(pixels, mask, 32, margin)
        x, y, bw, bh = info.box
        corners = np.array([[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]], np.float64)
        inv = cv2.invertAffineTransform(info.matrix)
        src = (corners @ inv[:, :2].T + inv[:, 2]) / info.scale * s
        cv2.polylines(out, [np.round(src).astype(np.int32)], True, (0, 140, 255), thick)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * thick, thick)
    cv2.rectangle(out, (0, 0), (tw + 20, th + base + 20), (0, 0, 0), cv2.FILLED)
    cv2.putText(out, label, (10, 10 + th), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * thick, (0, 255, 255), thick, cv2.LINE_AA)
    return out


def write(path: str | Path, image: np.ndarray) -> None:
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise EdgebaError(f"{p.name}: the overlay must be a .png file")
    if not p.parent.is_dir():
        raise EdgebaError(f"{p}: folder {p.parent} does not exist")
    try:
        ok = cv2.imwrite(str(p), image)
    except cv2.error:
        ok = False
    if not ok:
        raise EdgebaError(f"{p}: cannot write the overlay image")
