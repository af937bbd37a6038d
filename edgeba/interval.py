"""A 90 % prediction interval with every estimate: split-conformal on held-out residuals.

Calibration (export/calibrate_interval.py) takes the absolute residuals |predicted - true| of images
the model was NOT fitted on and stores, per prediction mode, the conformal quantile of those residuals
in the model's manifest (`interval`). At run time the interval is [estimate - q, estimate + q], cut at
0 months. Split-conformal guarantees the coverage on new images exchangeable with the calibration
split; it promises nothing for images unlike them (the stress suite measures that).

With several views (`--precise`) the views' spread scales the half-width (normalised conformal):
residuals are divided by f = max(1, spread / spread_ref) before taking the quantile, and the interval
is estimate +- q * f, so a hand whose views disagree gets a wider interval and a warning.

Conditions: an image the pipeline recognises as harder than the calibration split (a bright film around
the hand, a noisy image: edgeba/conditions.py) takes the half-width calibrated on such images instead, when that is wider
(`conditions.<name>.<mode>` in the manifest: the same conformal quantile, on residuals of the held-out
split's images under the stress suite's transforms that show the condition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeba.errors import ModelError

COVERAGE = 0.90
WIDE_FACTOR = 1.5  # views disagree this much more than usual: say so


def conformal_quantile(scores, coverage: float = COVERAGE) -> float:
    """The ceil((n + 1) * coverage)-th smallest score: the split-conformal half-width."""
    s = np.sort(np.asarray(scores, np.float64))
    n = len(s)
    k = math.ceil((n + 1) * coverage)
    if n == 0 or k > n:
        raise ValueError(f"{n} calibration residuals are too few for a {coverage:.0%} interval (need {math.ceil(coverage / (1 - coverage))})")
    return float(s[k - 1])


def spread_factor(spread: float | None, spread_ref: float | None) -> float:
    if spread is None or not spread_ref:
        return 1.0
    return max(1.0, float(spread) / float(spread_ref))


def calibrate(residuals, spreads=None, coverage: float = COVERAGE) -> dict:
    """Calibration of one prediction mode from held-out absolute residuals (and the views' spreads)."""
    r = np.abs(np.asarray(residuals, np.float64))
    out: dict = {"n": int(len(r)), "coverage": coverage}
    if spreads is None:
        out["half_width"] = round(conformal_quantile(r, coverage), 3)
        return out
    s = np.asarray(spreads, np.float64)
    ref = float(np.quantile(s, 0.9))  # a typical upper spread: only hands beyond it get wider intervals
    f = np.maximum(1.0, s / max(ref, 1e-6))
    out |= {"half_width": round(conformal_quantile(r / f, coverage), 3), "spread_ref": round(ref, 3)}
    return out


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    widened: float  # the factor the views' disagreement applied (1 = none)

    def as_list(self) -> list[float]:
        return [round(self.lo, 1), round(self.hi, 1)]

    def warning(self) -> str | None:
        if self.widened >= WIDE_FACTOR:
            return (f"the views of this hand disagree ({self.widened:.1f}x the usual spread): the interval is "
                    f"{self.hi - self.lo:.0f} months wide; check the image and the overlay")
        return None


def mode(views: int) -> str:
    return "tta" if views > 1 else "single"


def _half_width(cal: dict) -> float:
    try:
        return float(cal["half_width"])
    except (KeyError, TypeError, ValueError):
        raise ModelError("manifest.json: interval calibration lacks a numeric half_width") from None


def interval(manifest_data: dict, estimate: float, views: list[float], conditions: tuple[str, ...] = ()) -> Interval | None:
    """The interval for one estimate from the manifest's calibration; None when the model has none.
    `conditions`: what the pipeline found atypical about this image; each calibrated one may widen it."""
    data = manifest_data.get("interval") or {}
    cal = data.get("modes", {}).get(mode(len(views)))
    if cal is None:
        return None
    q = _half_width(cal)
    for c in conditions:
        if (cc := (data.get("conditions", {}).get(c) or {}).get(mode(len(views)))) is not None:
            q = max(q, _half_width(cc))
    f = spread_factor(float(np.std(views)) if len(views) > 1 else None, cal.get("spread_ref"))
    return Interval(max(0.0, estimate - q * f), estimate + q * f, f)


def coverage_stats(rows: list[dict]) -> dict:
    """Coverage and mean width over rows with 'true' and 'interval' ([lo, hi] or None)."""
    have = [r for r in rows if r.get("interval") is not None]
    if not have:
        return {"interval_coverage": None, "interval_mean_width": None, "interval_n": 0}
    inside = [r["interval"][0] <= r["true"] <= r["interval"][1] for r in have]
    return {
        "interval_coverage": round(float(np.mean(inside)), 4),
        "interval_mean_width": round(float(np.mean([r["interval"][1] - r["interval"][0] for r in have])), 2),
        "interval_n": len(have),
    }
