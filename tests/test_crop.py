"""Canonical crop: upright (fingers up, main axis vertical), tight, letterboxed, background zero."""

import cv2
import numpy as np
import pytest

from edgeba.crop import canonical_crop, letterbox, main_axis_angle
from edgeba.io import load_image
from edgeba.segment import bootstrap_mask


def synthetic_hand(angle: float, fingers_up: bool = True, shape=(600, 500)) -> np.ndarray:
    """A palm with a forearm below and five fingers above, rotated counter-clockwise by `angle`."""
    m = np.zeros(shape, np.uint8)
    cx, cy = shape[1] // 2, shape[0] // 2
    cv2.rectangle(m, (cx - 60, cy - 40), (cx + 60, cy + 80), 1, -1)  # palm
    cv2.rectangle(m, (cx - 40, cy + 80), (cx + 40, cy + 230), 1, -1)  # forearm
    for k in range(5):
        x = cx - 56 + k * 26
        cv2.rectangle(m, (x, cy - 160), (x + 14, cy - 40), 1, -1)  # fingers with gaps
    if not fingers_up:
        m = m[::-1].copy()
    rot = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    return cv2.warpAffine(m, rot, (shape[1], shape[0]), flags=cv2.INTER_NEAREST)


def _runs(mask_rows: np.ndarray) -> float:
    return float((np.diff(mask_rows.astype(np.int8), axis=1) == 1).sum(axis=1).mean())


@pytest.mark.parametrize("angle", [-35, -10, 0, 20, 40])
@pytest.mark.parametrize("fingers_up", [True, False])
def test_synthetic_hand_comes_out_upright(angle, fingers_up):
    mask = synthetic_hand(angle, fingers_up)
    pixels = mask.astype(np.float32) * 0.7
    crop, info = canonical_crop(pixels, mask, 128)
    assert crop.shape == (128, 128) and crop.dtype == np.float32
    out = (crop > 0.1).astype(np.uint8)
    assert abs(main_axis_angle(out)) < 4  # main axis vertical again
    rows = np.where(out.any(axis=1))[0]
    quarter = (rows[-1] - rows[0]) // 4
    assert _runs(out[rows[0] : rows[0] + quarter]) > 3  # fingers at the top
    assert _runs(out[rows[-1] - quarter : rows[-1]]) < 1.5  # forearm at the bottom
    assert info.flipped == (not fingers_up) or abs(angle) > 0  # a 180-degree turn only when needed


def test_letterbox_keeps_aspect_and_centres():
    img = np.ones((200, 100), np.float32)
    out, scale, x0, y0 = letterbox(img, 64)
    assert out.shape == (64, 64) and scale == pytest.approx(0.32)
    assert (x0, y0) == (16, 0)
    assert out[:, :16].max() == 0 and out[:, 16:48].min() == pytest.approx(1, abs=1e-5)


def test_real_radiograph_crop_is_tight_and_masked(rsna_case):
    pixels = load_image(rsna_case.image_path).pixels
    mask = bootstrap_mask(pixels)
    crop, info = canonical_crop(pixels, mask, 256)
    assert crop.shape == (256, 256)
    assert 0 <= crop.min() and crop.max() <= 1
    filled = crop > 0
    # The hand fills the letterbox along its long (vertical) side.
    rows = np.where(filled.any(axis=1))[0]
    assert rows[-1] - rows[0] > 220
    assert filled.mean() > 0.15


@pytest.fixture(params=["1377", "10043", "1390"])
def rsna_case(request):
    from edgeba import dataset

    return next(c for c in dataset.cases() if c.id == request.param)
