"""An ensemble of regressors as one graph (nets.average_regressors): exactly the members' mean,
saved and reloaded like one regressor, and exported with its last op (one Dense) kept float."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_mismatched_members_are_refused():
    with pytest.raises(ValueError, match="same inputs"):
        average_regressors([build_regressor("relu", REG, True), build_regressor("relu", REG, False)])


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
    # export keeps the graph's first conv float (QuantOptions.keep_float "input"): one member's first conv
    assert len(convs) == 2 * 13 and dtypes.count(np.float32) == 1 and dtypes.count(np.int8) == 2 * 13 - 1


def test_members_with_different_targets_average_in_months():
    members = _members(True)
    targets = [{"mean": 120.0, "std": 40.0}, {"mean": 110.0, "std": 50.0}]
    ens = average_regressors(members, targets)
    feeds = _feeds(4, True)
    months = np.mean([m.predict(feeds, verbose=0) * t["std"] + t["mean"] for m, t in zip(members, targets)], axis=0)
    np.testing.assert_allclose(ens.predict(feeds, verbose=0) * 40.0 + 120.0, months, rtol=1e-4, atol=1e-3)
