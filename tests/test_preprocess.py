"""The one preprocessing chain (what training, export calibration and inference all call)."""

import numpy as np
import pytest

from edgeba import dataset
from edgeba.io import load_image
from edgeba.preprocess import PreprocessConfig, crop_stage, enhance_stage, regressor_input
from edgeba.segment import bootstrap_mask


@pytest.fixture(scope="module")
def radiograph():
    case = next(c for c in dataset.cases() if c.id == "10043")
    pixels = load_image(case.image_path).pixels
    return pixels, bootstrap_mask(pixels)


def test_regressor_input_shape_range_and_determinism(radiograph):
    pixels, mask = radiograph
    cfg = PreprocessConfig(input_size=192)
    a = regressor_input(pixels, mask, cfg)
    b = regressor_input(pixels, mask, cfg)
    assert a.shape == (192, 192) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b)


def test_enhance_flag_is_the_only_difference(radiograph):
    pixels, mask = radiograph
    on = regressor_input(pixels, mask, PreprocessConfig(enhance=True))
    off = regressor_input(pixels, mask, PreprocessConfig(enhance=False))
    assert np.array_equal(on > 0, off > 0) or (on > 0).sum() >= (off > 0).sum() * 0.95
    assert np.abs(on - off).mean() > 0.02  # sharpening really changes the image


def test_chain_is_crop_then_enhance(radiograph):
    pixels, mask = radiograph
    cfg = PreprocessConfig()
    assert np.array_equal(regressor_input(pixels, mask, cfg), enhance_stage(crop_stage(pixels, mask, cfg), cfg))


def test_without_segmentation_the_whole_image_is_used(radiograph):
    pixels, _ = radiograph
    cfg = PreprocessConfig(segment=False)
    x = regressor_input(pixels, None, cfg)
    assert x.shape == (256, 256)
    with pytest.raises(ValueError, match="mask"):
        regressor_input(pixels, None, PreprocessConfig(segment=True))


def test_config_round_trips_through_a_manifest_dict():
    cfg = PreprocessConfig(input_size=224, enhance=False)
    assert PreprocessConfig.from_dict({**cfg.to_dict(), "unknown_key": 1}) == cfg


def test_crop_is_on_8bit_levels_like_the_training_cache(radiograph):
    """Training reads uint8 crops; inference must feed bit-identical values to the enhance stage."""
    pixels, mask = radiograph
    crop = crop_stage(pixels, mask, PreprocessConfig())
    assert np.array_equal(crop, np.round(crop * 255) / 255)
    cached = np.round(crop * 255).astype(np.uint8).astype(np.float32) / 255.0
    assert np.array_equal(enhance_stage(cached, PreprocessConfig()), enhance_stage(crop, PreprocessConfig()))


def test_crop_levels_do_not_depend_on_the_resampling_order():
    """x86 and ARM builds of OpenCV sum an area average in different orders; where the average of 8-bit
    pixels is a half level, a float32 sum then rounds to different levels on the two machines (the
    aarch64 parity check failed that way). Here an independent summation order stands in for the other
    machine: 2x2 block means of an 8-bit image, half of them exact half levels, must round the same."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (512, 512))
    pixels = (codes.astype(np.float32) / 255).astype(np.float32)  # as edgeba.io loads an 8-bit file
    crop = crop_stage(pixels, None, PreprocessConfig(segment=False))
    other_order = pixels.astype(np.float64).reshape(256, 2, 256, 2).transpose(0, 2, 1, 3).reshape(256, 256, 4)
    other_order = (other_order[..., 3] + other_order[..., 1] + other_order[..., 2] + other_order[..., 0]) / 4
    assert (codes.reshape(256, 2, 256, 2).sum(axis=(1, 3)) % 4 == 2).mean() > 0.2  # many exact ties
    assert np.array_equal(np.round(crop * 255), np.round(np.clip(other_order, 0, 1) * 255))
