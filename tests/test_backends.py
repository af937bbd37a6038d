"""Manifests (sha256 verification), backend choice, input binding, INT8 tensors, and parity of every
backend with the float Keras reference on real radiographs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from runtime_fixtures import *  # noqa: F401,F403
from runtime_fixtures import GOOD_IDS

from edgeba import backends
from edgeba.backends.common import base_name, bind, dequantize, quantize
from edgeba.dataset import rsna_root
from edgeba.errors import ModelError
from edgeba.io import load_image
from edgeba.manifest import load_manifest
from edgeba.preprocess import PreprocessConfig, regressor_input
from edgeba.segment import bootstrap_mask, mask_from_prob, unet_input

RUNTIMES = ("tflite", "onnx", "openvino")


# --- manifest ----------------------------------------------------------------------------------


@pytest.fixture
def model_copy(fixture_model, tmp_path):
    return shutil.copytree(fixture_model, tmp_path / "model")


def test_manifest_verifies_every_file(model_copy):
    m = load_manifest(model_copy)
    assert m.sex_input and m.target == (120.0, 40.0) and m.segments
    for stage in ("segment", "regress"):
        for fmt in m.formats(stage):
            files = m.files(stage, fmt)
            assert files.path.is_file() and (files.weights is None or files.weights.is_file())


def test_altered_model_file_is_refused(model_copy):
    f = model_copy / "regressor_int8.tflite"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its sha256"):
        load_manifest(model_copy).files("regress", "tflite-int8")


def test_altered_openvino_weights_are_refused(model_copy):
    (model_copy / "unet.bin").write_bytes(b"\x00" * 92)
    with pytest.raises(ModelError, match="unet.bin does not match"):
        load_manifest(model_copy).files("segment", "openvino-fp32")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["stages"]["regress"]["tflite-int8"].pop("sha256"), "no sha256"),
    (lambda d: d["stages"]["regress"]["tflite-int8"].update(file="../outside.tflite"), "outside the model directory"),
    (lambda d: d["stages"]["regress"]["tflite-int8"].update(file="gone.tflite"), "missing"),
])
def test_bad_manifest_entries(model_copy, edit, message):
    data = json.loads((model_copy / "manifest.json").read_text())
    edit(data)
    (model_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        load_manifest(model_copy).files("regress", "tflite-int8")


def test_missing_or_broken_manifest(tmp_path):
    with pytest.raises(ModelError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {}}))
    with pytest.raises(ModelError, match="regress"):
        load_manifest(tmp_path)


# --- choice of backend --------------------------------------------------------------------------


def test_auto_picks_by_measured_start_and_per_image_time(fixture_model, monkeypatch):
    m = load_manifest(fixture_model)
    monkeypatch.setattr(backends, "MEASURED", {"x86_64": {"tflite": {"cold_start_s": 0.4, "image_ms": 35.0},
                                                          "openvino": {"cold_start_s": 0.8, "image_ms": 30.0}}})
    monkeypatch.setattr(backends.platform, "machine", lambda: "x86_64")
    assert backends.choose(m, "auto") == "tflite"  # one image: the quicker start wins
    assert backends.auto_cost("openvino", 81) == pytest.approx(0.8 + 80 * 0.030)
    assert backends.choose(m, "auto", images=80) == "tflite" and backends.choose(m, "auto", images=82) == "openvino"  # even at 81
    monkeypatch.setattr(backends, "installed", lambda: ["onnx", "keras"])  # none measured: ORDER
    assert backends.choose(m, "auto", images=1000) == "onnx"
    monkeypatch.undo()
    monkeypatch.setattr(backends.platform, "machine", lambda: "aarch64")  # no numbers for ARM here: ORDER
    assert backends.choose(m, "auto") == "tflite" and backends.auto_cost("tflite") is None


def test_shipped_measurements_cover_the_x86_backends():
    assert set(backends.MEASURED["x86_64"]) == {"tflite", "openvino", "onnx"}
    assert all(v["cold_start_s"] > 0 and v["image_ms"] > 0 for v in backends.MEASURED["x86_64"].values())


def test_auto_skips_backends_the_model_lacks(fixture_model, monkeypatch):
    m = load_manifest(fixture_model)
    for stage in m.data["stages"].values():
        stage.pop("openvino-fp32")
    monkeypatch.setattr(backends.platform, "machine", lambda: "x86_64")
    assert backends.choose(m, "auto") == "tflite"
    with pytest.raises(ModelError, match="no openvino file for stage 'segment'"):
        backends.choose(m, "openvino")


def test_requested_backend_must_be_installed(fixture_model, monkeypatch):
    m = load_manifest(fixture_model)
    monkeypatch.setattr(backends, "installed", lambda: ["tflite"])
    with pytest.raises(ModelError, match=r"\[openvino\] extra"):
        backends.choose(m, "openvino")
    with pytest.raises(ModelError, match="unknown backend"):
        backends.choose(m, "tensorrt")


def test_each_backend_prefers_int8(fixture_model):
    m = load_manifest(fixture_model)
    assert backends.open_stage(m, "regress", "onnx", 1).format == "onnx-int8"
    assert backends.open_stage(m, "regress", "openvino", 1).format == "openvino-fp32"  # the fixture has no INT8 IR


def test_unloadable_model_file_is_a_model_error(model_copy):
    import hashlib

    f = model_copy / "regressor_int8.onnx"
    f.write_bytes(b"not an onnx model")
    data = json.loads((model_copy / "manifest.json").read_text())
    data["stages"]["regress"]["onnx-int8"]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (model_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="onnx cannot load regressor_int8.onnx"):
        backends.open_stage(load_manifest(model_copy), "regress", "onnx", 1)


# --- binding inputs by name, INT8 tensors -------------------------------------------------------


def test_bind_by_converter_names_and_rank():
    img, sex = np.zeros((1, 8, 8, 1), np.float32), np.ones((1, 1), np.float32)
    got = bind({"image": img, "sex": sex}, [("serving_default_sex:0", (1, 1)), ("serving_default_image:0", (1, 8, 8, 1))])
    assert got["serving_default_sex:0"] is sex and got["serving_default_image:0"] is img
    got = bind({"image": img, "sex": sex}, [("args_1", (1, 1)), ("args_0", (1, -1, -1, 1))])
    assert got["args_1"] is sex and got["args_0"] is img
    assert base_name("image:0") == "image"


def test_bind_rejects_mismatches():
    img = np.zeros((1, 8, 8, 1), np.float32)
    with pytest.raises(ModelError, match="expects shape"):
        bind({"image": img}, [("image", (1, 16, 16, 1))])
    with pytest.raises(ModelError, match="no input for"):
        bind({"image": img, "sex": np.ones((1, 1))}, [("image", (1, 8, 8, 1))])
    with pytest.raises(ModelError, match="matches none"):
        bind({"image": img}, [("image", (1, 8, 8, 1)), ("sex", (1, 1))])


def test_quantize_roundtrip_and_saturation():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 100.0], np.float32)
    q = quantize(x, np.int8, 1 / 127, 0)
    assert q.dtype == np.int8 and q.tolist() == [-127, 0, 64, 127, 127]
    np.testing.assert_allclose(dequantize(q, 1 / 127, 0)[:4], x[:4], atol=0.5 / 127)
    assert quantize(x, np.float32, 0.0, 0).dtype == np.float32


def test_tflite_int8_io_tensors_are_handled(fixture_model):
    unet = backends.open_stage(load_manifest(fixture_model), "segment", "tflite", 1)
    assert unet.inputs["image"]["dtype"] == np.int8  # the fixture U-Net has int8 input and output
    x = np.zeros((1, 64, 64, 1), np.float32)
    x[:, 16:48, 16:48] = 1.0
    prob = unet.run({"image": x})
    assert prob.dtype == np.float32 and prob.shape == (1, 64, 64, 1)
    assert prob[0, 32, 32, 0] > 0.9 and prob[0, 2, 2, 0] < 0.1


# --- parity with the float reference on real images ----------------------------------------------


@pytest.fixture(scope="module")
def real_inputs(model_dir):
    """(model_dir, [(unet input, letterbox, shape, regressor input)]) for GOOD_IDS, float-free of any backend."""
    m = load_manifest(model_dir)
    cfg = PreprocessConfig.from_dict(m.preprocess)
    out = []
    for i in GOOD_IDS:
        pixels = load_image(rsna_root() / "train" / f"{i}.jpg").pixels
        x, box = unet_input(pixels, cfg.unet_size)
        out.append((x, box, pixels.shape, regressor_input(pixels, bootstrap_mask(pixels), cfg)))
    return model_dir, out


def _keras_or_none(m, stage):
    return backends.open_stage(m, stage, "keras", 1) if "keras" in m.formats(stage) else None


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_regressor_parity_with_keras(real_inputs, runtime):
    model_dir, inputs = real_inputs
    m = load_manifest(model_dir)
    ref, run = backends.open_stage(m, "regress", "keras", 1), backends.open_stage(m, "regress", runtime, 1)
    _, std = m.target
    for k, (*_, r) in enumerate(inputs):
        feed = {"image": r[None, :, :, None]} | ({"sex": np.array([[k % 2]], np.float32)} if m.sex_input else {})
        diff = abs(float(run.run(feed).ravel()[0]) - float(ref.run(feed).ravel()[0])) * std
        # issue 5: 95th percentile of per-image |INT8 - float| <= 1.5 months; the fixture's coarse
        # calibration (8 images) is allowed 4
        assert diff <= (4.0 if m.name == "edgeba-test-fixture" else 1.5), f"{runtime} image {GOOD_IDS[k]}: {diff:.2f} months"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_unet_parity_with_keras(real_inputs, runtime):
    model_dir, inputs = real_inputs
    m = load_manifest(model_dir)
    ref, run = backends.open_stage(m, "segment", "keras", 1), backends.open_stage(m, "segment", runtime, 1)
    for k, (x, box, shape, _) in enumerate(inputs):
        a = mask_from_prob(ref.run({"image": x[None, :, :, None]}), box, shape).astype(bool)
        b = mask_from_prob(run.run({"image": x[None, :, :, None]}), box, shape).astype(bool)
        iou = (a & b).sum() / max((a | b).sum(), 1)
        assert iou >= 0.97, f"{runtime} image {GOOD_IDS[k]}: mask IoU {iou:.3f} vs float"


def test_openvino_runs_float_layers_in_f32(fixture_model):
    """Not bfloat16, which OpenVINO picks by default on CPUs with AMX: results must not depend on the CPU."""
    run = backends.open_stage(load_manifest(fixture_model), "regress", "openvino", 1)
    assert str(run.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
