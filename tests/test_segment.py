"""segment: bootstrap masks on real radiographs, U-Net letterbox I/O round trip, no ML imports."""

import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from edgeba import dataset
from edgeba.segment import Letterbox, bootstrap_mask, fill_holes, largest_component, mask_from_prob, unet_input

# Train-split ids with annotated keypoints (never val).
REAL = ["1378", "1383", "1384", "1389"]

from rsna import rsna_image  # noqa: E402




def iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("case_id", REAL)
def test_bootstrap_covers_annotated_keypoints(case_id):
    pixels = rsna_image(case_id)
    t = time.perf_counter()
    m = bootstrap_mask(pixels)
    assert time.perf_counter() - t < 2.0
    assert m.dtype == np.uint8 and m.shape == pixels.shape and set(np.unique(m)) == {0, 1}
    pts = dataset.keypoints()[case_id]["points"].round().astype(int)
    assert m[pts[:, 1], pts[:, 0]].all()  # all 21 keypoints inside: made without them
    assert 0.1 < m.mean() < 0.7
    n, _ = cv2.connectedComponents(m)
    assert n == 2  # one component plus background


def test_bootstrap_without_hand_is_flagged():
    """An exposed field with no hand gives some mask, and the QC flags it instead of passing it on."""
    from edgeba.quality import mask_quality

    rng = np.random.default_rng(0)
    film = np.full((1000, 760), 0.15, np.float32)
    film[120:880, 90:670] = 0.5  # collimation field
    film[200:260, 560:600] = 0.95  # lead marker
    film += 0.02 * rng.standard_normal(film.shape).astype(np.float32)
    m = bootstrap_mask(np.clip(film, 0, 1))
    assert m.shape == film.shape
    assert not mask_quality(m).ok


@pytest.mark.parametrize("shape", [(1000, 760), (700, 1024), (512, 512)])
def test_unet_input_letterbox(shape):
    rng = np.random.default_rng(1)
    pixels = rng.random(shape, dtype=np.float32)
    x, lb = unet_input(pixels, 128)
    assert x.shape == (128, 128) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    assert max(lb.height, lb.width) == 128
    assert abs(lb.height / lb.width - shape[0] / shape[1]) < 0.02  # aspect kept
    pad = np.ones((128, 128), bool)
    pad[lb.top : lb.top + lb.height, lb.left : lb.left + lb.width] = False
    assert (x[pad] == 0).all()
    assert x[~pad].mean() > 0.2


def test_mask_round_trip_through_letterbox():
    """A mask letterboxed like its image and mapped back matches the original (only edge blur lost)."""
    m = np.zeros((1000, 760), np.uint8)
    cv2.ellipse(m, (380, 550), (150, 130), 0, 0, 360, 1, -1)
    for tip in ((150, 300), (300, 120), (420, 100), (540, 150), (650, 330)):
        cv2.line(m, (380, 550), tip, 1, thickness=45)
    x, lb = unet_input(m.astype(np.float32), 128)
    back = mask_from_prob(x, lb, m.shape)
    assert back.shape == m.shape and back.dtype == np.uint8
    assert iou(back, m) > 0.95
    assert (mask_from_prob(x[None, :, :, None], lb, m.shape) == back).all()  # model-shaped input


def test_mask_from_prob_cleans_up():
    lb = Letterbox(scale=0.25, top=0, left=0, height=128, width=128)
    prob = np.zeros((128, 128), np.float32)
    prob[20:100, 20:100] = 0.9
    prob[50:60, 50:60] = 0.1  # hole inside the hand: bone, must be filled
    prob[5:10, 110:120] = 0.9  # stray blob: dropped
    m = mask_from_prob(prob, lb, (512, 512))
    assert m.shape == (512, 512)
    assert m[220, 220] == 1
    assert m[30, 460] == 0
    n, _ = cv2.connectedComponents(m)
    assert n == 2


def test_mask_from_prob_drops_strip_along_film_edge():
    """A two-model-pixel band along the bottom edge (bright film border) is below the U-Net's
    resolution and must not widen the mask; the forearm that leaves through that edge stays."""
    lb = Letterbox(scale=0.125, top=0, left=0, height=128, width=128)
    prob = np.zeros((128, 128), np.float32)
    prob[30:100, 40:90] = 0.9  # hand
    prob[100:128, 55:75] = 0.9  # forearm to the bottom edge
    prob[126:, :] = 0.9  # strip along the bottom edge, 2 model px
    m = mask_from_prob(prob, lb, (1024, 1024))
    assert m[1020, 10] == 0 and m[1020, 1010] == 0
    assert m[1020, 520] == 1


def test_helpers():
    m = np.zeros((50, 50), np.uint8)
    m[5:30, 5:30] = 1
    m[10:20, 10:20] = 0
    m[40:45, 40:45] = 1
    assert fill_holes(m)[15, 15] == 1
    assert largest_component(m)[42, 42] == 0 and largest_component(m)[6, 6] == 1


def test_segment_imports_no_ml_framework():
    code = "import sys, edgeba.segment, edgeba.quality; sys.exit(any(k in sys.modules for k in ('keras', 'tensorflow', 'jax')))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_unet_design_fits_int8_and_budget():
    """The exported graph: batch 1, input 'image', sigmoid output, bounded activations, no concat."""
    import keras  # noqa: F401  (the test environment installs every extra; missing is a failure)
    from keras import layers

    from edgeba.training.unet import build_unet, conv_macs

    m = build_unet(128, 8)
    assert m.input.shape == (1, 128, 128, 1) and m.inputs[0].name == "image"
    assert m.output.shape == (1, 128, 128, 1)
    assert conv_macs(m) <= 0.3e9
    kinds = {type(layer) for layer in m.layers}
    assert layers.Concatenate not in kinds and layers.Conv2DTranspose not in kinds
    assert all(layer.max_value == 6.0 for layer in m.layers if isinstance(layer, layers.ReLU))
    convs = [layer for layer in m.layers if isinstance(layer, layers.Conv2D)]
    assert all(not c.use_bias for c in convs[:-1])  # every hidden conv is followed by BatchNorm
    y = np.asarray(m(np.random.default_rng(0).random((1, 128, 128, 1), dtype=np.float32)))
    assert 0 <= y.min() and y.max() <= 1
