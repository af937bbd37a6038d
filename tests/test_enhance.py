"""Normalisation and the thesis' sharpening kernel."""

import numpy as np

from edgeba.enhance import THESIS_KERNEL, normalize, sharpen


def test_kernel_is_the_thesis_kernel_and_preserves_flat_areas():
    assert THESIS_KERNEL.sum() == 1
    assert THESIS_KERNEL[1, 1] == 9 and (THESIS_KERNEL.ravel()[[0, 1, 2, 3, 5, 6, 7, 8]] == -1).all()
    flat = np.full((32, 32), 0.4, np.float32)
    assert np.allclose(sharpen(flat)[1:-1, 1:-1], 0.4, atol=1e-6)


def test_sharpen_overshoots_at_edges_and_stays_in_range():
    x = np.zeros((32, 32), np.float32)
    x[:, 16:] = 0.5
    y = sharpen(x)
    assert y.min() >= 0 and y.max() <= 1
    assert y[10, 16] > 0.5  # bright side of the edge is brightened (overshoot)
    assert y[10, 15] == 0  # dark side is pushed down (clipped at 0)
    assert np.allclose(y[10, 20:30], 0.5)


def test_normalize_stretches_the_region_and_zeroes_the_rest():
    rng = np.random.default_rng(0)
    x = np.zeros((64, 64), np.float32)
    x[16:48, 16:48] = rng.uniform(0.3, 0.5, (32, 32))
    y = normalize(x)
    inside = y[16:48, 16:48]
    assert y[:16].max() == 0
    assert inside.min() == 0 and inside.max() == 1
    assert 0.4 < np.median(inside) < 0.6
