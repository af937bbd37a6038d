"""Is bone bright? The grey-scale polarity decided from evidence inside the hand, never the background.

A bright background says nothing: plates, collimation fields and flat scans are bright around a
correctly exposed hand. Inside the hand it is physics: the middle of a finger, palm or forearm holds
bone and more tissue than its rim, so it absorbs more X-rays and shows brighter in a radiograph and
darker in a negative. `hand_contrast` measures that (core minus rim) on a hand mask; the predictor
segments the image as loaded and, unless the contrast clearly says "bone bright", also its inverse,
and keeps the polarity whose own mask shows bone brighter than soft tissue. DICOM states its polarity
(PhotometricInterpretation), which io.py applies and nothing here overrides.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgeba.segment import dilate_ellipse, percentiles

WORK_SIDE = 320  # a finger is ~15 px wide here: enough for a centre line and two flanks
WINDOW = 0.06  # local thickness is measured over this fraction of the long side (about a finger's width)
CENTRE, FLANK = 0.85, (0.2, 0.5)  # depth / local thickness of a structure's centre line and of its flanks
CLEAR = 0.12  # |contrast| (grey levels of the stretched image) that settles the polarity; chosen on tune


def hand_contrast(pixels: np.ndarray, mask: np.ndarray) -> float:
    """Median grey along the centre lines of the hand's fingers, palm and forearm minus that of their
    flanks (image stretched to 1-99 %): > 0 when bone is bright. NaN when the mask has no such parts.

    Depth is relative to the local thickness (distance to the mask's edge / its maximum nearby), so a
    mask that overshoots the skin a little still puts the flanks on soft tissue, not on the background."""
    h, w = pixels.shape
    s = min(1.0, WORK_SIDE / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = cv2.resize(pixels.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    x, y, bw, bh = cv2.boundingRect(m)
    if bw == 0:
        return float("nan")
    # Only the mask's box has depth, and the maximum nearby sees only zeros outside it: bit for bit the same there.
    # (Not so the distances: computed on the box alone, some differ in the sixth decimal.)
    y0, x0, y1, x1 = y, x, y + bh, x + bw
    d = np.ascontiguousarray(cv2.distanceTransform(m, cv2.DIST_L2, 5)[y0:y1, x0:x1])
    k = max(2, round(WINDOW * max(size)))
    local = dilate_ellipse(d, k)  # the largest distance nearby: the local thickness
    r = np.where(local >= 2.0, d / np.maximum(local, 1e-6), 0.0)
    centre, flank = r >= CENTRE, (r > FLANK[0]) & (r <= FLANK[1])
    if centre.sum() < 20 or flank.sum() < 20:
        return float("nan")
    # The 1-99 % stretch of the whole image, applied to the pixels measured only (the same float64 arithmetic).
    lo, hi = (np.float64(v) for v in percentiles(img, (1, 99)))
    box = img[y0:y1, x0:x1]
    return float(np.median(np.clip((box[centre] - lo) / max(hi - lo, 1e-6), 0, 1))
                 - np.median(np.clip((box[flank] - lo) / max(hi - lo, 1e-6), 0, 1)))
