"""The regressor variants of edgeba.training.nets: anti-aliased pooling (relu_blur) and loading one
variant's weights into another by layer name (copy_weights)."""

from __future__ import annotations

import numpy as np
import pytest

import tensorflow  # noqa: F401  (the test environment installs every extra; missing is a failure)

import keras  # noqa: E402
from keras import layers  # noqa: E402

from edgeba.training.nets import BLUR, _pool, build_regressor, copy_weights, count_macs  # noqa: E402

SIZE = 128  # 7 poolings: 1 x 1 before the global pooling


def test_blur_variant_has_frozen_binomial_pools_and_the_same_cost():
    plain, blur = build_regressor("relu", SIZE), build_regressor("relu_blur", SIZE)
    blurs = [layer for layer in blur.layers if layer.name.endswith("_blur")]
    assert len(blurs) == 7  # six blocks and the top
    for layer in blurs:
        assert not layer.trainable and layer.strides == (2, 2)
        k = layer.get_weights()[0]
        assert np.allclose(k[:, :, 0, 0], BLUR) and np.allclose(k.sum(axis=(0, 1)), 1.0)
    assert plain.output.shape == blur.output.shape
    assert count_macs(blur) == pytest.approx(count_macs(plain), rel=0.02)


def test_anti_aliased_pooling_is_steadier_under_a_one_pixel_shift():
    x = keras.Input((64, 64, 4))
    pools = {v: keras.Model(x, _pool(x, v, "p")) for v in ("relu", "relu_blur")}
    img = np.random.default_rng(0).random((1, 65, 64, 4), dtype=np.float32)
    a, b = img[:, :-1], img[:, 1:]  # the same content, one pixel apart
    change = {}
    for v, m in pools.items():
        pa, pb = m.predict(a, verbose=0), m.predict(b, verbose=0)
        change[v] = np.abs(pa - pb).mean() / np.abs(pa).mean()
    assert change["relu_blur"] < 0.6 * change["relu"]  # measured: 0.071 vs 0.142


def test_copy_weights_loads_relu_into_relu_blur_by_name():
    keras.utils.set_random_seed(3)
    src, dst = build_regressor("relu", SIZE), build_regressor("relu_blur", SIZE)
    copy_weights(src, dst)
    for layer in src.layers:
        for w_src, w_dst in zip(layer.get_weights(), dst.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(w_src, w_dst)
    # A trainable layer the source lacks is an error, not a silently random layer.
    x = keras.Input((4,))
    small = keras.Model(x, layers.Dense(4, name="a")(x))
    bigger = keras.Model(x, layers.Dense(1, name="b")(layers.Dense(4, name="a")(x)))
    with pytest.raises(ValueError, match="'b'"):
        copy_weights(small, bigger)


def test_relu_s2_sees_twice_the_pixels_for_the_same_cost_and_takes_relu_weights():
    """relu_s2 at 2N px costs what relu costs at N px, and relu's weights load into it unchanged."""

    relu, s2 = build_regressor("relu", 128), build_regressor("relu_s2", 256)
    assert count_macs(s2) == count_macs(relu)
    assert s2.get_layer("b1_conv3").strides == (2, 2) and s2.get_layer("b1_conv3").output.shape[1:3] == (128, 128)
    copy_weights(relu, s2)
    for a, b in zip(relu.get_weights(), s2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_relu_hr_starts_as_relu_on_the_2x2_averaged_image():
    """relu weights loaded into relu_hr at 2N px give relu's output at N px on the 2x2-averaged image
    (the stem's 6x6 stride-2 kernel covers the 3x3 neighbourhood exactly), for +4x the stem's MACs."""

    relu, hr = build_regressor("relu", 128), build_regressor("relu_hr", 256)
    rng = np.random.default_rng(0)
    for w in relu.weights:  # non-trivial BatchNorm statistics, so a misalignment cannot hide
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype(np.float32))
        elif "moving_mean" in w.path:
            w.assign(rng.normal(0, 0.1, w.shape).astype(np.float32))
    copy_weights(relu, hr)
    x = rng.uniform(0, 1, (2, 256, 256, 1)).astype(np.float32)
    sex = np.array([[0.0], [1.0]], np.float32)
    half = x.reshape(2, 128, 2, 128, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(hr.predict({"image": x, "sex": sex}, verbose=0),
                               relu.predict({"image": half, "sex": sex}, verbose=0), rtol=1e-4, atol=1e-4)
    stem = hr.get_layer("b1_conv3")
    assert stem.kernel.shape == (6, 6, 1, 32) and stem.output.shape[1:3] == (128, 128)
    assert count_macs(hr) - count_macs(relu) == 128 * 128 * 32 * (36 - 9)
