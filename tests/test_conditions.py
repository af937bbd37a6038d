"""The conditions of edgeba/conditions.py: a normal radiograph is not flagged; the same hand on a bright plate,
inside a collimated field or under noise is, says so, and gets the interval calibrated for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import *  # noqa: F401,F403

from edgeba import dataset, stress
from edgeba.segment import bootstrap_mask
from edgeba.conditions import CONDITIONS, bright_surround, noise_level

BRIGHT, NOISY = (c.threshold for c in CONDITIONS)
CONDITION = "bright_surround"


def _case(image_id: str):
    return next(c for c in dataset.cases() if c.id == image_id)


@pytest.mark.parametrize("image_id", GOOD_IDS)
def test_a_bright_plate_and_noise_are_flagged_and_a_normal_film_is_not(image_id, tmp_path):
    img = stress.read_raw(_case(image_id))
    mask = bootstrap_mask(img)
    assert bright_surround(img, mask) < BRIGHT / 2
    plate = stress.TRANSFORMS["bright_plate"][0](img, mask, stress._rng(stress.SEED, image_id, "bright_plate"))
    assert bright_surround(plate, mask) > BRIGHT
    assert noise_level(img) < NOISY / 2
    noisy = stress.TRANSFORMS["noise"][0](img, mask, stress._rng(stress.SEED, image_id, "noise"))
    assert noise_level(noisy) > NOISY


def test_a_flagged_image_warns_and_gets_the_conditions_interval(tmp_path):
    from edgeba.manifest import load_manifest
    from edgeba.predictor import Predictor

    case = _case(GOOD_IDS[0])
    p = Predictor(None, "tflite", 1)
    clean = p.predict(case.image_path, "male")
    path = stress.write_variant(stress.read_raw(case), clean.mask, case.id, "bright_plate", stress.SEED, Path(tmp_path))
    bright = p.predict(path, "male")
    assert clean.mask_quality["metrics"][CONDITION] < BRIGHT < bright.mask_quality["metrics"][CONDITION]
    field = stress.write_variant(stress.read_raw(case), clean.mask, case.id, "collimation", stress.SEED, Path(tmp_path))
    assert p.predict(field, "male").mask_quality["metrics"][CONDITION] > BRIGHT  # the film grew a bright frame
    assert not any("film around the hand is bright" in w for w in clean.warnings)
    assert any("film around the hand is bright" in w for w in bright.warnings)
    cal = load_manifest().data["interval"]
    widths = [(i[1] - i[0]) / 2 for i in (clean.interval_months, bright.interval_months)]
    assert widths[0] == pytest.approx(cal["modes"]["single"]["half_width"], abs=0.06)
    assert widths[1] == pytest.approx(cal["conditions"][CONDITION]["single"]["half_width"], abs=0.06) and widths[1] > widths[0]
    noisy = p.predict(stress.write_variant(stress.read_raw(case), clean.mask, case.id, "noise", stress.SEED, Path(tmp_path)), "male")
    assert any("image is noisy" in w for w in noisy.warnings) and not any("image is noisy" in w for w in clean.warnings)
    # The upper side: the lower one stops at 0 months for a young estimate.
    assert noisy.interval_months[1] - noisy.bone_age_months == pytest.approx(cal["conditions"]["noisy"]["single"]["half_width"], abs=0.06)
    assert any("smoothed before estimating" in w for w in noisy.warnings)


def test_a_noisy_film_is_smoothed_before_it_is_estimated(tmp_path, monkeypatch):
    # The suite's noise (sigma 0.04) reads films months young through the sharpening kernel; non-local means on
    # the flagged file brings the estimates back towards the clean films' (conditions.denoise). Per film it can
    # overshoot (up to +12 months here), so the claim is about 8 films (the suite's sample order on train):
    # mean |estimate - clean| 5.7 months smoothed against 11.7 without, when written.
    from edgeba import conditions
    from edgeba.predictor import Predictor

    p = Predictor(None, "tflite", 1)
    unsmoothed = conditions.noisy
    gaps = {"smoothed": [], "raw": []}
    for case in stress.sample("train", 8):
        clean = p.predict(case.image_path, "male")
        path = stress.write_variant(stress.read_raw(case), clean.mask, case.id, "noise", stress.SEED, Path(tmp_path))
        monkeypatch.setattr(conditions, "noisy", unsmoothed)
        smoothed = p.predict(path, "male")
        monkeypatch.setattr(conditions, "noisy", lambda noise: False)  # the pipeline without the smoothing
        raw = p.predict(path, "male")
        assert smoothed.mask_quality["metrics"]["noisy"] == raw.mask_quality["metrics"]["noisy"] > 0.015  # flagged either way
        gaps["smoothed"].append(abs(smoothed.bone_age_months - clean.bone_age_months))
        gaps["raw"].append(abs(raw.bone_age_months - clean.bone_age_months))
    assert np.mean(gaps["smoothed"]) < 0.6 * np.mean(gaps["raw"])
