"""The 90 % prediction interval: conformal arithmetic, the default model's calibration, and the interval
in every output (predict --json and text, the batch CSV, evaluate --json)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from runtime_fixtures import *  # noqa: F401,F403

from edgeba import interval
from edgeba.manifest import load_manifest


def test_conformal_quantile_is_the_ceil_rank():
    scores = np.arange(1.0, 20.0)  # n = 19: rank ceil(20 * 0.9) = 18
    assert interval.conformal_quantile(scores, 0.9) == 18.0
    with pytest.raises(ValueError, match="too few"):
        interval.conformal_quantile(np.arange(5.0), 0.9)


def test_calibration_covers_new_exchangeable_residuals():
    rng = np.random.default_rng(0)
    cal = interval.calibrate(rng.normal(0, 10, 2000))
    new = np.abs(rng.normal(0, 10, 20000))
    assert 0.88 <= np.mean(new <= cal["half_width"]) <= 0.92


def test_views_that_disagree_widen_the_interval_and_warn():
    rng = np.random.default_rng(1)
    spreads = rng.uniform(1, 5, 500)
    cal = interval.calibrate(rng.normal(0, 1, 500) * spreads * 3, spreads)
    data = {"interval": {"modes": {"tta": cal, "single": {"half_width": 10.0}}}}
    calm = interval.interval(data, 100.0, [100.0, 100.5, 99.5, 100.2, 99.8])
    wild = interval.interval(data, 100.0, [80.0, 120.0, 100.0, 90.0, 110.0])
    assert calm.widened == 1.0 and calm.warning() is None
    assert wild.widened > interval.WIDE_FACTOR and wild.hi - wild.lo > calm.hi - calm.lo
    assert "disagree" in wild.warning()
    one = interval.interval(data, 5.0, [5.0])
    assert one.as_list() == [0.0, 15.0]  # cut at 0 months


def test_a_calibrated_condition_widens_the_interval_only_when_wider():
    data = {"interval": {"modes": {"single": {"half_width": 10.0}},
                         "conditions": {"bright_surround": {"single": {"half_width": 25.0}}, "narrow": {"single": {"half_width": 4.0}}}}}
    plain = interval.interval(data, 100.0, [100.0])
    bright = interval.interval(data, 100.0, [100.0], ("bright_surround",))
    assert (plain.lo, plain.hi) == (90.0, 110.0) and (bright.lo, bright.hi) == (75.0, 125.0)
    assert interval.interval(data, 100.0, [100.0], ("narrow",)).hi == 110.0  # never narrower than the base
    assert interval.interval(data, 100.0, [100.0], ("uncalibrated",)).hi == 110.0
    # a mode the condition was not calibrated for keeps the base half-width
    assert interval.interval(data | {"interval": data["interval"] | {"modes": {"tta": {"half_width": 8.0}}}}, 100.0, [100.0, 100.0],
                             ("bright_surround",)).hi == 108.0


def test_no_calibration_no_interval():
    assert interval.interval({}, 100.0, [100.0]) is None


def test_default_model_is_calibrated_for_both_modes():
    cal = load_manifest().data["interval"]
    assert cal["coverage"] == 0.9 and cal["split"] != "val"
    assert "proxy" in cal["source"]  # the shipped model was refitted on tune: its sibling's residuals stand in
    for mode in ("single", "tta"):
        assert cal["modes"][mode]["n"] >= 100 and 5 < cal["modes"][mode]["half_width"] < 40


def test_predict_reports_the_interval_in_json_and_text(good_image):
    j = json.loads(run_cli("predict", good_image, "--sex", "female", "--json").stdout)
    lo, hi = j["interval_months"]
    q = load_manifest().data["interval"]["modes"]["single"]["half_width"]
    assert lo < j["bone_age_months"] < hi and hi - j["bone_age_months"] == pytest.approx(q, abs=0.1)
    text = run_cli("predict", good_image, "--sex", "female")
    assert text.returncode == 0 and f"90 % prediction interval {lo:.0f}-{hi:.0f} months" in text.stdout


def test_batch_csv_has_interval_columns(good_image, tmp_path):
    out = tmp_path / "r.csv"
    proc = run_cli("predict", good_image, "--sex", "male", "--out", out)
    assert proc.returncode == 0, proc.stderr
    (row,) = list(csv.DictReader(out.open()))
    assert float(row["interval_lo_months"]) < float(row["bone_age_months"]) < float(row["interval_hi_months"])
    assert row["inverted"] == "0"


def test_evaluate_json_reports_coverage_and_width(tmp_path):
    from edgeba import dataset

    cases = dataset.split_cases("val")[:3]
    labels = tmp_path / "labels.csv"
    labels.write_text("id,boneage_months,male\n" + "".join(f"{c.id},{c.boneage_months},{c.male}\n" for c in cases))
    proc = run_cli("evaluate", dataset.rsna_root() / "train", labels, "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["interval_n"] == 3 and round(m["interval_coverage"] * 3, 3) in (0, 1, 2, 3)
    assert m["interval_mean_width"] > 10


def test_a_conditions_residual_is_the_held_out_residual_moved_by_the_models_shift():
    from scripts import load_script

    cal = load_script("export/calibrate_interval.py")
    own = {"id": "1", "true": 100.0, "single": 104.0, "tta": 103.0, "spread": 2.0}  # fitted on the image: close
    held = own | {"single": 112.0, "tta": 110.0}  # the train-only sibling's clean estimates
    variant = own | {"single": 90.0, "tta": 93.0, "spread": 6.0}  # the condition moved this model by -14 / -10
    moved = cal._shifted(variant, own, held)
    assert moved["single"] == 98.0 and moved["tta"] == 100.0  # 112 - 14, 110 - 10
    assert moved["spread"] == 6.0 and moved["true"] == 100.0  # the variant's own spread, the image's label
    with pytest.raises(SystemExit):  # the shift needs held-out residuals to move
        cal.main(["--conditions-shift", "--dry-run"])
