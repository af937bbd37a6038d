"""Stage 4, enhance: intensity normalisation and the thesis' edge enhancement.

Both run on the model-resolution crop, so their effect does not depend on the source resolution
(RSNA images range from ~500 to 2,000+ px), and a training cache of crops can be enhanced on the fly.
"""

from __future__ import annotations

import cv2
import numpy as np

# The thesis' sharpening kernel: identity plus 8x a Laplacian; sums to 1, so flat areas keep their value.
THESIS_KERNEL = np.array([[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]], dtype=np.float32)


def normalize(x: np.ndarray, region: np.ndarray | None = None, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """Stretch the hand's 1st..99th intensity percentiles to [0, 1] (exposure varies between sites).

    `region` selects the pixels that define the percentiles (default: the non-zero, i.e. unmasked ones);
    pixels outside it stay 0.
    """
    x = x.astype(np.float32)
    sel = region if region is not None else x > 0
    vals = x[sel]
    if vals.size < 16:
        return np.clip(x, 0.0, 1.0)
    lo, hi = np.percentile(vals, [lo_pct, hi_pct])
    out = np.clip((x - lo) / max(float(hi - lo), 1e-3), 0.0, 1.0)
    out[~sel] = 0.0
    return out


def sharpen(x: np.ndarray) -> np.ndarray:
    """The thesis' edge enhancement, clipped back to [0, 1] (the model input range)."""
    out = cv2.filter2D(x.astype(np.float32), -1, THESIS_KERNEL, borderType=cv2.BORDER_CONSTANT)
    return np.clip(out, 0.0, 1.0)
