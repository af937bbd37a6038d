"""Mask QC: does a binary mask look like one hand (plus forearm) on a radiograph?

Used three ways: to pick among bootstrap candidates, to keep masks in the U-Net self-training loop,
and at inference to refuse a failed segmentation instead of silently cropping garbage.
Everything runs on a copy shrunk to QC_SIDE px, so a call costs about a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

QC_SIDE = 256  # shape checks do not need more resolution than this

# Limits chosen on train/tune images (see train/SEGMENTATION.md).
MIN_AREA, MAX_AREA = 0.08, 0.75  # hand area / image area
MIN_SOLIDITY, MAX_SOLIDITY = 0.35, 0.90  # a hand with spread fingers is far from convex, a plate is convex
MIN_FINGER_GAPS = 3  # deep concavities between fingers (4 for five spread fingers)
MAX_BORDER_RATIO = 0.9  # mask length on the main border side / widest width of the mask: a forearm
MAX_BORDER_SECOND = 0.3  # same on a second (adjacent) side: a fingertip or the wrist in a corner
MAX_STRAIGHT = 0.45  # longest straight contour run inside the image / image side: a collimation edge
MAX_SECOND_COMPONENT = 0.02  # area of any other component / main component


@dataclass
class MaskQuality:
    ok: bool
    metrics: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def _shrink(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    s = QC_SIDE / max(h, w)
    if s >= 1:
        return (mask > 0).astype(np.uint8)
    small = cv2.resize((mask > 0).astype(np.float32), (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return (small >= 0.5).astype(np.uint8)


def _finger_gaps(contour: np.ndarray, scale: float) -> int:
    """Convexity defects deeper than a finger-gap depth (relative to the hand size)."""
    hull = cv2.convexHull(contour, returnPoints=False)
    if hull is None or len(hull) < 4:
        return 0
    try:
        defects = cv2.convexityDefects(contour, hull)
    except cv2.error:  # self-intersecting hull indices on degenerate contours
        return 0
    if defects is None:
        return 0
    depth = defects.reshape(-1, 4)[:, 3] / 256.0
    return int(np.sum(depth > 0.12 * scale))


OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}


def _longest_straight(contour: np.ndarray, shape: tuple[int, int]) -> float:
    """Longest straight piece of the outline away from the image border, relative to the image side.

    Hands have no long straight edges; a mask that leaked along a collimation edge does."""
    h, w = shape
    p = cv2.approxPolyDP(contour, 2.0, True)[:, 0, :].astype(np.float32)
    a, b = p, np.roll(p, -1, axis=0)
    length = np.hypot(*(a - b).T)
    on_border = ((a[:, 0] <= 1) & (b[:, 0] <= 1)) | ((a[:, 1] <= 1) & (b[:, 1] <= 1))
    on_border |= ((a[:, 0] >= w - 2) & (b[:, 0] >= w - 2)) | ((a[:, 1] >= h - 2) & (b[:, 1] >= h - 2))
    return float(length[~on_border].max(initial=0.0) / max(h, w))


def _border(m: np.ndarray) -> tuple[list[str], list[float]]:
    """Sides the mask touches (over 2% of the side), longest first, and each touch / widest extent."""
    edges = {"top": m[0], "bottom": m[-1], "left": m[:, 0], "right": m[:, -1]}
    touch = {k: int(v.sum()) for k, v in edges.items() if v.sum() > 0.02 * len(v)}
    sides = sorted(touch, key=touch.get, reverse=True)
    widest = max(int(m.sum(axis=1).max()), int(m.sum(axis=0).max()), 1)
    return sides, [round(touch[s] / widest, 3) for s in sides]


def mask_quality(mask: np.ndarray) -> MaskQuality:
    m = _shrink(np.asarray(mask))
    reasons: list[str] = []
    area = float(m.mean())
    metrics: dict = {"area_frac": round(area, 4)}
    if area == 0:
        return MaskQuality(False, metrics | {"components": 0}, ["empty mask"])
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    areas = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
    main = int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) + 1
    second = float(areas[1] / areas[0]) if len(areas) > 1 else 0.0
    big = (labels == main).astype(np.uint8)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    solidity = float(cv2.contourArea(contour) / hull_area) if hull_area > 0 else 0.0
    gaps = _finger_gaps(contour, float(np.sqrt(areas[0])))
    sides, border_ratio = _border(big)
    straight = _longest_straight(contour, big.shape)
    metrics |= {
        "components": int(n - 1),
        "second_component": round(second, 4),
        "solidity": round(solidity, 4),
        "finger_gaps": gaps,
        "border_sides": sides,
        "border_ratio": border_ratio,
        "straight": round(straight, 3),
    }
    if not MIN_AREA <= area <= MAX_AREA:
        reasons.append(f"hand covers {area:.0%} of the image (expected {MIN_AREA:.0%}-{MAX_AREA:.0%})")
    if second > MAX_SECOND_COMPONENT:
        reasons.append(f"mask has a second large region ({second:.0%} of the main one)")
    if not MIN_SOLIDITY <= solidity <= MAX_SOLIDITY:
        reasons.append(f"shape solidity {solidity:.2f} is not hand-like ({MIN_SOLIDITY}-{MAX_SOLIDITY})")
    if gaps < MIN_FINGER_GAPS:
        reasons.append(f"only {gaps} gaps between fingers found (need {MIN_FINGER_GAPS})")
    # A forearm leaves through one side, or two adjacent ones in a corner; it is narrower than the palm.
    if len(sides) > 2 or (len(sides) == 2 and OPPOSITE[sides[0]] == sides[1]):
        reasons.append(f"mask touches image borders {', '.join(sides)}; only the wrist side may")
    elif sides and (border_ratio[0] > MAX_BORDER_RATIO or border_ratio[1:2] > [MAX_BORDER_SECOND]):
        reasons.append(f"mask runs along the image border ({', '.join(sides)}) wider than a forearm ({border_ratio})")
    if straight > MAX_STRAIGHT:
        reasons.append(f"outline has a long straight edge ({straight:.0%} of the image side): leaked along the collimation edge")
    return MaskQuality(not reasons, metrics, reasons)


def hand_present(q: MaskQuality) -> bool:
    """Weaker than `ok`: a hand-sized region with fingers was found, even if the outline leaked.

    Enough for a model that does not crop to the mask (it sees the whole image): there the mask only
    has to prove the image shows a hand; a leaky outline does not change the estimate.
    """
    m = q.metrics
    return MIN_AREA <= m.get("area_frac", 0.0) <= MAX_AREA and m.get("finger_gaps", 0) >= MIN_FINGER_GAPS - 1
