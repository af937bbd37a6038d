"""Put an oddly framed hand back into the frame a whole-image regressor was trained on.

A whole-image model (`preprocess.segment = False`) sees the letterboxed film, so where the hand sits
and how large it is change its answer: a hand at 30-60 % of a large plate, or tilted 45 degrees, is
outside everything it was fitted on (stress suite, shipped model: small_on_plate MAE 50 months,
+-45 degrees 22-24, against 8.6 clean). When the hand's outline shows such a framing, the image is
turned upright about the hand and cropped so the hand sits as in the median train radiograph. Framings
inside the train range are left exactly as they are.

The train range (U-Net masks of the 935 train radiographs, `cache/masks_unet`): the hand's box spans
62-99 % of the image height (1st-99th percentile; median 91 %), its bottom (the forearm) at the image's
bottom edge (median 99.9 %), tilted -14 to +28 degrees from fingers-up, in a frame 1.26x as high as wide.

Only an outline that passed QC moves the image, and not on a bright plate (see `reframe`). Chosen on
tune (the first 34-50 tune radiographs under the stress suite's transforms, TFLite, shipped model,
re-framing off / on): small on a plate MAE 42.7 / 15.5 (errors > 24 months 21 / 4 of 34), -45 degrees
16.4 / 6.9, +45 degrees 17.3 / 7.3, bright plate 18.0 / 18.0, collimation 11.6 / 11.6; clean, dark
borders, markers and tight crops untouched (none re-framed).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgeba.crop import upright_angle
from edgeba.segment import dilate_ellipse

MIN_HEIGHT = 0.62  # hand box height / image height below this: a small hand on a large plate
MAX_TILT = 24.0  # degrees from fingers-up beyond this: turned upright first (chosen on train, train/RESULTS.md session 13)
# After the quarter turns (edgeba/orient.py) a real hand is within 45 degrees of fingers-up; an outline
# tilted further is the U-Net tracing something else (tune: a collimation edge, estimates 60 months off).
MAX_TRUSTED_TILT = 60.0
TYPICAL_HEIGHT = 0.913  # median hand box height / frame height
TYPICAL_ASPECT = 1.263  # median frame height / width
TYPICAL_CX = 0.526  # median hand box centre, fraction of the frame width


@dataclass
class Reframed:
    pixels: np.ndarray
    mask: np.ndarray
    why: str  # what was atypical, for the prediction's warning
    source: np.ndarray | None = None  # the same frame cut from the source pixels, when given


def _on_grid(m: np.ndarray, shape: tuple[int, int], source_shape: tuple[int, int]) -> tuple[np.ndarray, float, float]:
    """The affine `m` (in `shape`'s pixels) for an image of `source_shape` showing the same film: its
    matrix and the output scale (x, y). Pixel centres map as an area resize maps them."""
    sy, sx = source_shape[0] / shape[0], source_shape[1] / shape[1]
    a = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])  # working px -> source px
    full = np.vstack([m, [0, 0, 1]])
    return (a @ full @ np.linalg.inv(a))[:2], sx, sy


def _surround_level(pixels: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The background right around the hand (a band outside its outline): what the new margins are
    filled with. Not the image's border, which on a collimated film is the bright unexposed edge.
    `box`: the mask's bounding box (cv2.boundingRect: x, y, w, h)."""
    bx, by, bw, bh = box
    k = max(3, round(0.05 * max(bh - 1, bw - 1)))
    # The band lies within k px of the mask's box: dilate only there (a small hand on a large plate,
    # the usual reason to re-frame, is a small part of the image). Same band, same median.
    y0, x0 = max(0, by - k), max(0, bx - k)
    y1, x1 = min(mask.shape[0], by + bh + k), min(mask.shape[1], bx + bw + k)
    near = mask[y0:y1, x0:x1]
    band = dilate_ellipse(near.astype(np.uint8), k) > near
    return float(np.median(pixels[y0:y1, x0:x1][band])) if band.any() else 0.0


def reframe(pixels: np.ndarray, mask: np.ndarray, source: np.ndarray | None = None, always: bool = False) -> Reframed | None:
    """The hand upright and framed like a typical train radiograph; None when it already is, or when
    the outline is not one to move the image by. Call it only with a mask that passed QC. `source`: the
    same film at a higher resolution (the file's pixels), framed the same way into `Reframed.source`.
    `always`: frame it even when it is neither small nor tilted (a cut of ours: edgeba/film.py)."""
    m8 = mask.astype(np.uint8, copy=False)
    box = cv2.boundingRect(m8)  # (x, y, w, h): the pixel extremes, as np.nonzero gives them
    if box[2] == 0:
        return None
    height = box[3] / mask.shape[0]
    tilt = upright_angle(mask)
    small, tilted = height < MIN_HEIGHT, abs(tilt) > MAX_TILT
    if not (small or tilted or always) or abs(tilt) > MAX_TRUSTED_TILT:
        return None
    fill = _surround_level(pixels, mask, box)
    if fill > float(np.median(pixels[mask > 0])):
        # Brighter around the hand than in it: a bright plate or collimation field, where the U-Net
        # outlines part of the hand (tune, bright plate: 6 of 31 re-framed, 4 of them worse, MAE 18.7 -> 20.7).
        return None
    mo = cv2.moments(m8, binaryImage=True)  # exact integer sums: the same centre as the pixels' mean
    center = (mo["m10"] / mo["m00"], mo["m01"] / mo["m00"])
    rot = cv2.getRotationMatrix2D(center, tilt if tilted else 0.0, 1.0)
    # The hand's box after the turn: from the mask's pixels, turned like the image. A linear map's extremes over
    # the pixels lie on their convex hull: only its vertices are turned (a full-resolution mask has ~10^5 pixels).
    hull = cv2.convexHull(cv2.findNonZero(m8)).reshape(-1, 2).astype(np.int64)
    xs, ys = hull[:, 0], hull[:, 1]
    pts = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64) @ rot.T
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0) + 1
    frame_h = (y1 - y0) / TYPICAL_HEIGHT
    frame_w = frame_h / TYPICAL_ASPECT
    left = (x0 + x1) / 2 - TYPICAL_CX * frame_w
    top = y1 - frame_h  # the forearm at the frame's bottom edge
    m = rot.copy()
    m[:, 2] -= (left, top)
    size = (max(1, round(frame_w)), max(1, round(frame_h)))
    # float64 resampling, then float32: the same pixels on every CPU (see segment.unet_input)
    out = cv2.warpAffine(pixels.astype(np.float64), m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=fill).astype(np.float32)
    out_mask = cv2.warpAffine(mask.astype(np.uint8), m, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    framed_source = None
    if source is not None and source.shape == pixels.shape and np.array_equal(source, pixels):  # the copy itself
        framed_source = out
    elif source is not None:
        ms, sx, sy = _on_grid(m, pixels.shape, source.shape)
        framed_source = cv2.warpAffine(source.astype(np.float64), ms, (max(1, round(frame_w * sx)), max(1, round(frame_h * sy))),
                                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill).astype(np.float32)
    why = " and ".join(([f"the hand spans {height:.0%} of the image height"] if small else [])
                       + ([f"it is tilted {tilt:+.0f} degrees"] if tilted else [])) or "the film was cut out of a larger plate"
    return Reframed(out, out_mask, why, framed_source)
