"""Stage 3, crop: mask out the background, rotate the hand to fingers-up, crop it, letterbox it.

Order matters and is the same everywhere (training cache, export calibration, inference):
rotate the whole image about the hand's centroid, then crop to the rotated mask, so that no part of
the hand is cut off by a crop taken before rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MAX_WORK_SIDE = 1024  # rotate/crop at most at this resolution: the model sees <= 384 px anyway


@dataclass
class CropInfo:
    angle_deg: float  # counter-clockwise rotation applied to make the hand upright
    flipped: bool  # True when an extra 180 degrees was needed (fingers were pointing down)
    box: tuple[int, int, int, int]  # x, y, w, h of the crop in the rotated frame (work resolution)
    matrix: np.ndarray  # 2x3 affine: source pixel (work resolution) -> rotated frame
    scale: float  # work resolution / source resolution


def letterbox(img: np.ndarray, size: int, interpolation=cv2.INTER_AREA) -> tuple[np.ndarray, float, int, int]:
    """Aspect-preserving resize into a size x size zero canvas, centred. Returns (canvas, scale, x0, y0)."""
    h, w = img.shape[:2]
    s = size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    interp = interpolation if s < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(img, (nw, nh), interpolation=interp)
    canvas = np.zeros((size, size), dtype=img.dtype)
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    canvas[y0 : y0 + nh, x0 : x0 + nw] = resized
    return canvas, s, x0, y0


def main_axis_angle(mask: np.ndarray) -> float:
    """Angle (degrees) by which to rotate counter-clockwise so the mask's main axis is vertical."""
    m = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    if m["m00"] == 0:
        return 0.0
    # Orientation of the major axis w.r.t. the x axis (image coordinates, y down).
    theta = 0.5 * np.degrees(np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"]))
    # cv2 rotates counter-clockwise on screen for positive angles; y-down flips the sign.
    angle = theta + 90.0 if theta < 0 else theta - 90.0
    return float(angle)


def _fingers_down(mask: np.ndarray) -> bool:
    """Fingers make several separate runs per row; the wrist/forearm one. Compare both ends."""
    rows = np.where(mask.any(axis=1))[0]
    if rows.size < 8:
        return False
    top, bottom = rows[0], rows[-1]
    band = max(1, (bottom - top) // 4)

    def runs(r0: int, r1: int) -> float:
        m = mask[r0:r1].astype(np.int8)
        return float((np.diff(m, axis=1) == 1).sum(axis=1).mean())

    return runs(bottom - band, bottom + 1) > runs(top, top + band) + 0.5


def _rotate(img: np.ndarray, matrix: np.ndarray, out_wh: tuple[int, int], interp) -> np.ndarray:
    return cv2.warpAffine(img, matrix, out_wh, flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _rotation(shape: tuple[int, int], center: tuple[float, float], angle: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Rotation about `center` on a canvas big enough to hold the whole rotated image."""
    h, w = shape
    mat = cv2.getRotationMatrix2D(center, angle, 1.0)
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], dtype=np.float64) @ mat.T
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    mat[:, 2] -= lo
    return mat, (int(np.ceil(hi[0] - lo[0])), int(np.ceil(hi[1] - lo[1])))


def _upright(mask: np.ndarray, center: tuple[float, float]):
    """The rotation about `center` that puts the hand upright: (angle, flipped, matrix, out_wh, rotated mask)."""
    angle = main_axis_angle(mask)
    mat, out_wh = _rotation(mask.shape, center, angle)
    rmask = _rotate(mask, mat, out_wh, cv2.INTER_NEAREST)
    flipped = _fingers_down(rmask)
    if flipped:
        angle += 180.0
        mat, out_wh = _rotation(mask.shape, center, angle)
        rmask = _rotate(mask, mat, out_wh, cv2.INTER_NEAREST)
    return angle, flipped, mat, out_wh, rmask


def upright_angle(mask: np.ndarray, work_side: int = 256) -> float:
    """Degrees (counter-clockwise, in (-180, 180]) that would turn this hand mask fingers-up, as
    canonical_crop turns it; 0 for an empty mask. Judged on a copy at most `work_side` px (cheap)."""
    s = min(1.0, work_side / max(mask.shape))
    m = np.ascontiguousarray(mask.view(np.uint8) if mask.dtype == bool else mask)
    if m.dtype != np.uint8:
        m = (m > 0).astype(np.uint8)
    if s < 1.0:  # nearest neighbours first: the same pixels picked, a sixteenth of them to compare with 0
        m = cv2.resize(m, (max(1, round(m.shape[1] * s)), max(1, round(m.shape[0] * s))), interpolation=cv2.INTER_NEAREST)
    m = (m > 0).astype(np.uint8)
    mo = cv2.moments(m, binaryImage=True)
    if mo["m00"] == 0:
        return 0.0
    angle = _upright(m, (mo["m10"] / mo["m00"], mo["m01"] / mo["m00"]))[0]
    return float((angle + 180.0) % 360.0 - 180.0)


def _work_dtype(pixels: np.ndarray):
    """float64 stays float64 (edgeba.preprocess resamples there so rounding is platform-stable); else float32."""
    return np.float64 if pixels.dtype == np.float64 else np.float32


def canonical_crop(pixels: np.ndarray, mask: np.ndarray, size: int, margin: float = 0.04) -> tuple[np.ndarray, CropInfo]:
    """Masked, upright, tightly cropped hand letterboxed to size x size (float32, or float64 for a float64
    image; background 0)."""
    dtype = _work_dtype(pixels)
    scale = min(1.0, MAX_WORK_SIDE / max(pixels.shape))
    if scale < 1.0:
        wh = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
        pixels = cv2.resize(pixels, wh, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), wh, interpolation=cv2.INTER_NEAREST)
    mask = (mask > 0).astype(np.uint8)
    m = cv2.moments(mask, binaryImage=True)
    if m["m00"] == 0:
        raise ValueError("empty mask")
    center = (m["m10"] / m["m00"], m["m01"] / m["m00"])
    angle, flipped, mat, out_wh, rmask = _upright(mask, center)
    rimg = _rotate(pixels.astype(dtype, copy=False), mat, out_wh, cv2.INTER_LINEAR) * rmask
    x, y, w, h = cv2.boundingRect(rmask)
    pad = int(round(margin * max(w, h)))
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(rimg.shape[1], x + w + pad), min(rimg.shape[0], y + h + pad)
    crop, _, _, _ = letterbox(rimg[y0:y1, x0:x1], size)
    return crop.astype(dtype, copy=False), CropInfo(angle, flipped, (x0, y0, x1 - x0, y1 - y0), mat, scale)


def plain_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """The no-segmentation ablation: the whole image letterboxed, nothing masked or rotated."""
    return letterbox(pixels.astype(_work_dtype(pixels), copy=False), size)[0]
