"""The ONNX U-Net's upsampling is exact, so onnxruntime gives the same mask on every CPU.

Quantized, the skip Add ran as QLinearAdd (float arithmetic on x86, fixed-point on ARM) and the
requantized bilinear Resize landed on exact .5 ties that the CPU's summation order decided: aarch64
and x86 differed (benchmarks/arm64/run.sh). export.QuantOptions.onnx_exact_upsample keeps the Clip,
the Resize and the Add float behind a power-of-two scale. These tests check, on the CPU that runs
them, the structure that makes it so (shipped model and a fresh export) and its premise: onnxruntime
computes the Clip and the Resize exactly and rounds the Add once. run.sh checks the outcome on aarch64.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgeba import export
from edgeba.io import load_image
from edgeba.manifest import DEFAULT_DIR, load_manifest
from edgeba.segment import unet_input
from runtime_fixtures import good_image  # noqa: F401  (fixture)

SHIPPED = DEFAULT_DIR / "unet_int8.onnx"


def _chains(path) -> list[dict]:
    """Per linear Resize: its Clip, the Clip's DequantizeLinear, the Add it feeds; asserts the exact-upsampling form."""
    g = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    chains = []
    for r in (n for n in g.node if n.op_type == "Resize"):
        attrs = {a.name: helper.get_attribute_value(a) for a in r.attribute}
        assert attrs["mode"] == b"linear" and attrs["coordinate_transformation_mode"] == b"half_pixel", r.name
        assert list(consts[r.input[2]]) == [1, 1, 2, 2], r.name  # 2x on the last two axes (NCHW)
        clip = producer[r.input[0]]
        assert clip.op_type == "Clip", f"{r.name} is fed by {clip.op_type}, not a float Clip"
        dq = producer[clip.input[0]]
        assert dq.op_type == "DequantizeLinear", f"{clip.name} is fed by {dq.op_type}"
        scale = float(consts[dq.input[1]])
        assert scale == 2.0 ** round(np.log2(scale)), f"{dq.name}: scale {scale} is not a power of two"
        adds = [n for n in g.node if r.output[0] in n.input]
        assert adds and all(n.op_type == "Add" for n in adds), f"{r.name} feeds {[n.op_type for n in adds]}"
        chains.append({"clip": clip, "resize": r, "add": adds[0], "scale": scale, "consts": consts, "producer": producer})
    assert chains, f"{path}: no Resize"
    return chains


def _optimized_ops(path, tmp_path) -> dict:
    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    ops: dict = {}
    for n in onnx.load(o.optimized_model_filepath).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def _check_structure(path, tmp_path) -> None:
    _chains(path)
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    ops = _optimized_ops(path, tmp_path)
    # Every convolution still runs as an integer QLinearConv (speed), no Add as QLinearAdd (CPU-dependent).
    assert ops.get("QLinearConv") == convs and "Conv" not in ops, ops
    assert "QLinearAdd" not in ops and ops.get("Add") == ops.get("Resize"), ops


def test_shipped_unet_has_exact_upsampling(tmp_path):
    assert load_manifest(DEFAULT_DIR).data["quantization"]["segment"]["onnx_exact_upsample"] is True
    _check_structure(SHIPPED, tmp_path)


def test_export_makes_exact_upsampling(tmp_path):
    import keras

    from edgeba.training.unet import build_unet

    assert export.DEFAULT_QUANT["segment"].onnx_exact_upsample
    keras.utils.set_random_seed(5)
    build_unet(size=32, base=4, depth=2).save(tmp_path / "unet.keras")
    rng = np.random.default_rng(0)
    calib = [{"image": rng.uniform(0, 1, (1, 32, 32, 1)).astype(np.float32)} for _ in range(8)]
    export.export_stage(tmp_path / "unet.keras", export.SEGMENT, tmp_path / "out", calib, ("onnx-int8",))
    _check_structure(tmp_path / "out" / "unet_int8.onnx", tmp_path)


def _bilinear2x(x: np.ndarray) -> np.ndarray:
    """ONNX Resize linear, half_pixel, 2x on the last two axes, in float64 (exact for dyadic inputs)."""
    for axis in (2, 3):
        n = x.shape[axis]
        prev = np.take(x, np.clip(np.arange(n) - 1, 0, n - 1), axis=axis)
        nxt = np.take(x, np.clip(np.arange(n) + 1, 0, n - 1), axis=axis)
        x = np.stack([0.25 * prev + 0.75 * x, 0.75 * x + 0.25 * nxt], axis=axis + 1)
        x = x.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 2 :])
    return x


def test_onnxruntime_upsamples_exactly_and_adds_with_one_rounding(tmp_path, good_image):  # noqa: F811
    chains = _chains(SHIPPED)
    m = onnx.load(str(SHIPPED))
    want = []
    for c in chains:
        skip = next(i for i in c["add"].input if i != c["resize"].output[0])
        dq = c["producer"][skip]  # the skip's DequantizeLinear: expose its uint8 input
        want.append((c["clip"].output[0], c["resize"].output[0], c["add"].output[0], dq.input[0], dq))
    for names in want:
        m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names[:4])
    onnx.save(m, str(tmp_path / "exposed.onnx"))
    o = ort.SessionOptions()
    o.log_severity_level = 3
    sess = ort.InferenceSession(str(tmp_path / "exposed.onnx"), o, providers=["CPUExecutionProvider"])
    x, _ = unet_input(load_image(good_image).pixels, load_manifest(DEFAULT_DIR).data["preprocess"]["unet_size"])
    got = dict(zip([t.name for t in sess.get_outputs()], sess.run(None, {"image": x[None, :, :, None]})))
    for c, (clip, resize, add, skip_q, dq) in zip(chains, want):
        v = got[clip].astype(np.float64)
        steps = v / c["scale"]
        assert np.array_equal(steps, np.round(steps)) and v.max() > 0, f"{clip}: not on the power-of-two grid"
        assert v.min() >= 0 and v.max() <= float(c["consts"][c["clip"].input[2]]), clip
        exact = _bilinear2x(v)
        assert np.array_equal(exact, exact.astype(np.float32)), "the exact interpolation must fit float32"
        np.testing.assert_array_equal(got[resize], exact.astype(np.float32), err_msg=resize)
        s, zp = c["consts"][dq.input[1]], c["consts"][dq.input[2]]
        skip = (got[skip_q].astype(np.int32) - np.int32(zp)).astype(np.float32) * np.float32(s)
        np.testing.assert_array_equal(got[add], got[resize] + skip, err_msg=add)


def test_exact_upsampling_refuses_a_resize_without_a_clip(tmp_path):
    from onnxruntime.quantization import QuantType

    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", name="up")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 8, 8])], [scales])
    onnx.save(helper.make_model(g), str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="Clip with constant bounds"):
        export._onnx_exact_upsample(tmp_path / "m.onnx", QuantType.QUInt8, [])
