"""Find the hand: its mask, the grey-scale polarity, and whether the image shows a hand at all.

The predictor calls `find_hand` with its U-Net (`segment(pixels) -> mask`). Three things clinics'
images break, each handled here from evidence in the hand itself:
- polarity: a negative (bone dark) is inverted only when the hand's own core-vs-rim contrast says so
  (edgeba/polarity.py): clearly, or weakly when only the inverse shows a hand (`_negative_by_outline`);
  a bright plate or flat grey scan around a normal hand is not a reason;
- a small hand on a large plate: the U-Net sees the whole image at 128 px, where such a hand is a few
  fingers wide; the image is cropped around the first mask and segmented again, zoomed in; when the
  mask is still not hand-like (it outlined the plate), around the part that differs from the plate;
- refusal: only when no pass finds anything hand-like (`is_hand`: a hand outline, or a weaker hand
  shape with bone inside it); a hand with a poor outline is scored with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from edgeba import conditions
from edgeba.io import UNIT_8BIT
from edgeba.polarity import CLEAR, hand_contrast
from edgeba.quality import MAX_AREA, MIN_AREA, OPPOSITE, MaskQuality, hand_present, mask_quality
from edgeba.segment import _levels, mad_of_levels

ZOOM_BELOW = MIN_AREA  # a mask smaller than this (area fraction) is segmented again, zoomed in
ZOOM_MARGIN = 0.25  # context kept around the first mask's box, fraction of its longer side
# When neither grey scale's mask is hand-like, it may outline the plate around a small radiograph, or have
# leaked along a collimation edge (stress suite, val: 6 small_on_plate and 1 collimation refusals of 1,260):
# the part of the image that differs from the plate (`film_box`) is segmented again on its own, unpadded
# (a margin would bring the bright frame of a collimated field back in). Chosen on train stress images
# (0.05: the box was the whole image for 2 of 22 small_on_plate; 0.1 and 0.2 rescued all 5 refusals of 80).
FILM_SIDE = 256  # px; the film's edge and the hand need no more
FILM_DEVIATION = 0.1  # departure from the border's level, fraction of the 1-99 % grey range
FILM_MAX_AREA = 0.8  # a box over this share of the image is no sub-film: nothing to zoom into
# A plate's exposure gradient can depart from its border's median level by more than a faint film's range allows: the
# whole image then "differs from the plate". film_box looks again from a plane fitted to the border. Suite's small films
# on a plate: refusals train300 13 -> 0 (paired MAE -0.90), tune 6 -> 1 (-1.03); nothing else moved (train/RESULTS.md,
# session 16).
PLATE_GRADIENT = True
# Weakest evidence that still counts as a hand (after zooming): a hand-sized region whose outline is
# not convex (fingers, even closed ones, leave concavities; a plate, a body or noise do not).
MIN_HAND_AREA = 0.03
MAX_HAND_SOLIDITY = 0.88
# Drawings, text pages and smooth shapes segmented as a "hand" show no bone inside (|contrast| < 0.05
# on the synthetic non-hands of tests/test_hand.py); real hands mostly > 0.1 (polarity.py).
MIN_BONE_CONTRAST = 0.06
# A radiographed hand is never flat inside: bone, soft tissue and grain spread its grey levels (median
# absolute deviation >= 1/255 in all 61 RSNA hands whose mask fails QC). A uniform shape (a drawn blob,
# a blank plate region) has none, whatever outline the U-Net gives it.
MIN_TEXTURE = 0.5 / 255
# Nor is it smooth: cortices, joints and growth plates give it edges at a bone's scale. A grey gradient,
# a vignette or a smooth blob (with or without grain) has none, and the U-Net can still outline it as a
# hand that passes QC. `detail` of the synthetic gradients the U-Net outlined (horizontal, vertical,
# diagonal, radial, vignette, 2-D smooth noise, sine; 300-2000 px; plain, with grain, low range):
# <= 0.037 (clipped ramps, which have a real edge, reach 0.095 and are refused by the outline checks);
# of all 1338 RSNA hands (clean, find_hand's mask, whatever its QC): >= 0.0535 against the full range
# alone, but for RSNA 3339 (0.016 there, 0.072 with the central half; see `detail`).
MIN_DETAIL = 0.05
WEAK_NEGATIVE, NEGATIVE_GAPS = 0.04, 5  # _negative_by_outline
# A negative of a hand filling the frame shows the air between the fingers bright: the U-Net can outline those gaps
# as a "hand" that passes QC, with bright bone edges at their core (found in session 14's val rows: 8 of 30 missed
# negatives were scored on an outline with contrast over CLEAR). Such an outline has a bright film around it
# (conditions.bright_surround), as a positive has only on a plate or in a collimated field; there the inverse is
# segmented too (_negative_by_inverse).
# Train, all 935 inverted: missed negatives 94 -> 86, bright plates and collimated fields unchanged; tune 15 -> 14
# wrong decisions, nothing else moved (train/RESULTS.md, session 15).
RECHECK_BRIGHT_FILM = True
DETAIL_SIDE, DETAIL_SIGMAS = 320, (2.0, 6.0)  # px; a band-pass from bone edges up to a finger's width
IQR_WEIGHT = 0.05 / 0.12  # the central half is narrower than the 1-99 % range: the same bar, rescaled


@dataclass
class Hand:
    pixels: np.ndarray  # bone bright (inverted when the hand said so)
    mask: np.ndarray  # uint8 {0,1}, same shape
    quality: MaskQuality
    inverted: bool
    zoomed: bool = False
    warnings: list[str] = field(default_factory=list)
    negative_of: Hand | None = field(default=None, repr=False, compare=False)  # an inverted hand: the same outline as stored

    @cached_property
    def contrast(self) -> float:
        """Core - rim inside the hand, in `pixels` (> 0: bone bright; NaN: no mask). Measured when first
        asked: it costs about as much as a U-Net pass, and most candidate outlines are settled without it
        (a failed QC, a turn that does not point up)."""
        if self.negative_of is not None:  # measured on the stored grey scale, as the inversion was decided
            return -self.negative_of.contrast
        return hand_contrast(self.pixels, self.mask) if self.mask.any() else float("nan")

    @cached_property
    def surround(self) -> float:
        """conditions.bright_surround of this outline in `pixels` (the predictor's measure reuses it)."""
        return conditions.bright_surround(self.pixels, self.mask)


def hand_shape(q: MaskQuality) -> bool:
    """A hand-sized, non-convex region with at least one deep concavity (closed fingers, a hand partly
    out of the frame) that leaves the image through one side or one corner at most, as a forearm does.
    Blank, uniform and noise images, convex blobs and image-wide regions fail."""
    m = q.metrics
    area, solidity, gaps = m.get("area_frac", 0.0), m.get("solidity", 1.0), m.get("finger_gaps", 0)
    sides = m.get("border_sides", [])
    forearm = len(sides) <= 1 or (len(sides) == 2 and OPPOSITE[sides[0]] != sides[1])
    return MIN_HAND_AREA <= area <= MAX_AREA and solidity <= MAX_HAND_SOLIDITY and gaps >= 1 and forearm


def texture(pixels: np.ndarray, mask: np.ndarray) -> float:
    """Median absolute deviation of the grey levels inside the mask (0 for a uniform region)."""
    v = pixels[mask > 0]  # a copy: the medians partition it in place
    if not v.size:
        return 0.0
    if (code := _levels(v)) is not None:
        # An 8-bit file's levels (most radiographs): both medians from the levels' counts, the same values (the
        # deviations computed per level by the same float32 subtraction); two partitions of the hand's pixels cost
        # 3 ms a radiograph.
        return float(mad_of_levels(np.bincount(code, minlength=256), UNIT_8BIT))
    np.abs(np.subtract(v, np.median(v, overwrite_input=True), out=v), out=v)
    return float(np.median(v, overwrite_input=True))


def detail(pixels: np.ndarray, mask: np.ndarray) -> float:
    """Band-pass (difference of Gaussians) amplitude inside the mask, 90th percentile, relative to the
    grey range there (1-99 %), or to its central half (x IQR_WEIGHT) when that is larger: structure at a
    bone's scale, 0 for a flat or smoothly varying region. The central half keeps a dark hand on black
    film inside a grey frame (RSNA 3339: 0.016 against the full range, 0.072 against the central half)
    from looking smooth because its mask also holds the frame."""
    h, w = pixels.shape
    s = min(1.0, DETAIL_SIDE / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = cv2.resize(pixels.astype(np.float64), size, interpolation=cv2.INTER_AREA)  # float64: the same on every CPU
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    if m.sum() < 50:
        return 0.0
    p1, p25, p75, p99 = np.percentile(img[m], (1, 25, 75, 99))
    band = cv2.GaussianBlur(img, (0, 0), DETAIL_SIGMAS[0]) - cv2.GaussianBlur(img, (0, 0), DETAIL_SIGMAS[1])
    b = float(np.percentile(np.abs(band[m]), 90))
    return max(b / max(p99 - p1, 1e-6), IQR_WEIGHT * b / max(p75 - p25, 1e-6))


def is_hand(q: MaskQuality, contrast: float, spread: float, structure: float) -> bool:
    """Whether to score the image. Inside the mask the grey levels must spread (`spread`: `texture`)
    and show structure at a bone's scale (`structure`: `detail`), whatever the outline; then a mask
    passing QC, a hand with fingers and a leaky outline (`hand_present`) or a weaker hand shape that
    shows bone brighter than soft tissue inside it."""
    if spread < MIN_TEXTURE or structure < MIN_DETAIL:
        return False
    return q.ok or hand_present(q) or (hand_shape(q) and contrast >= MIN_BONE_CONTRAST)


def _score(q: MaskQuality) -> tuple:
    m = q.metrics
    return (q.ok, hand_present(q), hand_shape(q), min(m.get("finger_gaps", 0), 5), -len(q.reasons))


def _plate_plane(small: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """The plate's level with its exposure gradient: a plane fitted to the pixels under `ring` (least squares, then again
    on those within 3 robust sigma of the first fit, so a film touching the border does not tilt it)."""
    ys, xs = np.nonzero(ring)
    a = np.stack([np.ones(len(xs)), xs, ys], axis=1).astype(np.float64)
    v = small[ys, xs]
    coef = np.linalg.lstsq(a, v, rcond=None)[0]
    r = v - a @ coef
    sigma = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    if sigma > 0 and (keep := np.abs(r) <= 3 * sigma).sum() >= 3:
        coef = np.linalg.lstsq(a[keep], v[keep], rcond=None)[0]
    gy, gx = np.mgrid[0 : small.shape[0], 0 : small.shape[1]]
    return coef[0] + coef[1] * gx + coef[2] * gy


def film_box(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of what differs from the plate: the pixels whose level, blurred past film grain,
    departs from the image border's by over FILM_DEVIATION of the grey range; None when nothing does or
    the box is not clearly smaller than the image (over FILM_MAX_AREA of it). On a small radiograph on a
    larger plate that is the film (or the hand on it), in a collimated field the field. When the box is the
    whole image, the plate's exposure gradient may be why (it departs from the border's median level by more than
    a low-contrast film's range allows): the departure is measured again from a plane fitted to the border."""
    h, w = pixels.shape
    s = FILM_SIDE / max(h, w)
    small = cv2.resize(pixels.astype(np.float64), (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.5)
    b = max(2, int(0.03 * min(small.shape)))
    ring = np.ones(small.shape, bool)
    ring[b:-b, b:-b] = False
    p1, p99 = np.percentile(small, (1, 99))
    bar = FILM_DEVIATION * max(p99 - p1, 1e-6)

    def departing(level) -> tuple[int, int, int, int] | None:
        away = (np.abs(small - level) > bar).astype(np.uint8)
        ys, xs = np.nonzero(cv2.morphologyEx(away, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)))  # specks and strokes out
        if not len(ys):
            return None
        return (max(0, math.floor(ys.min() / s)), min(h, math.ceil((ys.max() + 1) / s)),
                max(0, math.floor(xs.min() / s)), min(w, math.ceil((xs.max() + 1) / s)))

    def small_enough(box) -> bool:
        return box is not None and (box[1] - box[0]) * (box[3] - box[2]) <= FILM_MAX_AREA * h * w

    # The border's level as first chosen: its four strips, the corners counted twice (the plane fits the ring once).
    box = departing(np.median(np.concatenate([small[:b].ravel(), small[-b:].ravel(), small[:, :b].ravel(), small[:, -b:].ravel()])))
    if box is not None and not small_enough(box) and PLATE_GRADIENT:
        box = departing(_plate_plane(small, ring))
    return box if small_enough(box) else None


def _segment_crop(pixels: np.ndarray, segment: Callable[[np.ndarray], np.ndarray], box: tuple[int, int, int, int],
                  mask: np.ndarray, q: MaskQuality) -> tuple[np.ndarray, MaskQuality, bool]:
    """The mask of a U-Net pass on `box` (in the full frame) when it scores better than `mask`, judged in
    the crop's frame (where the hand fills a normal share); else `mask`."""
    y0, y1, x0, x1 = box
    if min(y1 - y0, x1 - x0) < 32:  # too small to be a radiographed hand at this resolution
        return mask, q, False
    sub = segment(np.ascontiguousarray(pixels[y0:y1, x0:x1]))
    qs = mask_quality(sub)
    if _score(qs) <= _score(q):
        return mask, q, False
    full = np.zeros_like(mask)
    full[y0:y1, x0:x1] = sub
    return full, qs, True


def _segment_zoomed(pixels: np.ndarray, segment: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, MaskQuality, bool]:
    """The U-Net mask, and when it is small, the mask of a second pass on a crop around it."""
    mask = segment(pixels)
    q = mask_quality(mask)
    if not mask.any() or q.metrics.get("area_frac", 0.0) >= ZOOM_BELOW:
        return mask, q, False
    bx, by, bw, bh = cv2.boundingRect(mask)  # the pixel extremes, without listing the pixels
    y0, y1, x0, x1 = by, by + bh, bx, bx + bw
    pad = ZOOM_MARGIN * max(y1 - y0, x1 - x0)
    h, w = mask.shape
    box = max(0, math.floor(y0 - pad)), min(h, math.ceil(y1 + pad)), max(0, math.floor(x0 - pad)), min(w, math.ceil(x1 + pad))
    return _segment_crop(pixels, segment, box, mask, q)


def _on_film(hand: Hand, segment: Callable[[np.ndarray], np.ndarray]) -> Hand:
    """`hand`, or when its outline is not hand-like (it outlines the plate, or leaked along a collimation
    edge) or has fingers but nothing of a hand inside (`is_hand` would refuse it: a plate's outline with
    concavities), the outline of a pass on `film_box`, if that scores better and is not flat inside: the
    U-Net can draw a hand into the black of an empty collimated field (tune stress 11043: texture 0)."""
    q = hand.quality
    if q.ok or (hand_present(q) and texture(hand.pixels, hand.mask) >= MIN_TEXTURE
                and detail(hand.pixels, hand.mask) >= MIN_DETAIL):
        return hand
    if (box := film_box(hand.pixels)) is None:
        return hand
    mask, qf, on_film = _segment_crop(hand.pixels, segment, box, hand.mask, q)
    if not on_film or texture(hand.pixels, mask) < MIN_TEXTURE:
        return hand
    return Hand(hand.pixels, mask, qf, inverted=False, zoomed=True)


def _negative_by_outline(stored: MaskQuality, inverse: Hand) -> bool:
    """A negative whose bone contrast is weak (infants, soft exposures): the image as stored shows nothing
    hand-like (`hand_present` fails), its inverse a hand that passes QC with five finger gaps, and inside that
    outline bone is at least a little darker than soft tissue (contrast < -WEAK_NEGATIVE). Chosen on train
    (935 radiographs as stored, inverted, on a bright plate, collimated: missed negatives 126 -> 102, positives
    inverted 6 -> 6) and confirmed on tune (4 x 134: wrong decisions 19 -> 15, positives inverted 0 -> 0;
    train/RESULTS.md, session 12)."""
    m = inverse.quality.metrics
    return (not hand_present(stored) and inverse.quality.ok and m.get("finger_gaps", 0) >= NEGATIVE_GAPS
            and inverse.contrast < -WEAK_NEGATIVE)


def _negative_by_inverse(stored: MaskQuality, inverse: Hand) -> bool:
    """A clear positive outline on a bright film is the gaps between a negative's fingers when the inverse outlines a
    hand that passes QC and scores better (_score), and bone inside that outline is clearly darker than soft tissue."""
    return inverse.quality.ok and _score(inverse.quality) > _score(stored) and inverse.contrast < -CLEAR


def find_hand(pixels: np.ndarray, segment: Callable[[np.ndarray], np.ndarray], polarity_known: bool = False,
              outline: Hand | None = None, film: bool = True) -> Hand:
    """Mask and polarity of the hand. One U-Net pass when the first mask shows bone clearly bright and the film
    around it is not bright (almost every radiograph); else the inverse image too, and the contrast inside the better
    mask decides (for a clear outline on a bright film, only a better inverse outline with bone clearly dark inverts).
    `outline`: what `find_hand(pixels, segment, True)` returned for these very pixels (its pass is reused).
    `film`: segment the sub-film again when no outline is hand-like (`_on_film`)."""
    if outline is None:
        mask, q, zoomed = _segment_zoomed(pixels, segment)
        outline = Hand(pixels, mask, q, inverted=False, zoomed=zoomed)
    clear = outline.quality.ok and outline.contrast > CLEAR
    recheck = clear and RECHECK_BRIGHT_FILM and not polarity_known and conditions.bright_film(outline.surround)
    if polarity_known or (clear and not recheck):
        return _on_film(outline, segment) if film else outline
    neg = 1.0 - pixels
    mask_n, q_n, zoomed_n = _segment_zoomed(neg, segment)
    inverse = Hand(pixels, mask_n, q_n, inverted=False, zoomed=zoomed_n)  # the inverse's outline on the stored grey scale
    if recheck:
        if _negative_by_inverse(outline.quality, inverse):
            return Hand(neg, inverse.mask, inverse.quality, inverted=True, zoomed=inverse.zoomed,
                        warnings=[f"the film around the hand is bright and the inverted image shows a better hand, with bone darker "
                                  f"than soft tissue inside it (contrast {inverse.contrast:+.2f}): a negative image; inverted the "
                                  f"grey scale, check the overlay"], negative_of=inverse)
        return _on_film(outline, segment) if film else outline
    # The hand shows better in the inverse: its outline, not yet its polarity.
    hand = inverse if _score(q_n) > _score(outline.quality) else outline
    # Neither grey scale outlined a hand: the film, when there is one, on its own (after the inverse pass:
    # on a bright plate the inverse outlines the whole hand, a tight crop around it only part; tune 10971).
    hand = _on_film(hand, segment) if film else hand
    c = hand.contrast
    # Only clear evidence inverts. The U-Net's preference is no evidence: on a bright plate it outlines
    # the hand better in the inverse (tune: 3 wrong inversions of 150 plate/collimation images when it
    # was allowed to settle weak contrasts, against 1 missed low-contrast infant negative of 50 without).
    if c < -CLEAR:
        return Hand(neg, hand.mask, hand.quality, inverted=True, zoomed=hand.zoomed,
                    warnings=["bone is darker than soft tissue inside the hand (a negative image); inverted the grey scale"], negative_of=hand)
    if _negative_by_outline(outline.quality, inverse):
        return Hand(neg, inverse.mask, inverse.quality, inverted=True, zoomed=inverse.zoomed,
                    warnings=[f"only the inverted image shows a hand, and bone is darker than soft tissue inside it (contrast "
                              f"{inverse.contrast:+.2f}): a negative image; inverted the grey scale, check the overlay"], negative_of=inverse)
    if hand_shape(hand.quality) and not c > CLEAR:
        hand.warnings = [f"could not confirm from the hand that bone is bright (contrast {c:+.2f}); used the grey scale as stored, check the overlay"]
    return hand
