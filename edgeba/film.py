"""Cut the radiograph out of what surrounds it before anything else looks at it.

Two surroundings the regressor never saw, each found by `hand.film_box` (the part of the image that differs from its
border) and cut off; from then on the pipeline treats the cut as if it were the file:

- a collimator's bright, unexposed frame around the exposed field (kind `field`): the U-Net's outline leaks along its
  edge, and on the stress suite's `collimation` the shipped model read tune 13.0 months off against 7.1 clean; cut
  to the field, 7.9 (train/RESULTS.md, session 13). The frame must be clearly brighter than the film just inside its
  edge: a film scanned with a black border, a hand on a bright plate (whose box is the hand itself) or markers give
  no such contrast.
- a plate much larger than the film (kind `small_film`): a hand at a quarter of the frame is seen by the U-Net at a few
  dozen of its 128 pixels, its outline fails QC, and scored on the whole plate it reads as an infant's (train, 4 of 30:
  -95 months on average). What differs from the plate covers under SMALL_FILM of the image; the cut keeps a margin
  around it and is then re-framed like a train film (edgeba/reframe.py).

The runtime (`Predictor`, hence batch, stress and the acquisition training cache) cuts; export's INT8 calibration and
parity feed clean RSNA films through one U-Net pass and do not (1 of 300 train films would be cut: RSNA 4253).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeba.hand import ZOOM_MARGIN, film_box

# Median grey outside the box minus the median of a ring RING wide just inside it. Chosen on train (the first
# 300 radiographs of stress.sample("train"), train/RESULTS.md session 13): clean 1 of 300 over it (RSNA 4253, a
# film with a real bright frame), the suite's collimation about 255 of 300; bright plate, dark borders, small on
# a plate, tight crop and markers 0 of 300.
MIN_FRAME_CONTRAST = 0.15
RING = 0.03  # fraction of the box's shorter side
# What differs from the plate covers under this share of the image: a small film on a plate. Chosen on train (the
# same 300 films): the suite's small_on_plate 239 of 300 under it; clean films 0 (their smallest box 42 %), dark
# borders 0 (31 %), bright plate 2, tight crops, markers and collimation 0.
SMALL_FILM = 0.3


def _frame_lines(line, limit: int, mid: float) -> int:
    """How many lines from a side inwards (`line(k)`, k = 0 at the side) have a median over `mid`, at most `limit`."""
    k = 0
    while k < limit and float(np.median(line(k))) > mid:
        k += 1
    return k


@dataclass(frozen=True)
class Cut:
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1) on the image it was found in
    kind: str  # "field" (a collimator's frame cut off) or "small_film" (a film cut out of a larger plate)


def find_cut(pixels: np.ndarray) -> Cut | None:
    """What to cut the image to, or None (almost every radiograph: nothing around the film)."""
    box = film_box(pixels)
    if box is None:
        return None
    if (f := _field(pixels, box)) is not None:
        return Cut(f, "field")
    if (b := _small_film(pixels.shape, box)) is not None:
        return Cut(b, "small_film")
    return None


def _field(pixels: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The exposed field inside a bright frame around `box`, or None when the frame is not clearly brighter than the
    film just inside its edge."""
    y0, y1, x0, x1 = box
    b = max(2, round(RING * min(y1 - y0, x1 - x0)))
    if min(y1 - y0, x1 - x0) <= 2 * b:
        return None
    h, w = pixels.shape
    frame = float(np.median(_between(pixels, (0, h, 0, w), box)))
    film = float(np.median(_between(pixels, box, (y0 + b, y1 - b, x0 + b, x1 - b))))
    if frame - film <= MIN_FRAME_CONTRAST:
        return None
    # film_box's blur reaches past the field's edge, and the collimator's penumbra is bright: the lines along
    # each side that are still more frame than film (median over the midway grey) are cut off too, up to the ring.
    mid = (frame + film) / 2
    y0 += _frame_lines(lambda k: pixels[y0 + k, x0:x1], b, mid)
    y1 -= _frame_lines(lambda k: pixels[y1 - 1 - k, x0:x1], b, mid)
    x0 += _frame_lines(lambda k: pixels[y0:y1, x0 + k], b, mid)
    x1 -= _frame_lines(lambda k: pixels[y0:y1, x1 - 1 - k], b, mid)
    return y0, y1, x0, x1


def _between(pixels: np.ndarray, outer: tuple[int, int, int, int], inner: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels inside box `outer` and outside box `inner` (which lies within it), flat: four strips, no image-sized mask."""
    (oy0, oy1, ox0, ox1), (iy0, iy1, ix0, ix1) = outer, inner
    return np.concatenate([pixels[oy0:iy0, ox0:ox1].ravel(), pixels[iy1:oy1, ox0:ox1].ravel(),
                           pixels[iy0:iy1, ox0:ix0].ravel(), pixels[iy0:iy1, ix1:ox1].ravel()])


def _small_film(shape: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """`box` grown by ZOOM_MARGIN of its longer side on each side (clipped to the image) when it covers under
    SMALL_FILM of the image, else None."""
    y0, y1, x0, x1 = box
    h, w = shape
    if (y1 - y0) * (x1 - x0) >= SMALL_FILM * h * w:
        return None
    pad = ZOOM_MARGIN * max(y1 - y0, x1 - x0)
    return max(0, math.floor(y0 - pad)), min(h, math.ceil(y1 + pad)), max(0, math.floor(x0 - pad)), min(w, math.ceil(x1 + pad))


def scaled_box(box: tuple[int, int, int, int], shape: tuple[int, int], to_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A cut's box on an image of `shape` as a box on the same film at `to_shape`, shrunk inwards to whole pixels:
    a line partly in a collimator's frame is frame (one bright line at the film's edge moved an estimate by 1.7 months)."""
    y0, y1, x0, x1 = box
    sy, sx = to_shape[0] / shape[0], to_shape[1] / shape[1]
    return math.ceil(y0 * sy), max(math.ceil(y0 * sy) + 1, math.floor(y1 * sy)), math.ceil(x0 * sx), max(math.ceil(x0 * sx) + 1, math.floor(x1 * sx))


def cut(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    return np.ascontiguousarray(pixels[y0:y1, x0:x1])
