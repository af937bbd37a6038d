"""The exporter on tiny freshly built models: every format loads in the runtime's backends, keeps the
contract's tensors, FP32 matches Keras, INT8 is really INT8 and stays close to Keras.

Needs the [train], [onnx] and [openvino] extras (the exporter's own dependencies).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import tensorflow  # noqa: F401  (the test environment installs every extra; missing is a failure)
import onnxruntime  # noqa: F401  (the test environment installs every extra; missing is a failure)
import openvino  # noqa: F401  (the test environment installs every extra; missing is a failure)
import nncf  # noqa: F401  (the test environment installs every extra; missing is a failure)

import keras  # noqa: E402

from edgeba import export  # noqa: E402
from edgeba.backends import common  # noqa: E402
from edgeba.manifest import load_manifest  # noqa: E402
from edgeba.training.nets import build_regressor  # noqa: E402
from edgeba.training.unet import build_unet  # noqa: E402

UNET, REG = 32, 128  # the regressor's 7 poolings need >= 128 px


def _images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Bright blobs on dark noise: inputs with structure, so the outputs vary between images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.02, 0.08)
        x = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r) + 0.05 * rng.standard_normal((size, size))
        out.append(np.clip(x, 0, 1).astype(np.float32)[None, :, :, None])
    return out


def _stretch_head(model: keras.Model) -> None:
    """Scale the last layer so a random-init model's output spans a useful range (not ~0 everywhere)."""
    last = model.layers[-1]
    w, b = last.get_weights()
    last.set_weights([w * 20.0, b])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(3)
    tmp = tmp_path_factory.mktemp("export")
    unet = build_unet(size=UNET, base=4, depth=2)
    reg = build_regressor("relu", input_size=REG, sex_input=True)
    _stretch_head(unet)
    _stretch_head(reg)
    unet.save(tmp / "src_unet.keras")
    reg.save(tmp / "src_regressor.keras")
    seg_calib = [{"image": x} for x in _images(24, UNET, 1)]
    reg_calib = [{"image": x, "sex": np.array([[i % 2]], np.float32)} for i, x in enumerate(_images(24, REG, 2))]
    out = tmp / "model"
    stages = {
        "segment": export.export_stage(tmp / "src_unet.keras", export.SEGMENT, out, seg_calib, verify=seg_calib[:2]),
        "regress": export.export_stage(tmp / "src_regressor.keras", export.REGRESS, out, reg_calib, verify=reg_calib[:2]),
    }
    manifest = {"name": "tiny", "preprocess": {"input_size": REG, "unet_size": UNET}, "target": {"mean": 120.0, "std": 40.0},
                "sex_input": True, "stages": stages, "metrics": {}}
    export.write_manifest(out, manifest)
    feeds = {"segment": [{"image": x} for x in _images(6, UNET, 9)],
             "regress": [{"image": x, "sex": np.array([[i % 2]], np.float32)} for i, x in enumerate(_images(6, REG, 10))]}
    return out, feeds


def _run_all(model_dir, stage, fmt, feeds):
    import importlib

    m = load_manifest(model_dir)  # verifies every sha256
    runner = importlib.import_module(f"edgeba.backends.{fmt.split('-')[0]}").Runner(m.files(stage, fmt), 1)
    return np.stack([runner.run(f) for f in feeds])


@pytest.mark.parametrize("stage", ["segment", "regress"])
def test_every_format_loads_and_agrees_with_keras(exported, stage):
    model_dir, feeds = exported
    m = load_manifest(model_dir)
    assert m.formats(stage) == list(export.FORMATS)
    ref = _run_all(model_dir, stage, "keras", feeds[stage])
    want = (len(feeds[stage]), 1, UNET, UNET, 1) if stage == "segment" else (len(feeds[stage]), 1, 1)
    assert ref.shape == want
    spread = float(np.ptp(ref))
    assert spread > 0.05, "test models must produce varied outputs, or agreement means nothing"
    for fmt in export.FORMATS[1:]:
        got = _run_all(model_dir, stage, fmt, feeds[stage])
        assert got.shape == ref.shape, fmt
        err = float(np.abs(got - ref).max())
        # FP32 files compute the Keras model; INT8 within a few int8 steps of the output range
        tol = 1e-4 * max(spread, 1.0) if fmt.endswith("fp32") else 0.08 * spread
        assert err <= tol, f"{stage} {fmt}: max |diff| {err:.4g} > {tol:.4g} (output spread {spread:.3g})"


def test_inputs_have_contract_names_and_batch_one(exported):
    import onnx
    import openvino as ov
    from ai_edge_litert.interpreter import Interpreter

    model_dir, _ = exported
    m = load_manifest(model_dir)
    want = {"segment": {"image": (1, UNET, UNET, 1)}, "regress": {"image": (1, REG, REG, 1), "sex": (1, 1)}}
    for stage, shapes in want.items():
        for fmt in ("tflite-fp32", "tflite-int8"):
            sig = Interpreter(model_path=str(m.files(stage, fmt).path)).get_signature_runner()
            assert {n: tuple(d["shape"]) for n, d in sig.get_input_details().items()} == shapes
        for fmt in ("onnx-fp32", "onnx-int8"):
            g = onnx.load(str(m.files(stage, fmt).path)).graph
            got = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in g.input}
            assert got == shapes, fmt
        for fmt in ("openvino-fp32", "openvino-int8"):
            model = ov.Core().read_model(str(m.files(stage, fmt).path))
            got = {common.base_name(p.get_any_name()): tuple(p.get_shape()) for p in model.inputs}
            assert got == shapes, fmt


def test_int8_files_are_quantized(exported):
    import onnx
    import openvino as ov
    from ai_edge_litert.interpreter import Interpreter

    model_dir, _ = exported
    m = load_manifest(model_dir)
    reg = m.data["stages"]["regress"]
    for fam in ("tflite", "onnx", "openvino"):
        # int8 weights: about a quarter of the float file
        assert reg[f"{fam}-int8"]["bytes"] < 0.4 * reg[f"{fam}-fp32"]["bytes"], fam
    for stage in ("segment", "regress"):
        it = Interpreter(model_path=str(m.files(stage, "tflite-int8").path))
        convs = [o for o in it._get_ops_details() if o["op_name"] == "CONV_2D"]
        dtypes = [it.get_tensor_details()[o["inputs"][1]]["dtype"] for o in convs]
        # The regressor's first conv stays float by choice (QuantOptions.keep_float "input"); every other is int8.
        first_float = "input" in export.DEFAULT_QUANT[stage].keep_float
        assert set(dtypes[1:] if first_float else dtypes) == {np.int8}, f"{stage}: conv weights {dtypes}"
        assert not first_float or dtypes[0] == np.float32
        ops = {n.op_type for n in onnx.load(str(m.files(stage, "onnx-int8").path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        ov_ops = {o.get_type_name() for o in ov.Core().read_model(str(m.files(stage, "openvino-int8").path)).get_ops()}
        assert "FakeQuantize" in ov_ops


def test_regressor_output_layer_stays_float_in_tflite(exported):
    """The last Dense runs in float: months get no int8 step (about 1 month over 0-228)."""
    from ai_edge_litert.interpreter import Interpreter

    model_dir, _ = exported
    it = Interpreter(model_path=str(load_manifest(model_dir).files("regress", "tflite-int8").path))
    tensors = it.get_tensor_details()
    fcs = [o for o in it._get_ops_details() if o["op_name"] == "FULLY_CONNECTED"]
    assert tensors[fcs[-1]["outputs"][0]]["dtype"] == np.float32
    assert tensors[fcs[0]["inputs"][1]]["dtype"] == np.int8  # the other dense layers stay int8


def test_manifest_records_sha256_and_bytes(exported):
    model_dir, _ = exported
    data = json.loads((model_dir / "manifest.json").read_text())
    for stage in ("segment", "regress"):
        for fmt, e in data["stages"][stage].items():
            assert e["sha256"] == export.sha256(model_dir / e["file"])
            if fmt.startswith("openvino"):
                assert e["weights_sha256"] == export.sha256(model_dir / e["weights"])


def test_fp32_export_verification_catches_a_wrong_file(exported, tmp_path):
    """export_stage's own check: a file that does not compute the Keras model is refused."""
    model_dir, feeds = exported
    other = build_regressor("relu", input_size=REG, sex_input=True)
    other.save(tmp_path / "other.keras")
    entries = export.export_stage(tmp_path / "other.keras", export.REGRESS, tmp_path, None, formats=("tflite-fp32",))
    # swap in the first model's file: same tensors, different weights
    (tmp_path / entries["tflite-fp32"]["file"]).write_bytes((model_dir / "regressor_fp32.tflite").read_bytes())
    with pytest.raises(RuntimeError, match="max \\|diff\\| vs Keras"):
        export._verify(other, export.REGRESS, tmp_path, entries, feeds["regress"][:2])


def test_input_specs_by_rank():
    reg = build_regressor("relu", input_size=REG, sex_input=False)
    assert export.input_specs(reg) == [("image", (1, REG, REG, 1))]
    with pytest.raises(ValueError):
        export.main("u.keras", "r.keras", "out", formats=("tflite-fp16",))
