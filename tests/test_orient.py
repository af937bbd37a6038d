"""Quarter turns (edgeba/orient.py): a landscape or upside-down scan is turned fingers-up before the
U-Net and the regressor see it, so it gets the estimate of the radiograph as stored; an upright
radiograph is never turned."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rsna import rsna_image
from runtime_fixtures import *  # noqa: F401,F403

from edgeba.manifest import DEFAULT_DIR
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
