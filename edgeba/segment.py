"""Stage 2, segment: hand mask of a radiograph (numpy/OpenCV only; the U-Net itself runs elsewhere).

- `bootstrap_mask`: classical mask, no model. Used to make the first U-Net training targets and as a
  fallback. Radiographs here often show a brighter collimation field around the hand, so no single
  global threshold works; we threshold at many levels and let the QC checks pick the level whose
  largest component looks most like a hand.
- `unet_input` / `mask_from_prob`: letterboxed model input and the full-resolution mask from the
  U-Net's probability map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edgeba.io import UNIT_8BIT
from edgeba.quality import mask_quality

WORK_SIDE = 256  # bootstrap resolution: fingers stay several pixels wide, a call stays ~0.1 s
N_LEVELS = 24  # thresholds tried by the bootstrap
GROW = 0.006  # final dilation radius / longest image side
THIN_PX = 3.0  # U-Net masks: parts thinner than this many model pixels are removed (chosen on train+tune)
MASK_WORK_SIDE = 512  # U-Net masks are cleaned at this long side (4x the model's), then upsampled


@dataclass(frozen=True)
class Letterbox:
    """Where the image sits inside the square model input."""

    scale: float  # model px per image px
    top: int
    left: int
    height: int  # content size inside the square
    width: int


def largest_component(mask: np.ndarray) -> np.ndarray:
    # Labels without statistics, areas only when there is a choice: OpenCV's statistics pass costs
    # several times the labelling itself, and most masks here have one component.
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, np.uint8)
    if n == 2:
        return (labels > 0).view(np.uint8)  # a bool array's bytes are 0/1: no conversion pass
    areas = np.bincount(labels.reshape(-1), minlength=n)[1:]
    return (labels == 1 + int(np.argmax(areas))).view(np.uint8)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill everything enclosed by the outer contours (bones inside the soft tissue are hand too)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out


def _ellipse_rects(k: int) -> list[tuple[int, int]]:
    """The (2k+1)-px ellipse of cv2.getStructuringElement as a union of centred rectangles (half-height,
    half-width): for each row width, the band of rows at least that wide."""
    rows = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)).sum(axis=1)
    return [(int(np.count_nonzero(rows >= 2 * w + 1)) // 2, w) for w in sorted({int(r) // 2 for r in rows if r})]


def dilate_ellipse(x: np.ndarray, k: int) -> np.ndarray:
    """cv2.dilate(x, ellipse (2k+1)), bit for bit: the maximum over the ellipse is the largest of the
    maxima over its rectangles (outside the image never counts, in both), and OpenCV dilates by a
    rectangle as two 1-D passes, several times faster than its generic path for a large ellipse."""
    out = None
    for h, w in _ellipse_rects(k):
        y = cv2.dilate(x, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * w + 1, 2 * h + 1)))
        out = y if out is None else np.maximum(out, y, out=out)
    return out


def open_ellipse(x: np.ndarray, k: int) -> np.ndarray:
    """cv2.morphologyEx(x, MORPH_OPEN, ellipse (2k+1), borderType=BORDER_CONSTANT, borderValue=0), bit for bit,
    for a non-negative image: erosion by a union of rectangles is the smallest of the erosions by each (outside
    the image counts as 0), then the dilation as in dilate_ellipse."""
    out = None
    for h, w in _ellipse_rects(k):
        y = cv2.erode(x, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * w + 1, 2 * h + 1)), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        out = y if out is None else np.minimum(out, y, out=out)
    return dilate_ellipse(out, k)


def in_box(fn: Callable[[np.ndarray], np.ndarray], mask: np.ndarray) -> np.ndarray:
    """fn(mask), computed on the mask's bounding box alone, zero elsewhere. Bit for bit the same for an fn that keeps
    nothing outside that box and takes outside the image as background: labelling, hole filling, an opening (with
    BORDER_CONSTANT 0) cut by the mask (tests/test_speed.py). A hand covers half the film: the rest is left alone."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or (w, h) == mask.shape[::-1]:
        return fn(mask)
    out = np.zeros_like(mask)
    out[y : y + h, x : x + w] = fn(np.ascontiguousarray(mask[y : y + h, x : x + w]))
    return out


def upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Upsample through a linear float resize so edges come out smooth, not blocky."""
    big = cv2.resize(mask.astype(np.float64), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return (big >= 0.5).view(np.uint8)


def _lerp(order_stat, n: int, q: tuple[float, ...]) -> list[float]:
    """np.percentile's linear method (its own two-sided lerp) from `order_stat(k)` = the k-th smallest value."""
    out = []
    for p in q:
        i = p / 100 * (n - 1)
        j = int(i)
        a, b, t = order_stat(j), order_stat(min(j + 1, n - 1)), i - j
        out.append(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))
    return out


TAIL = 0.05  # order statistics this close to either end are selected from the tail alone (_tail_stats)


def _tail_stats(flat: np.ndarray, ks: list[int]) -> dict[int, float] | None:
    """The k-th smallest values of `flat`, each k in a tail, from the few values beyond a bound guessed on a strided
    sample: all values on a tail's side of its bound hold its order statistics exactly when there are enough of them
    (checked; None otherwise). One partial sort of about 2 % of the image per tail instead of one of all of it: the
    stretch's 0.5/99.5 % cost a third of a U-Net pass."""
    n = flat.size
    sample = flat[:: max(1, n // 4096)]
    m = sample.size
    out: dict[int, float] = {}
    if low := [k for k in ks if 2 * k < n]:  # every value <= the bound: a prefix of the sorted array
        j = min(m - 1, int((max(low) + 1) / n * m * 2) + 8)
        sel = flat[flat <= np.partition(sample, j)[j]]
        if sel.size <= max(low):
            return None
        part = np.partition(sel, low)
        out |= {k: float(part[k]) for k in low}
    if high := [k for k in ks if 2 * k >= n]:  # every value >= the bound: a suffix of the sorted array
        j = max(0, m - 1 - (int((n - min(high)) / n * m * 2) + 8))
        sel = flat[flat >= np.partition(sample, j)[j]]
        skipped = n - sel.size  # values below the bound: the suffix starts at this rank
        if min(high) < skipped:
            return None
        part = np.partition(sel, [k - skipped for k in high])
        out |= {k: float(part[k - skipped]) for k in high}
    return out


def percentiles(x: np.ndarray, q: tuple[float, ...]) -> list[float]:
    """np.percentile(x, q), the same values, from partial sorts: of the tails alone when every percentile lies within
    TAIL of an end (_tail_stats), else of the whole array (np.percentile costs about twice as much)."""
    flat = x.reshape(-1)
    n = flat.size
    ks = sorted({min(int(p / 100 * (n - 1)) + d, n - 1) for p in q for d in (0, 1)})
    tails = _tail_stats(flat, ks) if all(min(k, n - 1 - k) < TAIL * n for k in ks) else None
    if tails is None:
        part = np.partition(flat, ks)
        return _lerp(lambda k: float(part[k]), n, q)
    return _lerp(tails.__getitem__, n, q)


def _order_statistic(counts: np.ndarray, values: np.ndarray) -> Callable[[int], np.float32]:
    """k -> the k-th smallest (0-based) of data given as how many elements (`counts`) hold each of a few `values`."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(counts[order].astype(np.int64))
    return lambda k: values[order[int(np.searchsorted(cum, k, side="right"))]]


def median_of_levels(counts: np.ndarray, values: np.ndarray) -> np.float32:
    """np.median of float32 data given as how many elements (`counts`) hold each of a few `values`, the same value:
    the middle element, or for an even count np.median's float32 mean of the two middle ones. A partition of the
    data costs O(n); this costs O(len(values)) once the counts are known."""
    rank, n = _order_statistic(counts, values), int(np.sum(counts, dtype=np.int64))
    if n % 2:
        return rank(n // 2)
    return (rank(n // 2 - 1) + rank(n // 2)) / np.float32(2)


def mad_of_levels(counts: np.ndarray, values: np.ndarray) -> np.float32:
    """The median absolute deviation from the median, np.median(np.abs(d - np.median(d))) for float32 data `d` given
    as in median_of_levels, the same value: each value's deviation is the same float32 subtraction."""
    return median_of_levels(counts, np.abs(values - median_of_levels(counts, values)))


INVERSE_8BIT = np.float32(1.0) - UNIT_8BIT  # an 8-bit level inverted as the pipeline inverts (1.0 - pixels, float32)


def _levels(x: np.ndarray, inverse: bool = False) -> np.ndarray | None:
    """uint8 level k of every pixel when `x` holds only io.UNIT_8BIT's values (an 8-bit file as loaded), or with
    `inverse` INVERSE_8BIT's (1.0 - such a file); else None."""
    if x.dtype != np.float32:
        return None
    values, alpha, beta = (INVERSE_8BIT, -255.0, 255.0) if inverse else (UNIT_8BIT, 255.0, 0.0)
    code = cv2.convertScaleAbs(x, alpha=alpha, beta=beta)  # |alpha x + beta| rounded, saturated: checked below
    return code if np.array_equal(cv2.LUT(code, values), x) else None


def _stretch(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Robust contrast stretch so exposure differences do not move the thresholds: float32 values, held in `dtype`
    (float64 for a float64 resize: the lookup table's path then makes them in one pass instead of two)."""
    # Bit-identical to np.clip((x - lo) / d, 0, 1) in float64 with np.percentile's lo, hi: the INT8 U-Net
    # turns even a float32 rounding difference into a different mask pixel now and then. An 8-bit image
    # (most radiograph files) has 256 values: percentiles from their counts, the stretch as a lookup table.
    code, values = _levels(x), UNIT_8BIT
    if code is None:
        # The inverse of an 8-bit file, which hand.find_hand segments whenever the polarity is not clear at once: the
        # same 256 values in the opposite order (without this path its stretch took 9.6 ms, seven INT8 U-Net calls).
        code, values = _levels(x, inverse=True), INVERSE_8BIT
    if code is not None:
        # OpenCV counts in float32, exact below 2**24 pixels; np.bincount is exact always, 3x slower.
        counts = cv2.calcHist([code], [0], None, [256], [0, 256]).ravel() if x.size < 2**24 else np.bincount(code.reshape(-1), minlength=256)
        rank = _order_statistic(counts, values)
        lo, hi = _lerp(lambda k: float(rank(k)), x.size, (0.5, 99.5))
        table = np.clip((values.astype(np.float64) - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
        return cv2.LUT(code, table.astype(dtype))
    lo, hi = percentiles(x, (0.5, 99.5))
    buf = np.subtract(x, lo, dtype=np.float64)  # the same float64 arithmetic, in one buffer
    np.divide(buf, max(hi - lo, 1e-6), out=buf)
    np.clip(buf, 0, 1, out=buf)
    out = buf.astype(np.float32)
    return out if dtype == np.float32 else out.astype(dtype)


def _candidate(smooth: np.ndarray, level: float, kernel: np.ndarray) -> np.ndarray:
    raw = (smooth > level).astype(np.uint8)
    # A wide opening cuts the thin bright lines along the collimation edge and the bridges to labels
    # and lead markers; growing the survivor back inside the raw mask restores finger edges.
    core = largest_component(cv2.morphologyEx(raw, cv2.MORPH_OPEN, kernel))
    return fill_holes(cv2.dilate(core, kernel) & raw)


def _score(mask: np.ndarray) -> tuple:
    q = mask_quality(mask)
    m = q.metrics
    # Passing masks first, then hand-like shape (finger gaps), then fewer problems, then the largest
    # area (the lowest passing level keeps the most soft tissue).
    return (q.ok, min(m.get("finger_gaps", 0), 4), -len(q.reasons), m.get("area_frac", 0.0))


def bootstrap_mask(pixels: np.ndarray) -> np.ndarray:
    """Classical hand mask, uint8 {0,1}, same shape as `pixels` (float [0,1], bone bright)."""
    h, w = pixels.shape
    s = min(1.0, WORK_SIDE / max(h, w))
    small = cv2.resize(pixels.astype(np.float32), (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    # Median removes film grain and the thin strokes of printed labels; Gaussian evens the soft tissue.
    smooth = cv2.GaussianBlur(cv2.medianBlur((_stretch(small) * 255).astype(np.uint8), 5), (0, 0), 1.5)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    lo, hi = np.percentile(smooth, (5, 95))
    levels = np.linspace(lo, hi, N_LEVELS)
    best = max((_candidate(smooth, t, kernel) for t in levels), key=_score)
    # The passing level sits inside the blurred soft-tissue edge: grow the mask by GROW of the image
    # side so fingertips are not clipped (a slightly generous mask costs the crop nothing).
    r = max(1, round(GROW * max(h, w)))
    grown = cv2.dilate(upsample_mask(best, (h, w)), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return fill_holes(largest_component(grown))


_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}  # np.rot90(x, k)


def _turn_of(pixels: np.ndarray, seen: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """The resampled content of `pixels` when they are a quarter turn of an image in `seen` ((pixels, content)
    pairs), turned the same way; else None. Checked pixel for pixel (a painted or inverted copy is no turn)."""
    for base, small in seen:
        for k in (1, 2, 3):
            if (base.shape if k == 2 else base.shape[::-1]) != pixels.shape:
                continue
            # The first row rules most out; a whole turned view is compared column-wise, slowly: OpenCV's turned copy
            # (np.rot90's pixels, contiguous) compares in a third of the time.
            if np.array_equal(np.rot90(base, k)[0], pixels[0]) and np.array_equal(cv2.rotate(base, _ROTATE[k]), pixels):
                return np.ascontiguousarray(np.rot90(small, k))
    return None


def unet_input(pixels: np.ndarray, size: int, seen: list[tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[np.ndarray, Letterbox]:
    """Contrast-stretched image, aspect kept, centred on a black (size, size) square.

    `seen`: the caller's list of images already resampled for this radiograph (emptied per radiograph; appended to
    here). A quarter turn of one of them (orient.py segments the stored image turned once to three times) is its
    content turned, not resampled again: resampling was a third of a U-Net pass's time. The two differ only by
    float32 rounding, in the last bit of a pixel or none (in 8 of 1,608 turned copies of RSNA films, one pixel or two)."""
    h, w = pixels.shape
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = None if seen is None else _turn_of(pixels, seen)
    if small is None:
        # Resampled in float64 (then float32): OpenCV's float32 paths round differently on x86 and ARM, and the
        # U-Net's decisions (a turn, a zoom) can hinge on a pixel (benchmarks/README.md, "Same months on aarch64?").
        small = cv2.resize(_stretch(pixels.astype(np.float32, copy=False), np.float64), (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
        if seen is not None:
            seen.append((pixels, small))
    top, left = (size - nh) // 2, (size - nw) // 2
    x = np.zeros((size, size), np.float32)
    x[top : top + nh, left : left + nw] = small
    return x, Letterbox(s, top, left, nh, nw)


def mask_from_prob(prob: np.ndarray, letterbox: Letterbox, shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """Full-resolution uint8 {0,1} mask from a U-Net probability map (any of (U,U), (1,U,U,1))."""
    p = np.squeeze(np.asarray(prob, np.float64))  # float64 resampling: the same threshold crossings on every CPU
    lb = letterbox
    p = p[lb.top : lb.top + lb.height, lb.left : lb.left + lb.width]
    # Clean up at MASK_WORK_SIDE, not at full resolution: the U-Net's mask has no detail finer than a
    # model pixel, and morphology with full-resolution kernels cost more than the U-Net itself.
    h, w = shape
    s = min(1.0, MASK_WORK_SIDE / max(h, w))  # work px per image px
    wh, ww = max(1, round(h * s)), max(1, round(w * s))
    raw = (cv2.resize(p, (ww, wh), interpolation=cv2.INTER_LINEAR) >= threshold).view(np.uint8)
    # Structures thinner than THIN_PX model pixels are below the U-Net's resolution; in practice they
    # are the bright line along a collimation edge. Opening removes them, growing the survivor back
    # inside the thresholded mask restores the true outline.
    r = max(1, round(THIN_PX / 2 * s / lb.scale))

    def clean(raw: np.ndarray) -> np.ndarray:
        # Outside the image counts as background, else a strip along the film edge survives the opening.
        core = largest_component(open_ellipse(raw, r))
        return fill_holes(largest_component(dilate_ellipse(core, r) & raw))

    work = in_box(clean, raw)
    if (wh, ww) == (h, w):
        return work
    # Back at full resolution the outline is the thresholded map's own (as smooth as before the
    # clean-up moved to the work side): what the work mask kept, cut by the full-resolution threshold.
    full = (cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) >= threshold).view(np.uint8)
    keep = upsample_mask(cv2.dilate(work, np.ones((3, 3), np.uint8)), (h, w))
    return in_box(lambda m: fill_holes(largest_component(m)), keep & full)
