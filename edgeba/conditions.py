"""Acquisition conditions the regressor handles worse than the calibration split: flagged, not repaired.

Each condition is measured on every image (its metric lands in the mask quality's metrics); above its
threshold the prediction gets a warning and the interval calibrated on such images (edgeba/interval.py;
`python export/calibrate_interval.py --conditions-model DIR` runs the held-out split's images under the
stress suite's transforms that make the condition and keeps those flagged).

- `bright_surround`: a bright plate or collimator field. On a normal radiograph the film around the
  hand is the darkest thing in the image; side markers and labels are small. The metric is the fraction
  of the film clear of the hand (outside the outline grown by 5 % of the hand's size) brighter than the
  hand's median. Pipeline masks (TFLite), first 60 train and 60 tune radiographs: clean at most 0.13
  (median 0.01); bright plate median 0.99 (5th percentile 0.50-0.64); collimation median 0.47-0.49.
  A collimated film is cut to its field before this is measured (edgeba/film.py), so the flag is left
  mostly to bright plates and to frames the cut does not recognise.
  Repairing it does not help: the film outside the outline set to the hand's darkest grey left bright
  plate at MAE 13.3-13.6 on 60 train images (13.3 before; train/RESULTS.md session 10).
- `noisy`: strong grain or electronic noise. The metric is a robust noise estimate, 1.4826 x the median
  absolute deviation of the image minus its 3x3 median, in grey levels of 1/255 steps. First 300 train
  and 60 tune radiographs: at most 2 steps (0.012); the stress suite's noise (sigma 0.04) 0.012-0.035,
  5th percentile 0.017-0.029. Under that noise the shipped model's estimates drop by about 10 months
  (bias -10.7, MAE 13.9 against 8.6 clean; stress suite, first 60 val images).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgeba.io import UNIT_8BIT
from edgeba.segment import _levels, dilate_ellipse, mad_of_levels

WORK_SIDE = 512  # bright_surround is a fraction of the film: measured on the image at this long side
NOISE_BAND, NOISE_STRIDE = 32, 128  # noise_level's sample: rows in a band, rows from one band to the next


def bright_surround(pixels: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the film clear of the hand that is brighter than the hand's median (0 when none).
    Measured at WORK_SIDE: a dilation by 5 % of the hand at full resolution took 50 s on a 28-megapixel
    scan. At 512 px the flag agrees with the full-resolution one on 358 of 359 train and tune variants (clean,
    bright plate, collimation; the other, a bright plate at 0.17, is flagged at 0.26)."""
    if not mask.any():
        return 0.0
    h, w = mask.shape
    s = min(1.0, WORK_SIDE / max(h, w))
    if s < 1.0:
        size = (max(1, round(w * s)), max(1, round(h * s)))
        pixels = cv2.resize(pixels.astype(np.float64), size, interpolation=cv2.INTER_AREA)  # float64: the same on every CPU
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        if not mask.any():
            return 0.0
    _, _, bw, bh = cv2.boundingRect(mask.astype(np.uint8, copy=False))
    k = max(3, round(0.05 * max(bh - 1, bw - 1)))
    grown = dilate_ellipse(mask.astype(np.uint8), k)  # = cv2.dilate by that ellipse, bit for bit, faster
    film = pixels[grown == 0]
    return float(np.mean(film > np.median(pixels[mask > 0]))) if film.size else 0.0


def noise_level(pixels: np.ndarray) -> float:
    """Robust noise sigma (grey levels in [0, 1]) from the residual of a 3x3 median filter.

    Measured on bands of NOISE_BAND rows every NOISE_STRIDE (a quarter of the image; each band's first and
    last rows dropped, where the filter sees the band's edge): 3x faster than the whole image, and on 120
    train radiographs clean and under noise of sigma 0.01-0.06 within 0.0025 of the whole-image value, with
    the same flag on all 240 (one-off measurement, train/RESULTS.md session 11)."""
    h = pixels.shape[0]
    bands = []  # (the band's pixels, their 3x3 median), each band's first and last rows dropped afterwards
    for y in range(0, max(1, h - NOISE_BAND) + 1, NOISE_STRIDE):
        band = pixels[y : min(h, y + NOISE_BAND)]
        u8 = np.clip(band * 255.0 + 0.5, 0, 255).astype(np.uint8)  # the band's rows only: a quarter of the image
        bands.append((band, cv2.medianBlur(u8, 3)))
    codes = []
    for band, _ in bands:
        if (code := _levels(band)) is None:
            break
        codes.append(code)
    if len(codes) == len(bands) and (pairs := np.concatenate([(c[1:-1].astype(np.int32) << 8 | f[1:-1]).ravel()
                                                              for c, (_, f) in zip(codes, bands)])).size:
        # An 8-bit file (most radiographs): every residual is one of the (level, filtered level) pairs' differences,
        # so both medians come from the pairs' counts, the same values as below, without partitioning the residuals.
        counts = np.bincount(pairs, minlength=1 << 16)
        seen = np.flatnonzero(counts)
        return 1.4826 * float(mad_of_levels(counts[seen], UNIT_8BIT[seen >> 8] - (seen & 255).astype(np.float32) / 255.0))
    d = np.concatenate([(band.astype(np.float32) - f.astype(np.float32) / 255.0)[1:-1].ravel() for band, f in bands])
    return 1.4826 * float(np.median(np.abs(d - np.median(d)))) if d.size else 0.0


# A radiograph this noisy (noise_level above the `noisy` flag's threshold) is smoothed before the regressor sees it
# (the hand is found, or the image refused, on the pixels as loaded): the sharpening kernel multiplies whatever
# noise the 256 px area resize leaves, and the model then reads the film months young. OpenCV's non-local means,
# with its filter strength set from the measured noise, was chosen over a Gaussian (sigma 1 px) and a 3 px median on
# 300 train radiographs x noise sigma 0.02/0.04/0.06 (smoothing the file before everything: end-to-end MAE 21.2 ->
# 13.4 months; Gaussian 17.3, median 19.7). Shipped form, after a non-hand test caught smoothed noise passing as a
# hand: only the regressor's input is smoothed, train 21.2 -> 13.7, tune 23.1 -> 15.7 (train/RESULTS.md, session
# 12). The flag, its warning and its wider interval stay: a smoothed film is still estimated less reliably.
# Smoothed on a copy DENOISE_SIDE px long, from which the regressor's 256 px input is cut. A 512 px copy (the area
# resize averages grain down first) was better on average (train, 90 noisy films: 13.41 -> 12.60 months at strength
# 0.6; tune noise 15.24 -> 13.57) but read children under five years older (tune, 11 films: 14.2 -> 21.8; at 0.9
# 19.1), so it was not adopted (train/RESULTS.md, session 14).
NLM_STRENGTH = 1.2  # filter strength h / the noise sigma of the file as loaded (grey levels)
BRIGHT_SURROUND = 0.2  # the `bright_surround` condition's threshold: it flags the image and paints the plate dark
NOISY = 0.015  # the `noisy` condition's threshold: it flags the image and turns the smoothing on
DENOISE_SIDE = 1024


def denoise(pixels: np.ndarray, noise: float) -> np.ndarray:
    """`pixels` (float [0, 1]) smoothed by non-local means at a strength set by their `noise_level`."""
    u8 = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    h = max(3.0, NLM_STRENGTH * noise * 255.0)
    return cv2.fastNlMeansDenoising(u8, None, h=h, templateWindowSize=7, searchWindowSize=21).astype(np.float32) / 255.0


# A film flagged `bright_surround` has its plate painted dark in the regressor's input (the hand is found as before):
# the regressor was fitted on films whose surround is the darkest thing in them. The plate is found from its own pixels,
# not from the U-Net's outline (which misses the wrist and fingers on a bright plate): the components touching the
# image's border of the pixels brighter than the border's median minus PLATE_DELTA, each at least PLATE_MIN_AREA of the
# image, grown by PLATE_GROW of the image side (into the blend at the skin). Chosen on 100 train films under the
# suite's bright plate (regressor alone: 20.5 -> 10.0 months, clean 6.1; DELTA 0.035-0.08: 10.4-11.0) and judged on
# tune end to end (train/RESULTS.md, session 13). A "plate" that covers over PLATE_MAX_COVER of the hand's outline is
# part of the hand (a tight crop's border is the hand itself; on a dark noisy film bone passes the bar): not painted
# (train, 193 flagged variants: over a cover of 0.5 painting lost 9-82 months on 8 of 25; the limit 0.3 is the largest
# whose worst loss stays under 20 months).
PLATE_DELTA, PLATE_MIN_AREA, PLATE_GROW, PLATE_MAX_COVER = 0.05, 0.02, 0.003, 0.3
BORDER = 0.03  # the border ring: this fraction of the shorter side


def border_level(pixels: np.ndarray) -> float:
    """Median grey of the image's outer ring (BORDER of the shorter side): the plate or film around a hand."""
    h, w = pixels.shape
    b = max(2, int(BORDER * min(h, w)))
    return float(np.median(np.concatenate([pixels[:b].ravel(), pixels[-b:].ravel(), pixels[b:-b, :b].ravel(), pixels[b:-b, -b:].ravel()])))


def darken_plate(pixels: np.ndarray, hand: np.ndarray) -> np.ndarray:
    """`pixels` with the bright plate around the hand painted with the rest's 1st-percentile grey (see PLATE_DELTA);
    `hand`: the hand's outline on the same grid. Unchanged when the plate would cover over PLATE_MAX_COVER of it."""
    bright = (pixels > border_level(pixels) - PLATE_DELTA).view(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = [k for k in edge if k and stats[k, cv2.CC_STAT_AREA] >= PLATE_MIN_AREA * pixels.size]
    if not keep:
        return pixels
    plate = np.isin(labels, keep).astype(np.uint8)
    r = max(1, round(PLATE_GROW * max(pixels.shape)))
    plate = dilate_ellipse(plate, r)
    inside = hand > 0
    if not inside.any() or float(plate[inside].mean()) > PLATE_MAX_COVER:
        return pixels  # past this, the rest (what is painted with) is never empty: it holds most of the hand
    return np.where(plate > 0, np.float32(np.percentile(pixels[plate == 0], 1)), pixels).astype(np.float32)


@dataclass(frozen=True)
class Condition:
    name: str  # its key in the metrics and in the manifest's interval calibration
    threshold: float  # flagged above it
    transforms: tuple[str, ...]  # the stress suite's transforms that make it (calibration)
    warning: str  # said when flagged; {value} is the metric


_BRIGHT = "the film around the hand is bright ({value:.0%} of it brighter than the hand: a plate or collimator field?)"
CONDITIONS = (
    Condition("bright_surround", BRIGHT_SURROUND, ("bright_plate", "collimation"),
              _BRIGHT + ": painted dark before estimating, but such images are estimated less reliably"),
    Condition("noisy", NOISY, ("noise",),
              "the image is noisy (noise {value:.3f} of the grey range): smoothed before estimating, but such images are "
              "estimated less reliably"),
)


PLATE_KEPT = _BRIGHT + " and too close to the hand's own grey to be painted over: such images are estimated less reliably"


def measure(surround: float, noise: float) -> dict[str, float]:
    """Every condition's metric: `surround`, bright_surround of the working copy and its hand mask (hand.Hand.surround);
    `noise`, noise_level of the file's own pixels as loaded (an area average hides grain, and the threshold was chosen
    at a file's resolution)."""
    return {"bright_surround": surround, "noisy": noise}


def bright_film(surround: float) -> bool:
    return surround > BRIGHT_SURROUND


def noisy(noise: float) -> bool:
    return noise > NOISY


def flagged(metrics: dict[str, float]) -> list[Condition]:
    return [c for c in CONDITIONS if metrics.get(c.name, 0.0) > c.threshold]
