"""Quarter turns (edgeba/orient.py): a landscape or upside-down scan is turned fingers-up before the
U-Net and the regressor see it, so it gets the estimate of the radiograph as stored; an upright
radiograph is never turned."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from rsna import rsna_image
from runtime_fixtures import *  # noqa: F401,F403

from edgeba.hand import find_hand
from edgeba.manifest import DEFAULT_DIR
from edgeba.orient import find_upright_hand
from edgeba.predictor import Predictor

# Train radiographs whose U-Net mask on a quarter-turned copy is partial (a wrist or a few fingers)
# and passes the lenient QC all the same: the cases the turn search exists for.
IDS = ("10043", "10108")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(DEFAULT_DIR, "tflite", 1)


def _png(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    return path


@pytest.mark.parametrize("case_id", IDS)
def test_a_quarter_turned_radiograph_gets_the_upright_estimate(predictor, tmp_path, case_id):
    img = rsna_image(case_id)
    upright = predictor.predict(_png(tmp_path / "up.png", img), "male")
    assert upright.mask_quality["metrics"]["turned_degrees"] == 0
    assert not any("turned the image" in w for w in upright.warnings)
    for k in (1, 2, 3):
        turned = predictor.predict(_png(tmp_path / f"k{k}.png", np.rot90(img, k)), "male")
        # np.rot90 by k, turned back by 4 - k quarter turns: the very same pixels, so the same months.
        assert turned.mask_quality["metrics"]["turned_degrees"] == 90 * (4 - k)
        assert any(f"turned the image {90 * (4 - k)} degrees" in w for w in turned.warnings)
        assert abs(turned.bone_age_months - upright.bone_age_months) < 1e-3


def test_a_turned_winner_keeps_its_candidate_pass(predictor):
    # orient.py decides a turned winner's polarity from the candidate it already segmented (the same
    # pixels, turned) instead of a fresh pass: the Hand must be the one a fresh find_hand gives.
    stored = np.ascontiguousarray(np.rot90(rsna_image(IDS[0]), 1))
    calls = []

    def segment(pixels):
        calls.append(hashlib.sha1(pixels.tobytes()).hexdigest() + str(pixels.shape))
        return predictor._segment(pixels)

    hand, turns = find_upright_hand(stored, segment)
    assert turns == 3
    fresh = find_hand(np.ascontiguousarray(np.rot90(stored, turns)), predictor._segment)
    assert np.array_equal(hand.pixels, fresh.pixels) and np.array_equal(hand.mask, fresh.mask)
    assert (hand.quality, hand.inverted, hand.zoomed, hand.warnings) == (fresh.quality, fresh.inverted, fresh.zoomed, fresh.warnings)
    assert hand.contrast == fresh.contrast
    assert len(calls) == len(set(calls))  # no pass repeated on the same pixels


def test_a_few_fingers_outlined_upright_do_not_turn_a_tilted_hand(predictor, tmp_path, monkeypatch):
    # Train 9617 (69 months) tilted 45 degrees: the copy turned a quarter turn outlines a few fingers, upright, with
    # more "finger gaps" than the stored image's whole hand. Turned to it, the hand was estimated 22 months.
    from edgeba import orient
    from edgeba.stress import rotate

    path = _png(tmp_path / "tilted.png", rotate(rsna_image("9617"), 45))
    kept = predictor.predict(path, "female")
    assert kept.mask_quality["metrics"]["turned_degrees"] == 0 and abs(kept.bone_age_months - 69) < 24
    monkeypatch.setattr(orient, "MIN_TURN_AREA", 0.0)
    turned = predictor.predict(path, "female")
    assert turned.mask_quality["metrics"]["turned_degrees"] == 90 and turned.bone_age_months < 45


def test_a_failed_stored_outline_is_no_measure_for_the_turn_guard(predictor, tmp_path):
    # Train 10973 (the suite's small film on a plate) turned upside down: the stored image's outline fails QC (it is
    # not the hand's), so the guard does not hold the upright copy's smaller outline against it; before this the
    # film was scored upside down, 85 months off.
    from edgeba import stress
    from edgeba.dataset import split_cases

    case = next(c for c in split_cases("train") if c.id == "10973")
    img = stress.read_raw(case)
    film = stress.TRANSFORMS["small_on_plate"][0](img, None, stress._rng(stress.SEED, case.id, "small_on_plate"))
    p = predictor.predict(_png(tmp_path / "upside_down.png", np.rot90(film, 2)), "male" if case.male else "female")
    assert p.mask_quality["metrics"]["turned_degrees"] == 180 and abs(p.bone_age_months - case.boneage_months) < 24


def test_a_landscape_film_on_a_bright_plate_is_turned_from_the_inverse_outline(predictor, tmp_path, monkeypatch):
    # Tune 3562 (162 months) under the suite's plate_rot90: the hand is a dark silhouette on a bright plate, which the
    # U-Net outlines whole only in the inverse grey scale. Searched in the stored grey scale alone the film stayed
    # sideways and was estimated 59 months.
    from edgeba import orient, stress
    from edgeba.dataset import split_cases

    case = next(c for c in split_cases("tune") if c.id == "3562")
    sex = "male" if case.male else "female"
    clean = predictor.predict(case.image_path, sex)
    path = stress.write_variant(stress.read_raw(case), clean.mask, case.id, "plate_rot90", stress.SEED, tmp_path)
    turned = predictor.predict(path, sex)
    assert turned.mask_quality["metrics"]["turned_degrees"] == 270 and not turned.inverted
    assert abs(turned.bone_age_months - case.boneage_months) < 24
    monkeypatch.setattr(orient, "INVERSE_TURNS", False)
    sideways = predictor.predict(path, sex, force=True)
    assert sideways.mask_quality["metrics"]["turned_degrees"] != 270


def test_an_upright_hand_on_a_bright_plate_is_not_searched_in_the_inverse(predictor, tmp_path):
    # Tune 10163 (186 months) under the suite's bright plate: its outline passes QC and points up. Searched in the
    # inverse too (the first form of orient.INVERSE_TURNS), its upside-down copy's outline read as upright, out-ranked
    # it, and the film was turned 180 degrees (estimated 105 months). Only a hand not already found upright is.
    from edgeba import stress
    from edgeba.dataset import split_cases

    case = next(c for c in split_cases("tune") if c.id == "10163")
    sex = "male" if case.male else "female"
    clean = predictor.predict(case.image_path, sex)
    path = stress.write_variant(stress.read_raw(case), clean.mask, case.id, "bright_plate", stress.SEED, tmp_path)
    kept = predictor.predict(path, sex)
    assert kept.mask_quality["metrics"]["turned_degrees"] == 0 and abs(kept.bone_age_months - case.boneage_months) < 24
