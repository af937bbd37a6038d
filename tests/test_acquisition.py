"""Training views under acquisition changes (edgeba/training/acquisition.py) and the mix pool's splits."""

import numpy as np
import pytest

from edgeba import dataset
from edgeba.preprocess import PreprocessConfig, crop_stage
from edgeba.training import acquisition
from edgeba.training.crops import load_crop_cache, write_crop_cache
from edgeba.training.regressor import RegressorConfig, load_mix_pool


def test_the_plan_draws_different_changes_per_image_reproducibly_and_never_val():
    cases = [c for c in dataset.cases() if c.split in ("train", "tune")][:50]
    plan = acquisition.plan(cases, 2)
    assert plan == acquisition.plan(cases, 2) and plan != acquisition.plan(cases, 2, seed=1)
    by_case = {}
    for c, name in plan:
        by_case.setdefault(c.id, []).append(name)
    assert all(len(set(v)) == 2 for v in by_case.values()) and len(by_case) == 50
    assert {n for _, n in plan} == set(acquisition.DRAWS)  # every change is drawn somewhere


def test_the_training_draws_are_wider_than_the_suites():
    """The suite measures; training must not be its copy: another seed and wider ranges."""
    from edgeba import stress

    assert acquisition.SEED != stress.SEED
    img = np.full((200, 160), 0.1, np.float32)
    mask = np.zeros_like(img, np.uint8)
    mask[60:140, 50:110] = 1
    rng = np.random.default_rng(0)
    levels = [float(np.median(acquisition.DRAWS["bright_plate"](img, mask, rng)[:20])) for _ in range(60)]
    assert min(levels) < 0.55 and max(levels) > 0.9  # the suite draws 0.6-0.9
    sigmas = [float(np.std(acquisition.DRAWS["noise"](img, mask, rng) - img)) for _ in range(60)]
    assert min(sigmas) < 0.02 and max(sigmas) > 0.05  # the suite adds 0.04
    # Turns drawn from -35 to +35 degrees (the suite turns by 15, 30 and 45 exactly): the canvas that holds the turned
    # film grows with the angle, from nothing at 0 to about 1.9x its area at 30 degrees.
    growth = [float(np.prod(acquisition.DRAWS["rotation"](img, mask, rng).shape)) / img.size for _ in range(60)]
    assert min(growth) < 1.15 and max(growth) > 1.8 and len({round(g, 2) for g in growth}) > 30


def test_a_variant_is_what_the_pipeline_prepares_for_the_regressor(tmp_path):
    """The cached crop = the geometry stage of the pipeline's own pixels and mask for that variant file."""
    from edgeba.predictor import Predictor
    from edgeba import stress

    case = next(c for c in dataset.cases() if c.split == "train")
    img = stress.read_raw(case)
    masks = tmp_path / "masks"
    masks.mkdir()
    import cv2

    p0 = Predictor(None, "tflite", threads=1).predict(case.image_path, "male" if case.male else "female")
    mask0 = p0.source_mask()  # the mask cache holds masks at the file's resolution
    assert mask0.shape == img.shape
    cv2.imwrite(str(masks / f"{case.id}.png"), mask0 * 255)
    acquisition._start(None, "tflite")
    crop, ok = acquisition.variant_crop(case, "noise", masks)
    rng = np.random.default_rng([acquisition.SEED, int(case.id), list(acquisition.DRAWS).index("noise")])
    path = tmp_path / "v.png"
    stress._write(path, acquisition.DRAWS["noise"](img, mask0, rng))
    p = Predictor(None, "tflite", threads=1).predict(path, "male" if case.male else "female")
    cfg = acquisition._predictor.cfg
    expect = np.round(crop_stage(p.source_pixels, p.source_mask(), cfg) * 255).astype(np.uint8)
    assert crop.dtype == np.uint8 and np.array_equal(crop, expect) and ok == p.mask_quality["ok"]
    assert not np.array_equal(crop, np.round(crop_stage(p0.radiograph.pixels, p0.mask, cfg) * 255).astype(np.uint8))


@pytest.mark.parametrize("fit_tune, splits", [(False, {"train"}), (True, {"train", "tune"})])
def test_the_mix_pool_holds_the_fitted_splits_only(tmp_path, fit_tune, splits):
    cfg = PreprocessConfig(input_size=8, segment=False)
    split = ["train", "tune", "val", "train"]
    path = write_crop_cache(tmp_path / "m.npz", cfg, ["a", "b", "c", "d"], [10, 20, 30, 40], [0, 1, 0, 1], split,
                            [True] * 4, np.zeros((4, 8, 8), np.uint8))
    crops, male, target = load_mix_pool(RegressorConfig(preprocess=cfg, mix_cache=str(path), mix_per_batch=1, fit_tune=fit_tune),
                                        {"mean": 0.0, "std": 10.0})
    ages = sorted(target * 10)
    want = sorted(a for a, s in zip([10, 20, 30, 40], split) if s in splits)
    assert ages == pytest.approx(want) and len(crops) == len(male) == len(want)
    assert load_crop_cache(path)["split"].tolist() == split
