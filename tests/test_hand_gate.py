"""The U-Net's gate for models that see the whole image: refuse no-hand images, tolerate leaky outlines."""

import cv2
import numpy as np

from edgeba import dataset
from edgeba.io import load_image
from edgeba.quality import hand_present, mask_quality
from edgeba.segment import bootstrap_mask


def _mask(case_id: str) -> np.ndarray:
    case = next(c for c in dataset.cases() if c.id == case_id)
    return bootstrap_mask(load_image(case.image_path).pixels)


def test_real_hand_passes_both_checks():
    q = mask_quality(_mask("10108"))
    assert q.ok and hand_present(q)


def test_real_leaky_mask_fails_qc_but_shows_a_hand():
    q = mask_quality(_mask("10043"))  # its bootstrap mask runs along the collimation edge
    assert not q.ok and any("straight edge" in r for r in q.reasons)
    assert hand_present(q)


def test_leaky_outline_is_still_a_hand():
    mask = _mask("10108")
    leaky = mask.copy()
    h, w = leaky.shape
    leaky[h // 2 :, : w // 12] = 1  # a slab along the border, as when the mask runs into the collimation edge
    q = mask_quality(leaky)
    assert not q.ok
    assert hand_present(q)


def test_no_hand_is_refused():
    blob = np.zeros((800, 600), np.uint8)
    cv2.ellipse(blob, (300, 400), (150, 250), 0, 0, 360, 1, -1)  # a convex body, no fingers
    assert not hand_present(mask_quality(blob))
    assert not hand_present(mask_quality(np.zeros((800, 600), np.uint8)))
    full = np.ones((800, 600), np.uint8)
    assert not hand_present(mask_quality(full))
