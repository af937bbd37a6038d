"""Re-framing for whole-image models (edgeba/reframe.py): a hand small on a large plate or tilted far
from fingers-up is put back into the train radiographs' framing; a typical film is left untouched."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rsna import rsna_image
from runtime_fixtures import *  # noqa: F401,F403

from edgeba import reframe as rf
from edgeba import stress
from edgeba.crop import upright_angle
from edgeba.manifest import DEFAULT_DIR
from edgeba.predictor import Predictor

CASE = "10108"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    p = Predictor(DEFAULT_DIR, "tflite", 1)
    assert not p.cfg.segment  # the shipped model sees the whole film: the one reframing is for
    return p


@pytest.fixture(scope="module")
def film() -> np.ndarray:
    return rsna_image(CASE)


def _png(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    return path


def _box_height(mask: np.ndarray) -> tuple[float, float]:
    ys = np.nonzero(mask)[0]
    return (ys.max() - ys.min() + 1) / mask.shape[0], (ys.max() + 1) / mask.shape[0]


def test_a_typical_film_is_not_reframed(predictor, film, tmp_path):
    assert rf.reframe(film, predictor._segment(film)) is None
    pred = predictor.predict(_png(tmp_path / "film.png", film), "female")
    assert not pred.mask_quality["metrics"].get("reframed")
    assert not any("framed like" in w for w in pred.warnings)


def test_a_small_hand_on_a_plate_is_framed_like_a_train_radiograph(predictor, film, tmp_path, monkeypatch):
    h, w = film.shape
    plate = np.full((int(h / 0.4), int(w / 0.4)), float(np.median(film[:20])), np.float32)
    plate[100 : 100 + h, 150 : 150 + w] = film  # the film at 40 % of the plate's side
    ref = predictor.predict(_png(tmp_path / "film.png", film), "female").bone_age_months
    pred = predictor.predict(_png(tmp_path / "plate.png", plate), "female")
    # The film is cut out of the plate first (edgeba/film.py), and the cut is always re-framed.
    assert pred.mask_quality["metrics"]["cut"]["kind"] == "small_film"
    assert pred.mask_quality["metrics"]["reframed"]
    assert any("framed like" in w for w in pred.warnings)
    height, bottom = _box_height(pred.mask)
    assert abs(height - rf.TYPICAL_HEIGHT) < 0.03 and bottom > 0.98  # the forearm at the bottom edge
    monkeypatch.setattr("edgeba.film.find_cut", lambda px: None)
    only_reframed = predictor.predict(tmp_path / "plate.png", "female")
    assert only_reframed.mask_quality["metrics"]["reframed"]  # without the cut, re-framing alone
    assert any("of the image height" in w and "framed like" in w for w in only_reframed.warnings)
    monkeypatch.setattr("edgeba.predictor.reframe", lambda *a, **k: None)  # the estimate the two replace
    before = predictor.predict(tmp_path / "plate.png", "female").bone_age_months
    assert abs(pred.bone_age_months - ref) < abs(before - ref) / 2


@pytest.mark.parametrize("deg", [-45, 45])
def test_a_tilted_hand_is_turned_upright(predictor, film, tmp_path, deg):
    pred = predictor.predict(_png(tmp_path / "tilt.png", stress.rotate(film, deg)), "female")
    assert pred.mask_quality["metrics"]["reframed"]
    assert abs(upright_angle(pred.mask)) < 10


def test_an_outline_far_from_upright_does_not_move_the_image():
    mask = np.zeros((400, 300), np.uint8)
    mask[180:220, 20:280] = 1  # a horizontal bar: no hand points that way after the quarter turns
    assert rf.reframe(np.random.default_rng(0).random((400, 300)).astype(np.float32), mask) is None


def test_the_files_pixels_are_framed_as_the_working_copy_is(predictor, film):
    # A file larger than the working copy (preprocess.work_image): the regressor's input is cut from the file's
    # pixels, framed by the same turn and crop, scaled. Shrunk back, that frame is the working copy's frame.
    from edgeba.preprocess import work_image

    tilted = stress.rotate(film, 40)
    big = cv2.resize(tilted, (tilted.shape[1] * 2, tilted.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
    work = work_image(big, tilted.shape[0] if tilted.shape[0] >= tilted.shape[1] else tilted.shape[1])
    r = rf.reframe(work, predictor._segment(work), big)
    assert r is not None and r.source is not None
    assert abs(r.source.shape[0] / r.pixels.shape[0] - 2) < 0.01 and abs(r.source.shape[1] / r.pixels.shape[1] - 2) < 0.01
    back = cv2.resize(r.source, (r.pixels.shape[1], r.pixels.shape[0]), interpolation=cv2.INTER_AREA)
    assert float(np.mean(np.abs(back - r.pixels))) < 0.002  # the same frame up to resampling (0.0004; shifted 2 px: 0.008)
    same = rf.reframe(work, predictor._segment(work), work)
    assert same.source is same.pixels  # a source of the copy's own size is the copy's frame
