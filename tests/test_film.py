"""A collimated film is cut to its exposed field, a small film out of its plate (edgeba/film.py), before anything
looks at it; a film as stored, with a black border, on a bright plate or with markers is not cut. Real radiographs are read from the data
folder at test time; nothing derived from them is written outside tmp_path."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rsna import rsna_image

from edgeba import film as fm
from edgeba import stress
from edgeba.manifest import DEFAULT_DIR
from edgeba.predictor import Predictor
from edgeba.segment import bootstrap_mask

CASE = "10108"


@pytest.fixture(scope="module")
def film() -> np.ndarray:
    return rsna_image(CASE)


def _framed(film: np.ndarray, level: float = 0.75) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`film` inside a bright frame (12/8 % above/below, 15/10 % left/right), as the stress suite's collimation makes it."""
    h, w = film.shape
    t, b, l, r = int(0.12 * h), int(0.08 * h), int(0.15 * w), int(0.1 * w)
    return stress.collimate(film, (t, b, l, r), level, np.random.default_rng(0)), (t, t + h, l, l + w)


def _png(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    return path


def test_the_field_of_a_collimated_film_is_the_film(film):
    img, (y0, y1, x0, x1) = _framed(film)
    cut = fm.find_cut(img)
    assert cut is not None and cut.kind == "field"
    box = cut.box
    # The trimmed box is the film to within the penumbra: no frame line left in, no film line cut off.
    assert np.abs(np.array(box) - np.array([y0, y1, x0, x1])).max() <= 3, (box, (y0, y1, x0, x1))


@pytest.mark.parametrize("make", [
    lambda f, m, r: f,  # as stored
    lambda f, m, r: stress.dark_borders(f, r),
    lambda f, m, r: stress.bright_plate(f, m, r),  # the box is the hand itself: no frame around film
    lambda f, m, r: stress.markers(f, m, r),
], ids=["stored", "dark_borders", "bright_plate", "markers"])
def test_no_cut_without_a_bright_frame_or_a_larger_plate(film, make):
    img = make(film, bootstrap_mask(film), np.random.default_rng(1))
    assert fm.find_cut(img) is None


def test_a_small_film_on_a_plate_is_cut_out_with_a_margin(film):
    plate = stress.small_on_plate(film, np.random.default_rng(2), scales=(0.35, 0.35))
    cut = fm.find_cut(plate)
    assert cut is not None and cut.kind == "small_film"
    y0, y1, x0, x1 = cut.box
    assert (y1 - y0) * (x1 - x0) < 0.6 * plate.size  # a part of the plate, not the plate
    # The film (the part that is not plate) is inside the cut: the cut's edges are plate.
    for edge in (plate[y0, x0:x1], plate[y1 - 1, x0:x1], plate[y0:y1, x0], plate[y0:y1, x1 - 1]):
        assert abs(float(np.median(edge)) - stress._border_level(plate)) < 0.05


def test_a_faint_film_on_a_plate_with_an_exposure_gradient_is_cut_out(film, monkeypatch):
    # Train 3508, 1395, 4319 under the suite's small_on_plate were refused: the plate's gradient departs from its
    # border's median by more than a low-contrast film's range allows, so the whole image "differed from the plate".
    from edgeba import hand

    faint = 0.2 + 0.08 * film  # a film with 8 % of the grey scale in it
    h, w = faint.shape
    small = cv2.resize(faint, (int(0.4 * w), int(0.4 * h)), interpolation=cv2.INTER_AREA)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    level = stress._border_level(faint)
    plate = level + 0.04 * gx / w - 0.03 * gy / h + np.random.default_rng(3).normal(0, 0.01, (h, w)).astype(np.float32)
    y, x = h - small.shape[0] - 20, 30  # near the bottom left corner
    plate[y : y + small.shape[0], x : x + small.shape[1]] = small
    plate = np.clip(plate, 0, 1).astype(np.float32)
    monkeypatch.setattr(hand, "PLATE_GRADIENT", False)
    assert fm.find_cut(plate) is None  # what the border's median level alone finds: the whole image
    monkeypatch.setattr(hand, "PLATE_GRADIENT", True)
    cut = fm.find_cut(plate)
    assert cut is not None and cut.kind == "small_film"
    y0, y1, x0, x1 = cut.box
    assert (y1 - y0) * (x1 - x0) < 0.5 * plate.size
    by0, by1, bx0, bx1 = hand.film_box(plate)
    tol = 0.02 * max(h, w)  # film_box looks at 256 px, blurred
    assert y - tol <= by0 and by1 <= y + small.shape[0] + tol and x - tol <= bx0 and bx1 <= x + small.shape[1] + tol  # the film


def test_scaled_box_shrinks_inwards_to_whole_pixels():
    assert fm.scaled_box((10, 20, 5, 15), (100, 50), (200, 100)) == (20, 40, 10, 30)
    assert fm.scaled_box((1, 3, 1, 3), (3, 3), (4, 4)) == (2, 4, 2, 4)  # 1.33 -> 2, 4.0 -> 4
    assert fm.scaled_box((1, 2, 1, 2), (3, 3), (4, 4)) == (2, 3, 2, 3)  # 1.33 -> 2, 2.67 -> 2: one line kept


def test_a_collimated_film_is_estimated_as_the_film_itself(film, tmp_path, monkeypatch):
    p = Predictor(DEFAULT_DIR, "tflite", 1)
    img, (y0, y1, x0, x1) = _framed(film)
    plain = p.predict(_png(tmp_path / "film.png", film), "male")
    framed = p.predict(_png(tmp_path / "framed.png", img), "male")
    assert plain.mask_quality["metrics"]["cut"] is None and not any("collimation" in w for w in plain.warnings)
    cut = framed.mask_quality["metrics"]["cut"]
    assert cut["kind"] == "field" and any("collimation frame" in w for w in framed.warnings)
    box = cut["box"]
    assert abs(box[1] - box[0] - film.shape[0]) <= 4 and abs(box[3] - box[2] - film.shape[1]) <= 4
    assert framed.source_pixels.shape == (box[1] - box[0], box[3] - box[2])
    # Within 3 months: moving the film edge by one line of ~960 moves this whole-image model by 1-2 months (session 13).
    assert abs(framed.bone_age_months - plain.bone_age_months) <= 3.0, (framed.bone_age_months, plain.bone_age_months)
    # Without the cut the frame moves the estimate by more than that (what the cut is for).
    monkeypatch.setattr(fm, "find_cut", lambda px: None)
    uncut = p.predict(tmp_path / "framed.png", "male")
    assert abs(uncut.bone_age_months - plain.bone_age_months) > abs(framed.bone_age_months - plain.bone_age_months) + 1.0, uncut.bone_age_months
