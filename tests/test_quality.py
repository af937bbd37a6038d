"""mask_quality: synthetic shapes with known answers, real bootstrap masks, and its speed."""

import time

import cv2
import numpy as np
import pytest

from edgeba.quality import mask_quality

from rsna import rsna_image  # noqa: E402




def hand(h: int = 1000, w: int = 760, forearm: bool = True) -> np.ndarray:
    """A drawn left hand: palm, five spread fingers, forearm leaving through the bottom."""
    m = np.zeros((h, w), np.uint8)
    cx, cy = w // 2, int(h * 0.55)
    cv2.ellipse(m, (cx, cy), (int(w * 0.2), int(h * 0.13)), 0, 0, 360, 1, -1)
    for angle in (-60, -22, -5, 12, 30):  # thumb far out, four fingers fanned
        a = np.deg2rad(angle)
        length = h * (0.25 if angle == -60 else 0.35)
        tip = (int(cx + np.sin(a) * length), int(cy - np.cos(a) * length))
        cv2.line(m, (cx, cy), tip, 1, thickness=int(w * 0.06))
    if forearm:
        cv2.rectangle(m, (cx - int(w * 0.12), cy), (cx + int(w * 0.12), h - 1), 1, -1)
    return m


def test_drawn_hand_passes():
    q = mask_quality(hand())
    assert q.ok, q.reasons
    assert q.metrics["finger_gaps"] >= 3
    assert q.metrics["border_sides"] == ["bottom"]
    assert q.metrics["components"] == 1


def test_empty_mask_fails():
    q = mask_quality(np.zeros((500, 400), np.uint8))
    assert not q.ok and q.reasons == ["empty mask"]


def test_collimation_plate_fails():
    """A bright field mistaken for the hand: convex, no fingers."""
    m = np.zeros((1000, 760), np.uint8)
    m[100:900, 80:680] = 1
    q = mask_quality(m)
    assert not q.ok
    assert q.metrics["solidity"] > 0.95 and q.metrics["finger_gaps"] == 0


def test_second_large_region_fails():
    m = hand()
    m[20:200, 20:150] = 1  # a label the size of a palm, apart from the hand
    q = mask_quality(m)
    assert not q.ok and any("second large region" in r for r in q.reasons)


def test_small_marker_is_tolerated():
    m = hand()
    m[30:45, 30:42] = 1  # a lead "L" that survived: tiny
    assert mask_quality(m).ok


def test_touching_opposite_borders_fails():
    m = hand()
    m[:, 370:400] = 1  # a strip from top to bottom
    q = mask_quality(m)
    assert not q.ok and any("borders" in r for r in q.reasons)


def test_leak_along_collimation_edge_fails():
    m = hand()
    m[250:999, 620:650] = 1  # straight band beside the hand, joined to it at the bottom
    m[960:999, 380:650] = 1
    q = mask_quality(m)
    assert not q.ok
    assert q.metrics["straight"] > 0.45 or len(q.metrics["border_sides"]) > 1 or q.metrics["border_ratio"][0] > 0.9


def test_too_small_fails():
    m = cv2.resize(hand(forearm=False), None, fx=0.25, fy=0.25, interpolation=cv2.INTER_NEAREST)
    big = np.zeros((1000, 760), np.uint8)
    big[400 : 400 + m.shape[0], 300 : 300 + m.shape[1]] = m
    q = mask_quality(big)
    assert not q.ok and any("covers" in r for r in q.reasons)


def test_resolution_independent():
    a, b = mask_quality(hand()), mask_quality(cv2.resize(hand(), (380, 500), interpolation=cv2.INTER_NEAREST))
    assert a.ok == b.ok and abs(a.metrics["solidity"] - b.metrics["solidity"]) < 0.02


def test_fast_enough_for_inference():
    m = hand(2044, 1514)
    mask_quality(m)
    t = time.perf_counter()
    for _ in range(5):
        mask_quality(m)
    assert (time.perf_counter() - t) / 5 < 0.05


@pytest.mark.parametrize("case_id", ["1378", "1383", "1384"])
def test_real_bootstrap_masks_pass(case_id):
    from edgeba.segment import bootstrap_mask

    q = mask_quality(bootstrap_mask(rsna_image(case_id)))
    assert q.ok, q.reasons
    assert 0.1 < q.metrics["area_frac"] < 0.7
