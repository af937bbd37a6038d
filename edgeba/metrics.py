"""The thesis metrics for bone-age predictions, in months.

One place computes them so `edgeba evaluate`, training reports and benchmarks agree:
errors are prediction - truth (positive = over-estimate); relative error is |error| / truth.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np

from edgeba.dataset import AGE_BAND_NAMES, age_bin

METRIC_KEYS = ("mae", "mse", "rmse", "max_error", "mean_error", "mean_relative_error", "n")


def _arrays(y_true: Iterable[float], y_pred: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(list(y_true) if not isinstance(y_true, np.ndarray) else y_true, dtype=np.float64).ravel()
    p = np.asarray(list(y_pred) if not isinstance(y_pred, np.ndarray) else y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("no predictions to score")
    return t, p


def mae(y_true, y_pred) -> float:
    t, p = _arrays(y_true, y_pred)
    return float(np.mean(np.abs(p - t)))


def mse(y_true, y_pred) -> float:
    t, p = _arrays(y_true, y_pred)
    return float(np.mean((p - t) ** 2))


def rmse(y_true, y_pred) -> float:
    return float(np.sqrt(mse(y_true, y_pred)))


def max_error(y_true, y_pred) -> float:
    t, p = _arrays(y_true, y_pred)
    return float(np.max(np.abs(p - t)))


def mean_error(y_true, y_pred) -> float:
    """Signed mean (bias): positive when the model over-estimates bone age."""
    t, p = _arrays(y_true, y_pred)
    return float(np.mean(p - t))


def mean_relative_error(y_true, y_pred) -> float:
    """Mean of |error| / truth, as a fraction; cases with truth 0 are left out (undefined)."""
    t, p = _arrays(y_true, y_pred)
    keep = t != 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.abs(p[keep] - t[keep]) / np.abs(t[keep])))


def mae_interval(y_true, y_pred, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap percentile interval of the MAE, resampling images: how far the MAE of the same model
    could move on another sample of this many images (on 269 images about +-1 month at 95 %).
    Fixed seed, so a reported interval is reproducible."""
    t, p = _arrays(y_true, y_pred)
    err = np.abs(p - t)
    idx = np.random.default_rng(seed).integers(0, err.size, size=(n_boot, err.size))
    lo, hi = np.percentile(err[idx].mean(axis=1), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def all_metrics(y_true, y_pred) -> dict[str, float | int]:
    """Every thesis metric, keyed exactly as METRIC_KEYS (the `evaluate --json` keys)."""
    t, p = _arrays(y_true, y_pred)
    return {
        "mae": mae(t, p),
        "mse": mse(t, p),
        "rmse": rmse(t, p),
        "max_error": max_error(t, p),
        "mean_error": mean_error(t, p),
        "mean_relative_error": mean_relative_error(t, p),
        "n": int(t.size),
    }


def mae_by_group(y_true, y_pred, groups: Iterable[Hashable]) -> dict[Hashable, dict[str, float | int]]:
    """{group: {"mae": ..., "n": ...}} for e.g. sex or age band (see dataset.age_bin), sorted by group."""
    t, p = _arrays(y_true, y_pred)
    g = list(groups)
    if len(g) != t.size:
        raise ValueError(f"{len(g)} group labels for {t.size} predictions")
    out: dict[Hashable, dict[str, float | int]] = {}
    for key in sorted(set(g), key=str):
        idx = np.array([x == key for x in g])
        out[key] = {"mae": float(np.mean(np.abs(p[idx] - t[idx]))), "n": int(idx.sum())}
    return out


def age_band_mae(y_true, y_pred) -> dict[str, dict[str, float | int]]:
    """mae_by_group over the true age's band (dataset.age_bin), keyed by the band's name, youngest first; bands
    without an image are left out."""
    t, p = _arrays(y_true, y_pred)
    return {AGE_BAND_NAMES[k]: v for k, v in mae_by_group(t, p, [age_bin(a) for a in t]).items()}
