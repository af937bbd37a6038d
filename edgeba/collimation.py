"""Cut a collimated radiograph to its exposed field before anything else looks at it.

A collimator (or a plate larger than the exposure) leaves a bright, unexposed frame around the film. The
regressor was fitted on films, not on that frame, and the U-Net's outline leaks along its edge: on the
stress suite's `collimation` the shipped model read val 5 months worse than clean (14.75 against 9.47,
session 12), while the same images cut to the field score as clean (train, 30 radiographs: 6.67 against
6.68; train/RESULTS.md, session 13).

The field is `hand.film_box`, the part of the image that differs from its border, when the frame outside it
is clearly brighter than the film just inside its edge. A film scanned with a black border, a small film on a
dark plate, a hand on a bright plate (whose box is the hand itself) or markers give no such contrast.
"""

from __future__ import annotations

import math

import numpy as np

from edgeba.hand import film_box

# Median grey outside the box minus the median of a ring RING wide just inside it. Chosen on train (the first
# 300 radiographs of stress.sample("train"), train/RESULTS.md session 13): clean 1 of 300 over it (RSNA 4253, a
# film with a real bright frame), the suite's collimation about 255 of 300; bright plate, dark borders, small on
# a plate, tight crop and markers 0 of 300.
MIN_FRAME_CONTRAST = 0.15
RING = 0.03  # fraction of the box's shorter side


def _frame_lines(line, limit: int, mid: float) -> int:
    """How many lines from a side inwards (`line(k)`, k = 0 at the side) have a median over `mid`, at most `limit`."""
    k = 0
    while k < limit and float(np.median(line(k))) > mid:
        k += 1
    return k


def field(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the exposed field inside a bright frame, or None when there is no such frame."""
    box = film_box(pixels)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    b = max(2, round(RING * min(y1 - y0, x1 - x0)))
    if min(y1 - y0, x1 - x0) <= 2 * b:
        return None
    outside = np.ones(pixels.shape, bool)
    outside[y0:y1, x0:x1] = False
    ring = np.zeros(pixels.shape, bool)
    ring[y0:y1, x0:x1] = True
    ring[y0 + b : y1 - b, x0 + b : x1 - b] = False
    frame, film = float(np.median(pixels[outside])), float(np.median(pixels[ring]))
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


def scaled_box(box: tuple[int, int, int, int], shape: tuple[int, int], to_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A field's box on an image of `shape` as a box on the same film at `to_shape`, shrunk inwards to whole pixels:
    a line partly in the frame is frame (one bright line at the film's edge moved an estimate by 1.7 months)."""
    y0, y1, x0, x1 = box
    sy, sx = to_shape[0] / shape[0], to_shape[1] / shape[1]
    return math.ceil(y0 * sy), max(math.ceil(y0 * sy) + 1, math.floor(y1 * sy)), math.ceil(x0 * sx), max(math.ceil(x0 * sx) + 1, math.floor(x1 * sx))


def cut(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    return np.ascontiguousarray(pixels[y0:y1, x0:x1])
