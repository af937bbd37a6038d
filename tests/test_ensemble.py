"""An ensemble of regressors as one graph (nets.average_regressors): exactly the members' mean,
saved and reloaded like one regressor, and exported with its last op (one Dense) kept float; members that see
differently preprocessed images get one named input each, and the runtime feeds each its own preprocessing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from runtime_fixtures import *  # noqa: F401,F403

import tensorflow  # noqa: F401  (the test environment installs every extra; missing is a failure)

import keras  # noqa: E402

from edgeba import export  # noqa: E402
from edgeba.training.nets import average_regressors, build_regressor, count_macs  # noqa: E402

REG = 128


def _members(sex_input: bool) -> list[keras.Model]:
    out = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        m = build_regressor("relu", input_size=REG, sex_input=sex_input)
        w, b = m.layers[-1].get_weights()
        m.layers[-1].set_weights([w * 20.0, b + seed])  # members that disagree, outputs that vary
        out.append(m)
    return out


def _feeds(n: int, sex_input: bool) -> dict:
    rng = np.random.default_rng(0)
    feeds = {"image": rng.random((n, REG, REG, 1), dtype=np.float32)}
    if sex_input:
        feeds["sex"] = (np.arange(n) % 2).astype(np.float32)[:, None]
    return feeds


@pytest.mark.parametrize("sex_input", [True, False])
def test_ensemble_is_the_members_mean(tmp_path, sex_input):
    members = _members(sex_input)
    ens = average_regressors(members)
    feeds = _feeds(4, sex_input)
    x = feeds if sex_input else feeds["image"]
    outs = np.stack([m.predict(x, verbose=0) for m in members])
    assert np.ptp(outs, axis=0).min() > 0.1, "members must disagree, or the mean proves nothing"
    np.testing.assert_allclose(ens.predict(x, verbose=0), outs.mean(axis=0), rtol=1e-4, atol=1e-4)
    assert count_macs(ens) == sum(count_macs(m) for m in members)
    assert [t.name.split(":")[0] for t in ens.inputs] == (["image", "sex"] if sex_input else ["image"])
    ens.save(tmp_path / "ens.keras")
    back = keras.models.load_model(tmp_path / "ens.keras")
    np.testing.assert_allclose(back.predict(x, verbose=0), ens.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_members_of_different_sizes_cannot_share_an_input():
    with pytest.raises(ValueError, match="shape of input 'image'"):
        average_regressors([build_regressor("relu", REG, True), build_regressor("relu", 192, True)])


def test_ensemble_exports_to_int8_with_a_float_output(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    average_regressors(_members(True)).save(tmp_path / "ens.keras")
    feeds = _feeds(24, True)
    calib = [{"image": feeds["image"][i : i + 1], "sex": feeds["sex"][i : i + 1]} for i in range(24)]
    entries = export.export_stage(tmp_path / "ens.keras", export.REGRESS, tmp_path, calib, formats=("tflite-fp32", "tflite-int8"), verify=calib[:2])
    it = Interpreter(model_path=str(tmp_path / entries["tflite-int8"]["file"]))
    tensors = it.get_tensor_details()
    fcs = [o for o in it._get_ops_details() if o["op_name"] == "FULLY_CONNECTED"]
    assert tensors[fcs[-1]["outputs"][0]]["dtype"] == np.float32  # months get no int8 step
    convs = [o for o in it._get_ops_details() if o["op_name"] == "CONV_2D"]
    dtypes = [tensors[o["inputs"][1]]["dtype"] for o in convs]
    # export keeps the first conv on each path from the image float (QuantOptions.keep_float "input"): each member's
    assert len(convs) == 2 * 13 and dtypes.count(np.float32) == 2 and dtypes.count(np.int8) == 2 * 13 - 2


def test_members_with_different_targets_average_in_months():
    members = _members(True)
    targets = [{"mean": 120.0, "std": 40.0}, {"mean": 110.0, "std": 50.0}]
    ens = average_regressors(members, targets)
    feeds = _feeds(4, True)
    months = np.mean([m.predict(feeds, verbose=0) * t["std"] + t["mean"] for m, t in zip(members, targets)], axis=0)
    np.testing.assert_allclose(ens.predict(feeds, verbose=0) * 40.0 + 120.0, months, rtol=1e-4, atol=1e-3)


def _mixed() -> tuple[list[keras.Model], keras.Model]:
    """A 128 px member on `image` and a 192 px member on `crop`, with different targets."""
    keras.utils.set_random_seed(3)
    a, b = build_regressor("relu", REG, True), build_regressor("relu", 192, True)
    for m, shift in ((a, 0.0), (b, 1.0)):
        w, bias = m.layers[-1].get_weights()
        m.layers[-1].set_weights([w * 20.0, bias + shift])
    return [a, b], average_regressors([a, b], [{"mean": 120.0, "std": 40.0}, {"mean": 110.0, "std": 50.0}], ["image", "crop"])


def test_members_on_different_inputs_average_in_months(tmp_path):
    members, ens = _mixed()
    rng = np.random.default_rng(1)
    image, crop = rng.random((4, REG, REG, 1), dtype=np.float32), rng.random((4, 192, 192, 1), dtype=np.float32)
    sex = (np.arange(4) % 2).astype(np.float32)[:, None]
    assert [t.name.split(":")[0] for t in ens.inputs] == ["image", "crop", "sex"]
    assert [n for n, _ in export.input_specs(ens)] == ["image", "crop", "sex"]
    months = [members[0].predict({"image": image, "sex": sex}, verbose=0) * 40.0 + 120.0,
              members[1].predict({"image": crop, "sex": sex}, verbose=0) * 50.0 + 110.0]
    assert np.abs(months[0] - months[1]).min() > 1.0, "members must disagree, or the mean proves nothing"
    got = ens.predict({"image": image, "crop": crop, "sex": sex}, verbose=0) * 40.0 + 120.0
    np.testing.assert_allclose(got, np.mean(months, axis=0), rtol=1e-4, atol=1e-3)
    assert count_macs(ens) == sum(count_macs(m) for m in members)


def test_mixed_ensemble_exports_with_each_members_first_conv_float(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    _, ens = _mixed()
    ens.save(tmp_path / "ens.keras")
    rng = np.random.default_rng(2)
    calib = [{"image": rng.random((1, REG, REG, 1), dtype=np.float32), "crop": rng.random((1, 192, 192, 1), dtype=np.float32),
              "sex": np.array([[i % 2]], np.float32)} for i in range(16)]
    entries = export.export_stage(tmp_path / "ens.keras", export.REGRESS, tmp_path, calib,
                                  formats=("tflite-fp32", "tflite-int8", "onnx-int8"), verify=calib[:2])
    assert set(entries) == {"tflite-fp32", "tflite-int8", "onnx-int8"}  # _verify ran each on named feeds
    it = Interpreter(model_path=str(tmp_path / entries["tflite-int8"]["file"]))
    tensors = it.get_tensor_details()
    convs = [o for o in it._get_ops_details() if o["op_name"] == "CONV_2D"]
    dtypes = [tensors[o["inputs"][1]]["dtype"] for o in convs]
    assert dtypes.count(np.float32) == 2 and dtypes.count(np.int8) == len(convs) - 2
    import onnx

    g = onnx.load(str(tmp_path / entries["onnx-int8"]["file"])).graph
    dequantized = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    float_convs = [n for n in convs if n.input[0] not in dequantized]  # fed an unquantized tensor
    assert len(float_convs) == 2 and len(convs) == 2 * 13


def test_predictor_feeds_each_input_its_own_preprocessing(fixture_model, good_image, tmp_path):
    """A model whose regressor sees the whole image on `image` and the hand crop on `crop`: the runtime's
    months are the mean of the members, each run on its own input as edgeba.preprocess makes it."""
    from edgeba.io import load_image  # noqa: F401  (the runtime loads the file itself)
    from edgeba.manifest import sha256
    from edgeba.predictor import Predictor
    from edgeba.preprocess import PreprocessConfig, regressor_input

    base = keras.models.load_model(fixture_model / "regressor.keras", compile=False)
    other = keras.models.clone_model(base)
    other.set_weights([w * 0.5 if w.ndim == 2 else w for w in base.get_weights()])
    target = json.loads((fixture_model / "manifest.json").read_text())["target"]
    ens = average_regressors([base, other], [target, target], ["image", "crop"])
    model = shutil.copytree(fixture_model, tmp_path / "m")
    ens.save(model / "pair.keras")
    data = json.loads((model / "manifest.json").read_text())
    whole = data["preprocess"] | {"segment": False}
    crop = data["preprocess"] | {"enhance": False}
    data["preprocess"], data["extra_inputs"] = whole, {"crop": crop}
    data["stages"]["regress"] = {"keras": {"file": "pair.keras", "sha256": sha256(model / "pair.keras")}}
    (model / "manifest.json").write_text(json.dumps(data))

    p = Predictor(model, "keras", 1)
    pred = p.predict(good_image, "male")
    sex = np.ones((1, 1), np.float32)
    months = []
    for m, cfg in ((base, whole), (other, crop)):
        x = regressor_input(pred.radiograph.pixels, pred.mask, PreprocessConfig.from_dict(cfg))
        months.append(float(m.predict({"image": x[None, :, :, None], "sex": sex}, verbose=0)[0, 0]) * target["std"] + target["mean"])
    assert abs(months[0] - months[1]) > 1.0, "members must disagree, or the mean proves nothing"
    assert pred.bone_age_months == pytest.approx(np.mean(months), abs=1e-3)
