import math

import numpy as np
import pytest

from edgeba import metrics


def test_all_metrics_on_known_values():
    truth = [100.0, 50.0, 200.0]
    pred = [110.0, 40.0, 200.0]
    m = metrics.all_metrics(truth, pred)
    assert tuple(m) == metrics.METRIC_KEYS
    assert m["mae"] == pytest.approx(20 / 3)
    assert m["mse"] == pytest.approx(200 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(200 / 3))
    assert m["max_error"] == 10.0
    assert m["mean_error"] == 0.0
    assert m["mean_relative_error"] == pytest.approx((0.1 + 0.2 + 0.0) / 3)
    assert m["n"] == 3


def test_mean_error_sign_is_prediction_minus_truth():
    assert metrics.mean_error([10, 10], [12, 14]) == 3.0


def test_relative_error_skips_zero_truth():
    assert metrics.mean_relative_error([0.0, 10.0], [5.0, 12.0]) == pytest.approx(0.2)


def test_mismatched_or_empty_inputs_raise():
    with pytest.raises(ValueError):
        metrics.mae([1, 2], [1])
    with pytest.raises(ValueError):
        metrics.mae([], [])


def test_mae_by_group():
    out = metrics.mae_by_group(np.array([10, 20, 30]), np.array([12, 20, 35]), ["f", "m", "f"])
    assert out == {"f": {"mae": 3.5, "n": 2}, "m": {"mae": 0.0, "n": 1}}


def test_mae_interval_brackets_the_mae_narrows_with_more_images_and_is_reproducible():
    rng = np.random.default_rng(1)
    truth = rng.uniform(20, 220, 1000)
    pred = truth + rng.normal(0, 12, 1000)
    small, large = metrics.mae_interval(truth[:100], pred[:100]), metrics.mae_interval(truth, pred)
    assert small[0] < metrics.mae(truth[:100], pred[:100]) < small[1]
    assert large[0] < metrics.mae(truth, pred) < large[1]
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])  # width ~ 1/sqrt(n): 1/sqrt(10) here
    assert metrics.mae_interval(truth, pred) == large
    assert metrics.mae_interval([10, 20], [13, 23]) == pytest.approx((3.0, 3.0))  # no spread, no interval
