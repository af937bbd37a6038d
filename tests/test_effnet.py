"""EfficientNet-Lite0 with ImageNet weights (edgeba/training/effnet.py): every tensor of the shared
weights file is used exactly once with its shape, and a grey image through the one-channel stem gives
the three-channel network's features."""

from __future__ import annotations

import numpy as np
import pytest

import tensorflow  # noqa: F401  (the test environment installs every extra; missing is a failure)

import keras  # noqa: E402

from edgeba import dataset  # noqa: E402
from edgeba.training import effnet  # noqa: E402
from edgeba.training.nets import build_regressor, count_macs  # noqa: E402

WEIGHTS = dataset.rsna_root().parent.parent / "weights" / "efficientnet_lite0_imagenet.npz"


@pytest.fixture(scope="module")
def tensors():
    assert WEIGHTS.exists(), f"{WEIGHTS} missing (../shared/weights)"
    with np.load(WEIGHTS) as z:
        return {k: z[k] for k in z.files}


def test_every_imagenet_tensor_is_used_exactly_once_with_its_shape(tensors):
    model = effnet.build(96, sex_input=True, channels=3)
    used = effnet.load_imagenet(model, WEIGHTS)
    assert len(used) == len(set(used))
    assert set(used) == {k for k in tensors if not k.startswith("_fc.")}  # only the ImageNet classifier is left out
    assert len(used) == 245 and len(tensors) == 247
    # The values landed where the names say, in Keras layout.
    dw = model.get_layer("block5_dw_dwconv").get_weights()[0]
    assert np.array_equal(dw, tensors["_blocks.5._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    mean = model.get_layer("head_bn").get_weights()[2]
    assert np.array_equal(mean, tensors["_bn1.running_mean"])


def test_a_tensor_of_the_wrong_shape_or_a_missing_layer_raises(tmp_path, tensors):
    bad = dict(tensors)
    bad["_blocks.3._project_conv.weight"] = bad["_blocks.3._project_conv.weight"][:, :-1]
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="block3_project_conv"):
        effnet.load_imagenet(effnet.build(96, sex_input=False), tmp_path / "bad.npz")
    short = {k: v for k, v in tensors.items() if not k.startswith("_blocks.15.")}
    np.savez(tmp_path / "short.npz", **short)
    with pytest.raises(KeyError, match="_blocks.15"):
        effnet.load_imagenet(effnet.build(96, sex_input=False), tmp_path / "short.npz")


def test_grey_input_through_the_one_channel_stem_equals_the_three_channel_network():
    grey, rgb = effnet.build(128, sex_input=False, channels=1), effnet.build(128, sex_input=False, channels=3)
    effnet.load_imagenet(grey, WEIGHTS)
    effnet.load_imagenet(rgb, WEIGHTS)
    f1 = keras.Model(grey.input, grey.get_layer("gap").output)
    f3 = keras.Model(rgb.input, rgb.get_layer("gap").output)
    x = np.random.default_rng(0).random((2, 128, 128, 1)).astype(np.float32)
    a, b = np.asarray(f1(x, training=False)), np.asarray(f3(np.repeat(x, 3, axis=-1), training=False))
    assert np.abs(a).mean() > 0.01  # features are not trivially zero
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_regressor_variant_takes_the_usual_inputs_and_costs_what_the_readme_says():
    model = build_regressor("effnet_lite0", 320)
    assert [t.name.split(":")[0] for t in model.inputs] == ["image", "sex"]
    assert tuple(model.inputs[0].shape) == (None, 320, 320, 1) and tuple(model.output.shape) == (None, 1)
    # The weights README: 0.78 GMAC at 320 px without the classifier (ours: a grey stem, a small head).
    assert count_macs(model) / 1e9 == pytest.approx(0.77, abs=0.02)
