"""Stage 5, regress: bone age in months from the regressor's output.

The regressor predicts the standardised age (months - mean) / std with the training set's
mean and std, which travel in the model's manifest (`target`).
"""

from __future__ import annotations

import numpy as np

from edgeba.errors import ModelError

PLAUSIBLE_MONTHS = (0.0, 240.0)  # RSNA spans 1-228 months; outside 0-20 years the output is not a bone age


def months(output: np.ndarray, target: tuple[float, float]) -> float:
    """Months from the (1, 1) regressor output; ModelError if it is not a finite number."""
    value = np.asarray(output, np.float64).ravel()
    if value.size != 1 or not np.isfinite(value[0]):
        raise ModelError(f"regressor returned {value.size} value(s) {value[:4].tolist()}, expected one finite number")
    mean, std = target
    return float(value[0] * std + mean)


def plausibility_warning(age_months: float) -> str | None:
    lo, hi = PLAUSIBLE_MONTHS
    if not lo <= age_months <= hi:
        return f"predicted {age_months:.0f} months is outside the {lo:.0f}-{hi:.0f} month range the model knows; do not trust it"
    return None


def years_months(age_months: float) -> str:
    """'10 y 7 m' for 127.4 months (rounded to whole months)."""
    total = int(round(age_months))
    sign, total = ("-", -total) if total < 0 else ("", total)
    return f"{sign}{total // 12} y {total % 12} m"
