"""The runtime pipeline in-process: stage timings, test-time augmentation, sex handling."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from runtime_fixtures import *  # noqa: F401,F403

from edgeba.errors import InputError
from edgeba.io import load_image
from edgeba.predictor import Predictor
from edgeba.preprocess import TTA_VIEWS, regressor_inputs_tta


def test_stages_are_timed(fixture_model, good_image):
    pred = Predictor(fixture_model, "tflite", 1).predict(good_image, "female")
    assert set(pred.timings_ms) == {"load", "segment", "preprocess", "regress", "total"}
    assert pred.timings_ms["total"] >= sum(v for k, v in pred.timings_ms.items() if k != "total") * 0.99
    assert pred.tta_views == 1 and pred.sex == "female" and pred.mask.shape == pred.radiograph.shape


@pytest.mark.parametrize("how", ["manifest", "caller"])
def test_tta_averages_the_views_when_the_manifest_or_the_caller_asks(fixture_model, good_image, tmp_path, how):
    model = fixture_model
    if how == "manifest":
        model = shutil.copytree(fixture_model, tmp_path / "m")
        data = json.loads((model / "manifest.json").read_text())
        (model / "manifest.json").write_text(json.dumps(data | {"tta": True}))
    p = Predictor(model, "tflite", 1, tta=True if how == "caller" else None)
    pred = p.predict(good_image, "male")
    views = regressor_inputs_tta(load_image(good_image).pixels, pred.mask, p.cfg)
    outs = [p.regressor.run({"image": v[None, :, :, None], "sex": np.ones((1, 1), np.float32)}).item() for v in views]
    mean, std = p.target
    assert pred.tta_views == len(TTA_VIEWS)
    assert pred.bone_age_months == pytest.approx(np.mean(outs) * std + mean, abs=1e-4)


def test_caller_can_turn_a_manifests_tta_off(fixture_model, good_image, tmp_path):
    model = shutil.copytree(fixture_model, tmp_path / "m")
    data = json.loads((model / "manifest.json").read_text())
    (model / "manifest.json").write_text(json.dumps(data | {"tta": True}))
    assert Predictor(model, "tflite", 1, tta=False).predict(good_image, "male").tta_views == 1


def test_invalid_sex_value(fixture_model, good_image):
    with pytest.raises(InputError, match="male' or 'female"):
        Predictor(fixture_model, "tflite", 1).predict(good_image, "m")


def _edit_manifest(src, dst, edit):
    model = shutil.copytree(src, dst)
    data = json.loads((model / "manifest.json").read_text())
    edit(data)
    (model / "manifest.json").write_text(json.dumps(data))
    return model


def test_whole_image_model_without_unet_warns(fixture_model, good_image, tmp_path):
    def no_unet(d):
        d["preprocess"]["segment"] = False
        del d["stages"]["segment"]

    pred = Predictor(_edit_manifest(fixture_model, tmp_path / "m", no_unet), "tflite", 1).predict(good_image, "male")
    assert pred.mask is None and pred.mask_quality is None and "segment" not in pred.timings_ms
    assert any("nothing checked that the image shows a hand" in w for w in pred.warnings)


def test_cropping_model_without_unet_is_a_model_error(fixture_model, tmp_path):
    from edgeba.errors import ModelError

    model = _edit_manifest(fixture_model, tmp_path / "m", lambda d: d["stages"].pop("segment"))
    with pytest.raises(ModelError, match="segment"):
        Predictor(model, "tflite", 1)


def test_whole_image_model_accepts_a_leaky_mask_with_a_warning(fixture_model, good_image, tmp_path, monkeypatch):
    """A regressor that sees the whole image only needs the U-Net to prove there is a hand."""
    from edgeba import hand
    from edgeba.quality import MaskQuality

    leaky = MaskQuality(False, {"area_frac": 0.4, "finger_gaps": 4}, ["outline has a long straight edge"])
    monkeypatch.setattr(hand, "mask_quality", lambda mask: leaky)  # the hand finder's QC (edgeba/hand.py)
    model = _edit_manifest(fixture_model, tmp_path / "m", lambda d: d["preprocess"].update(segment=False))
    pred = Predictor(model, "tflite", 1).predict(good_image, "male")
    assert pred.mask_quality["ok"] is False and any("does not crop to it" in w for w in pred.warnings)
