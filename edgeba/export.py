"""Export: one place that turns the float Keras models into every format edge users run.

    keras -> tflite-fp32, tflite-int8     (TFLiteConverter from one batch-1 Keras wrapper, serving_model)
          -> onnx-fp32 -> onnx-int8       (tf2onnx from the same wrapper; onnxruntime static QDQ)
                       -> openvino-fp32 -> openvino-int8   (ov.convert_model of the ONNX; NNCF)

Every format of a stage has the same tensors (docs/CONTRACTS.md): inputs `image` (and `sex` for the
regressor when it has one), batch fixed to 1, one float32 output. INT8 calibration uses real
training images passed through the runtime's own preprocessing (edgeba.segment.unet_input,
edgeba.preprocess.regressor_input), so the calibrated ranges are the ranges the runtime feeds.

`parity()` runs a model directory against its float Keras models on a split and reports the
numbers of issue 5 (regressor MAE delta and p95 |INT8 - float|, U-Net mask IoU, end-to-end drift).

Needs the [train] and [onnx] and [openvino] extras. Importing this module imports no framework.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

FORMATS = ("keras", "tflite-fp32", "tflite-int8", "openvino-fp32", "openvino-int8", "onnx-fp32", "onnx-int8")
SHIPPED_FORMATS = ("keras", "tflite-int8", "openvino-int8", "onnx-int8")  # what edgeba/models/default holds
FAMILIES = ("tflite", "openvino", "onnx")
N_CALIB = 256  # >= 200 real training images (issue 5); TFLite calibration cost grows linearly with it
CALIB_SEED = 20261130


@dataclass(frozen=True)
class Stage:
    key: str  # manifest stage key
    stem: str  # file name stem
    output: str  # output tensor name in every format


SEGMENT = Stage("segment", "unet", "prob")
REGRESS = Stage("regress", "regressor", "age_z")


@dataclass
class QuantOptions:
    """Knobs of the post-training quantization; the defaults are the shipped choice (see export/PARITY.md).

    keep_float: parts left in float in every INT8 format: "output" = the layer producing the model
    output (the regressor's last Dense, so months do not get an int8 step), "input" = the first
    convolution, "concat" = the U-Net skip concatenations (TFLite/onnxruntime give a concat one scale).
    """

    keep_float: tuple[str, ...] = ()
    onnx_calibrate: str = "MinMax"  # onnxruntime CalibrationMethod name
    # U8U8 (uint8 activations and weights): x86 CPUs without VNNI saturate the int16 sums of U8S8/S8S8
    # unless reduce_range drops weights to 7 bits; onnxruntime's U8U8 kernels do not saturate and keep
    # all 8 bits (regressor p95 |INT8 - float| 1.91 -> 0.68 months vs S8S8 reduce_range, PARITY.md).
    onnx_types: str = "U8U8"  # or "S8S8"
    onnx_reduce_range: bool = False
    # ONNX only: the U-Net's bilinear upsampling (Resize) and the skip Add after it stay float, fed
    # by power-of-two activation scales, so onnxruntime computes them exactly and identically on every
    # CPU. Quantized, they differed between x86 and aarch64 by one step on ~0.1 % of values (a decision
    # flipped, 15.5 months apart): QLinearAdd is float arithmetic on x86 but fixed-point on ARM (MLAS
    # qladd.cpp), and the requantized float Resize lands on exact .5 ties whose side the summation order
    # and FMA decide (benchmarks/README.md, "Same months on aarch64?").
    onnx_exact_upsample: bool = False
    nncf_preset: str = "MIXED"  # asymmetric activations: ELU/BatchNorm outputs are not >= 0
    nncf_overflow_fix: str = "ENABLE"  # same saturation trap as reduce_range, for OpenVINO
    # NNCF's fast bias correction added +0.5 months of bias to one regressor (none without it).
    nncf_bias_correction: bool = False
    # NNCF's default (MEAN_MINMAX: per-image min/max averaged) clips the larger activations of a
    # regressor: -5 months bias, p95 30 months (PARITY.md). MINMAX (global extremes) is what TFLite
    # and onnxruntime's MinMax calibration do.
    nncf_activation_range: str = "MINMAX"
    tflite_output_float: bool = True  # keep the last layer (and so the output) float in TFLite

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


DEFAULT_QUANT = {
    "segment": QuantOptions(keep_float=(), tflite_output_float=False, onnx_exact_upsample=True),
    # First conv float too: chosen on tune for relu_sex_enh_noseg_pre (OpenVINO p95 |INT8 - float| 1.60 -> 1.46
    # months, TFLite 0.77 -> 0.66, ONNX unchanged; export/PARITY.md). It is 1.6 % of the regressor's MACs.
    "regress": QuantOptions(keep_float=("input", "output")),
}


# --------------------------------------------------------------------------------------------- io


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_specs(model) -> list[tuple[str, tuple[int, ...]]]:
    """Contract names and batch-1 shapes of a Keras model's inputs, in the model's input order.

    The image is the 4-D input, the sex the 2-D one, whatever the builder named its layers; a model
    with several images (an ensemble over differently preprocessed inputs) keeps its inputs' names,
    which the manifest's preprocessing uses (preprocess.input_configs).
    """
    images = sum(len(t.shape) == 4 for t in model.inputs)
    specs = []
    for t in model.inputs:
        shape = tuple(int(d) for d in t.shape[1:])
        name = ("image" if images == 1 else t.name.split(":")[0]) if len(shape) == 3 else "sex"
        specs.append((name, (1, *shape)))
    names = [n for n, _ in specs]
    if "image" not in names or len(set(names)) != len(names) or names.count("sex") > 1:
        raise ValueError(f"unexpected model inputs {[(t.name, tuple(t.shape)) for t in model.inputs]}")
    return specs


def serving_model(model, stage: Stage):
    """A batch-1 wrapper with the contract's input names and one named output; every format comes from it.

    A fixed batch keeps shape ops out of the graph (they split TFLite into several XNNPACK partitions),
    and the TFLite signature and ONNX/OpenVINO tensor names come from these names.
    """
    import keras

    inputs = [keras.Input(batch_shape=shape, name=name) for name, shape in input_specs(model)]
    return keras.Model(inputs, {stage.output: model(inputs if len(inputs) > 1 else inputs[0])})


# ------------------------------------------------------------------------------------- runners


def runner(files, threads: int = 1) -> Callable[[dict], np.ndarray]:
    """feeds {name: float32 array} -> the output of one model file (edgeba.manifest.ModelFiles), run
    by the runtime's own backend, so what export checks is what `edgeba predict` runs."""
    import importlib

    return importlib.import_module(f"edgeba.backends.{files.format.split('-')[0]}").Runner(files, threads).run


def make_runner(fmt: str, path: str | os.PathLike, threads: int = 1) -> Callable[[dict], np.ndarray]:
    """`runner` for a file that is not (yet) in a manifest."""
    from edgeba.manifest import ModelFiles

    path = Path(path)
    return runner(ModelFiles(fmt, path, path.with_suffix(".bin") if fmt.startswith("openvino") else None), threads)


# -------------------------------------------------------------------------------------- writers


def _tflite_ops(content: bytes) -> tuple[list[dict], list[int]]:
    """(ops in execution order with input/output tensor indices and output names, image input indices)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    tensors = {t["index"]: t["name"] for t in it.get_tensor_details()}
    ops = [{"op": o["op_name"], "names": [tensors[i] for i in o["outputs"]], "outputs": list(o["outputs"]), "inputs": list(o["inputs"])}
           for o in it._get_ops_details()]
    return ops, [d["index"] for d in it.get_input_details() if len(d["shape"]) == 4]


def first_compute(ops: list, inputs: Iterable, compute: Callable, ins: Callable, outs: Callable) -> list:
    """The first compute op on each path from the image inputs (ops in execution order): what
    QuantOptions.keep_float "input" leaves float; one per image input, or per member reading it."""
    reached, first = set(inputs), []
    for op in ops:
        if not reached & set(ins(op)):
            continue
        if compute(op):
            first.append(op)
        else:
            reached |= set(outs(op))
    return first


def _tflite_float_nodes(fp32: bytes, keep: Iterable[str]) -> list[str]:
    """Output tensor names (the debugger's node names) of the ops to leave in float."""
    every, images = _tflite_ops(fp32)
    kinds = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
    compute = [o for o in every if o["op"] in kinds]
    nodes = []
    if "input" in keep:
        nodes += [t for o in first_compute(every, images, lambda o: o["op"] in kinds, lambda o: o["inputs"], lambda o: o["outputs"]) for t in o["names"]]
    if "output" in keep:
        nodes += compute[-1]["names"]
    if "concat" in keep:
        nodes += [t for o in every if o["op"] == "CONCATENATION" for t in o["names"]]
    return nodes


def write_tflite(wrapper, out: Path, calib: list[dict] | None, q: QuantOptions | None) -> None:
    """FP32 when calib is None, else full-integer INT8 (per-channel weights, int8 activations, float I/O)."""
    import tensorflow as tf

    fp32 = tf.lite.TFLiteConverter.from_keras_model(wrapper).convert()
    if calib is None:
        out.write_bytes(fp32)
        return
    c = tf.lite.TFLiteConverter.from_keras_model(wrapper)  # a converter cannot convert twice
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: iter(calib)
    nodes = _tflite_float_nodes(fp32, set(q.keep_float) | ({"output"} if q.tflite_output_float else set()))
    if not nodes:
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        out.write_bytes(c.convert())
        return
    # Selective quantization goes through the quantization debugger: the listed ops stay float,
    # with (de)quantize ops around them; the rest is int8 as above.
    opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
    dbg = tf.lite.experimental.QuantizationDebugger(converter=c, debug_dataset=lambda: iter(calib[:8]), debug_options=opts)
    out.write_bytes(dbg.get_nondebug_quantized_model())


def write_onnx(wrapper, out: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    sig = [tf.TensorSpec(t.shape, tf.float32, name=t.name) for t in wrapper.inputs]
    tf2onnx.convert.from_keras(wrapper, input_signature=sig, opset=17, output_path=str(out))


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, calib: list[dict]):
        self._it = iter(calib)

    def get_next(self):
        return next(self._it, None)


def _onnx_float_nodes(path: Path, keep: Iterable[str]) -> list[str]:
    import onnx

    g = onnx.load(str(path)).graph
    kinds = ("Conv", "ConvTranspose", "MatMul", "Gemm")
    compute = [n for n in g.node if n.op_type in kinds]
    nodes = []
    if "input" in keep:
        images = [i.name for i in g.input if len(i.type.tensor_type.shape.dim) == 4]
        nodes += [n.name for n in first_compute(g.node, images, lambda n: n.op_type in kinds, lambda n: n.input, lambda n: n.output)]
    if "output" in keep:
        # The last compute node and everything after it (its bias Add, activation).
        last = list(g.node).index(compute[-1])
        nodes += [n.name for n in list(g.node)[last:]]
    if "concat" in keep:
        nodes += [n.name for n in g.node if n.op_type == "Concat"]
    return nodes


def _onnx_exact_upsample(path: Path, activation_type, calib: list[dict]) -> tuple[list[str], dict]:
    """(nodes to keep float, scale overrides) that make bilinear upsampling exact in onnxruntime.

    Before each linear Resize sits a Clip with constant bounds (ReLU6 in the U-Net). Its input is
    quantized with the smallest power-of-two scale whose range covers what the calibration feeds reach
    (the Clip's upper bound at most: a ReLU6 that never nears 6 keeps its resolution), and the Clip, the Resize and every Add the
    Resize feeds stay float: the dequantized values are then short dyadic numbers, the Clip keeps them
    so, the interpolation (1/16 multiples of them at 2x, half_pixel) is exact in float32 whatever the
    summation order or FMA, and the Add rounds once (IEEE): the same result on every CPU. The Clip stays
    because the power-of-two range (e.g. 0 to 7.97 for ReLU6) need not end at its upper bound.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType

    model = onnx.load(str(path))
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    info = np.iinfo(np.uint8 if activation_type == QuantType.QUInt8 else np.int8)
    nodes, overrides, clips = [], {}, []
    for r in g.node:
        if r.op_type != "Resize" or next((a.s for a in r.attribute if a.name == "mode"), b"") != b"linear":
            continue
        clip = producer.get(r.input[0])
        if clip is None or clip.op_type != "Clip" or not all(i in consts for i in clip.input[1:3]):
            raise ValueError(f"{r.name}: exact upsampling needs a Clip with constant bounds before the Resize")
        lo, hi = (float(consts[i]) for i in clip.input[1:3])
        if lo < 0:
            raise ValueError(f"{r.name}: exact upsampling needs a non-negative input, the Clip allows {lo}")
        clips.append((clip, hi))
        nodes += [clip.name, r.name] + [n.name for n in g.node if n.op_type == "Add" and r.output[0] in n.input]
    if clips:  # the calibration range of each Clip's output: the graph with those outputs exposed
        g.output.extend(onnx.helper.make_empty_tensor_value_info(c.output[0]) for c, _ in clips)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        seen = {c.output[0]: 0.0 for c, _ in clips}
        for feed in calib:
            for name, v in zip(names, sess.run(None, feed)):
                if name in seen:
                    seen[name] = max(seen[name], float(np.max(v)))
        for clip, hi in clips:
            top = min(hi, seen[clip.output[0]]) or hi
            scale = 2.0 ** np.ceil(np.log2(top / (int(info.max) - int(info.min))))
            overrides[clip.input[0]] = [{"scale": np.array(scale, np.float32), "zero_point": np.array(info.min, info.dtype)}]
    return nodes, overrides


def write_onnx_int8(fp32: Path, out: Path, calib: list[dict], q: QuantOptions) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Folds BatchNorm/constants so quantization sees the inference graph; shapes are static (batch 1),
        # so the symbolic shape pass (and its sympy dependency) is not needed.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        activation_type = QuantType.QUInt8 if q.onnx_types[:2] == "U8" else QuantType.QInt8
        exclude, overrides = _onnx_float_nodes(pre, q.keep_float), {}
        if q.onnx_exact_upsample:
            exact, overrides = _onnx_exact_upsample(pre, activation_type, calib)
            exclude += exact
        quantize_static(
            str(pre),
            str(out),
            _Reader(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=q.onnx_reduce_range,
            activation_type=activation_type,
            weight_type=QuantType.QUInt8 if q.onnx_types[2:] == "U8" else QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=getattr(CalibrationMethod, q.onnx_calibrate),
            extra_options={"TensorQuantOverrides": overrides} if overrides else None,
        )


def write_openvino(onnx_fp32: Path, out: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_fp32)), str(out), compress_to_fp16=False)


def _ov_float_nodes(model, keep: Iterable[str]) -> tuple[list[str], list[str]]:
    kinds = ("Convolution", "ConvolutionBackpropData", "MatMul", "GroupConvolution")
    ops = model.get_ordered_ops()
    compute = [o for o in ops if o.get_type_name() in kinds]
    names = []
    if "input" in keep:
        images = [p.get_friendly_name() for p in model.get_parameters() if len(p.get_partial_shape()) == 4]
        names += [o.get_friendly_name() for o in first_compute(
            ops, images, lambda o: o.get_type_name() in kinds,
            lambda o: [v.get_node().get_friendly_name() for v in o.input_values()], lambda o: [o.get_friendly_name()])]
    if "output" in keep:
        names.append(compute[-1].get_friendly_name())
    return names, ["Concat"] if "concat" in keep else []


def write_openvino_int8(fp32_xml: Path, out: Path, calib: list[dict], q: QuantOptions) -> None:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = ov.Core().read_model(str(fp32_xml))
    names, types = _ov_float_nodes(model, q.keep_float)
    qmodel = nncf.quantize(
        model,
        nncf.Dataset(calib),
        preset=getattr(nncf.QuantizationPreset, q.nncf_preset),
        subset_size=len(calib),
        ignored_scope=nncf.IgnoredScope(names=names, types=types) if names or types else None,
        advanced_parameters=AdvancedQuantizationParameters(
            overflow_fix=getattr(OverflowFix, q.nncf_overflow_fix),
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, q.nncf_activation_range),
            disable_bias_correction=not q.nncf_bias_correction,
        ),
    )
    ov.save_model(qmodel, str(out), compress_to_fp16=False)


def export_stage(model_path: Path, stage: Stage, out: Path, calib: list[dict] | None, formats=FORMATS,
                 quant: QuantOptions | None = None, verify: list[dict] | None = None) -> dict:
    """Write `formats` of one stage into `out`; returns the manifest entries {format: {...}}.

    Intermediate FP32 files needed by an INT8 format but not asked for are written to a temp dir.
    With `verify` feeds, every written format is run on them and checked against Keras
    (FP32: max |diff| <= 1e-3 of the output range; INT8: finite and the right shape).
    """
    import keras

    quant = quant or DEFAULT_QUANT[stage.key]
    model = keras.models.load_model(model_path, compile=False)
    wrapper = serving_model(model, stage)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "keras": out / f"{stage.stem}.keras",
        "tflite-fp32": out / f"{stage.stem}_fp32.tflite",
        "tflite-int8": out / f"{stage.stem}_int8.tflite",
        "onnx-fp32": out / f"{stage.stem}_fp32.onnx",
        "onnx-int8": out / f"{stage.stem}_int8.onnx",
        "openvino-fp32": out / f"{stage.stem}_fp32.xml",
        "openvino-int8": out / f"{stage.stem}_int8.xml",
    }
    if any(f.endswith("int8") for f in formats) and not calib:
        raise ValueError("INT8 formats need calibration feeds")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_fp32 = files["onnx-fp32"] if "onnx-fp32" in formats else tmp / "fp32.onnx"
        ov_fp32 = files["openvino-fp32"] if "openvino-fp32" in formats else tmp / "fp32.xml"
        if "keras" in formats and Path(model_path).resolve() != files["keras"].resolve():
            shutil.copyfile(model_path, files["keras"])
        if "tflite-fp32" in formats:
            write_tflite(wrapper, files["tflite-fp32"], None, None)
        if "tflite-int8" in formats:
            write_tflite(wrapper, files["tflite-int8"], calib, quant)
        if {"onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"} & set(formats):
            write_onnx(wrapper, onnx_fp32)
        if "onnx-int8" in formats:
            write_onnx_int8(onnx_fp32, files["onnx-int8"], calib, quant)
        if {"openvino-fp32", "openvino-int8"} & set(formats):
            write_openvino(onnx_fp32, ov_fp32)
        if "openvino-int8" in formats:
            write_openvino_int8(ov_fp32, files["openvino-int8"], calib, quant)
    entries = {}
    for fmt in formats:
        f = files[fmt]
        e = {"file": f.name, "sha256": sha256(f), "bytes": f.stat().st_size}
        if fmt.startswith("openvino"):
            w = f.with_suffix(".bin")
            e.update(weights=w.name, weights_sha256=sha256(w), bytes=e["bytes"] + w.stat().st_size)
        entries[fmt] = e
    if verify:
        _verify(model, stage, out, entries, verify)
    return entries


def _verify(model, stage: Stage, out: Path, entries: dict, feeds: list[dict]) -> None:
    names = [n for n, _ in input_specs(model)]
    ref = np.stack([np.asarray(model([f[n] for n in names] if len(names) > 1 else f[names[0]], training=False)) for f in feeds])
    scale = max(float(np.ptp(ref)), float(np.abs(ref).max()), 1e-6)
    for fmt, e in entries.items():
        run = make_runner(fmt, out / e["file"])
        got = np.stack([run(f) for f in feeds])
        if got.shape != ref.shape or not np.isfinite(got).all():
            raise RuntimeError(f"{stage.key} {fmt}: output shape {got.shape} (want {ref.shape}) or non-finite values")
        # FP32 must compute the Keras model (max |diff|); INT8 only must not be broken (an all-zero
        # U-Net, a saturated regressor: mean |diff|), its accuracy is parity()'s job. Single mask-edge
        # pixels do move by more than half a probability in a good INT8 U-Net.
        exact = fmt.endswith("fp32") or fmt == "keras"
        err = float(np.abs(got - ref).max() if exact else np.abs(got - ref).mean())
        tol = 1e-3 if exact else 0.1
        if err > tol * scale:
            what = "max" if exact else "mean"
            raise RuntimeError(f"{stage.key} {fmt}: {what} |diff| vs Keras {err:.3g} > {tol:g} of the output scale {scale:.3g}")


# ---------------------------------------------------------------------------------- calibration


def calibration_cases(seed: int = CALIB_SEED):
    """Training-split cases in a fixed random order (the split file is sorted by id, not by age)."""
    from edgeba.dataset import split_cases

    train = split_cases("train")
    return [train[i] for i in np.random.default_rng(seed).permutation(len(train))]


def calibration_feeds(unet, inputs: dict, sex_input: bool, n: int = N_CALIB) -> tuple[list[dict], list[dict], dict]:
    """(U-Net feeds, regressor feeds, description) of n training images, exactly as `edgeba predict` makes them.

    `inputs`: {input name: PreprocessConfig} (preprocess.input_configs). The regressor inputs use the
    float U-Net's own mask (the runtime's path; no mask cache needed). When an input crops to the hand,
    images whose mask fails the QC are skipped, as the runtime refuses them.
    """
    from edgeba.io import load_image
    from edgeba.preprocess import crops_to_hand, regressor_feeds, source_mask, work_image, work_side
    from edgeba.quality import mask_quality
    from edgeba.segment import mask_from_prob, unet_input

    unet_size = inputs["image"].unet_size
    crops = crops_to_hand(inputs)
    seg, reg, used, skipped = [], [], [], 0
    side = work_side(inputs)
    for c in calibration_cases():
        if len(reg) == n:
            break
        pixels = load_image(c.image_path).pixels
        work = work_image(pixels, side)  # the runtime's U-Net sees its working copy
        x, box = unet_input(work, unet_size)
        seg.append({"image": x[None, :, :, None]})  # the U-Net sees every image, passing QC or not
        mask = None
        if crops:
            mask = mask_from_prob(np.asarray(unet(seg[-1]["image"], training=False)), box, work.shape)
            if not mask_quality(mask).ok:
                skipped += 1
                continue
        r = regressor_feeds(pixels, source_mask(mask, pixels.shape), inputs)[0]
        if sex_input:
            r["sex"] = np.array([[float(c.male)]], np.float32)
        reg.append(r)
        used.append(c)
    if len(reg) < n:
        raise ValueError(f"only {len(reg)} training images passed the mask QC, {n} wanted")
    desc = {
        "split": "train",
        "n_images": len(used),  # regressor calibration images
        "selection": f"split_cases('train') in numpy default_rng({CALIB_SEED}).permutation order, the first {n}"
        + (" whose float U-Net mask passes the QC" if crops else ""),
        "n_segment_images": len(seg),
        "n_skipped_mask_qc": skipped,
        "ids_sha256": hashlib.sha256(",".join(c.id for c in used).encode()).hexdigest(),
        "inputs": "segment.unet_input; preprocess.regressor_feeds "
        + ("with the float U-Net's mask (segment.mask_from_prob)" if crops else "of the whole image (preprocess.segment is false: no crop)"),
        "n_male": int(sum(c.male for c in used)),
        "age_months_range": [float(min(c.boneage_months for c in used)), float(max(c.boneage_months for c in used))],
    }
    return seg, reg, desc


# ------------------------------------------------------------------------------------- manifest


def load_run_config(regressor: Path, config: Path | None = None) -> dict:
    """The regressor run's config (target mean/std, preprocess): `config`, else config.json next to the model."""
    path = Path(config) if config else Path(regressor).parent / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the regressor run's config (target mean/std, preprocess) is missing; pass config=")
    run = json.loads(path.read_text())
    if "target" not in run or "preprocess" not in run:
        raise ValueError(f"{path}: needs 'target' and 'preprocess'")
    return run


def write_manifest(out: Path, manifest: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def load_manifest(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "manifest.json").read_text())


def main(unet: str | os.PathLike, regressor: str | os.PathLike, out: str | os.PathLike, *, config=None,
         formats: Iterable[str] = FORMATS, n_calib: int = N_CALIB, name: str = "edgeba-default",
         quant: dict[str, QuantOptions] | None = None, tta: bool = False) -> dict:
    """Export both stages to `out` and write its manifest.json; returns the manifest.

    `tta` makes the runtime average preprocess.TTA_VIEWS (5 regressor runs per image). It is a
    deployment decision taken on the tune split, not read from the training run: the shipped model
    runs one view (TTA was worse on tune for it, and costs 5x the regressor's compute).
    """
    import keras

    if unknown := set(formats) - set(FORMATS):
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    formats = tuple(f for f in FORMATS if f in set(formats))
    quant = {**DEFAULT_QUANT, **(quant or {})}
    unet, regressor, out = Path(unet), Path(regressor), Path(out)
    run = load_run_config(regressor, config)
    u = keras.models.load_model(unet, compile=False)
    unet_size = int(u.inputs[0].shape[1])
    r = keras.models.load_model(regressor, compile=False)
    reg_specs = {n: list(shape) for n, shape in input_specs(r)}
    sex_input = "sex" in reg_specs
    from edgeba.preprocess import input_configs

    inputs = input_configs(run, unet_size=unet_size)
    cfg = inputs["image"]
    if set(inputs) != set(reg_specs) - {"sex"}:
        raise ValueError(f"regressor image inputs {sorted(set(reg_specs) - {'sex'})} differ from the run's preprocessed inputs {sorted(inputs)}")
    for k, c in inputs.items():
        if reg_specs[k][1] != c.input_size:
            raise ValueError(f"regressor input {k!r} {tuple(reg_specs[k])} does not match preprocess input_size {c.input_size}")
    seg_calib, reg_calib, calib_desc = calibration_feeds(u, inputs, sex_input, n_calib)
    del u, r
    stages = {
        "segment": export_stage(unet, SEGMENT, out, seg_calib, formats, quant["segment"], verify=seg_calib[:4]),
        "regress": export_stage(regressor, REGRESS, out, reg_calib, formats, quant["regress"], verify=reg_calib[:4]),
    }
    manifest = {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "preprocess": cfg.to_dict(),
        **({"extra_inputs": {k: c.to_dict() for k, c in inputs.items() if k != "image"}} if len(inputs) > 1 else {}),
        "target": {"mean": float(run["target"]["mean"]), "std": float(run["target"]["std"])},
        "sex_input": sex_input,
        "tta": bool(tta),  # the runtime averages preprocess.TTA_VIEWS
        "io": {
            "segment": {"inputs": {"image": [1, unet_size, unet_size, 1]}, "output": SEGMENT.output},
            "regress": {"inputs": reg_specs, "output": REGRESS.output},
            "note": "TFLite: use the 'serving_default' signature runner; its input/output names are these",
        },
        "stages": stages,
        "calibration": calib_desc,
        "quantization": {k: v.as_dict() for k, v in quant.items()},
        "source": {"unet": str(unet), "unet_sha256": sha256(unet), "regressor": str(regressor), "regressor_sha256": sha256(regressor),
                   "run_config": run},
        "metrics": {},
    }
    write_manifest(out, manifest)
    return manifest


# --------------------------------------------------------------------------------------- parity

TARGETS = {"regress_mae_delta": 0.25, "regress_p95_abs_diff": 1.5, "segment_mean_iou": 0.97, "e2e_mae_drift": 0.3}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _diff_stats(pred: np.ndarray, ref: np.ndarray, truth: np.ndarray) -> dict:
    d = np.abs(pred - ref)
    mae, mae_ref = float(np.abs(pred - truth).mean()), float(np.abs(ref - truth).mean())
    return {
        "mae": round(mae, 4),
        "mae_float": round(mae_ref, 4),
        "mae_delta": round(mae - mae_ref, 4),
        "mean_abs_diff": round(float(d.mean()), 4),
        "p95_abs_diff": round(float(np.percentile(d, 95)), 4),
        "max_abs_diff": round(float(d.max()), 4),
        "bias": round(float((pred - ref).mean()), 4),
    }


def _accepted(mask: np.ndarray, crops: bool) -> bool:
    """Whether this chain goes on with this mask: a model that crops needs a QC-passing one, a whole-image
    model a present hand (the gate parity has always used; Predictor.predict scores more, with warnings)."""
    from edgeba.quality import hand_present, mask_quality

    q = mask_quality(mask)
    return bool(q.ok or (not crops and hand_present(q)))


def parity(model_dir: str | os.PathLike, split: str = "val", limit: int | None = None, threads: int = 1,
           formats: Iterable[str] | None = None, progress: bool = False) -> dict:
    """Every format of a model directory against its float Keras models on `split` (first `limit` cases).

    Runs each file through the runtime's own backends and stage functions, chained as `edgeba predict`
    chains them (U-Net gate, crop when the model crops, test-time augmentation when the manifest says tta):
      segment - IoU of each format's full-resolution mask vs the Keras mask, and how often the mask QC
                gate decides differently (an image refused by one and accepted by the other);
      regress - months from each format on the same input (cropped with the Keras mask) vs Keras, for
                what the runtime reports (the TTA mean) and for a single plain view;
      e2e     - each runtime's INT8 pair (FP32 when it has no INT8) vs the all-Keras chain, on the images
                both chains accept.
    """
    from edgeba import regress
    from edgeba.dataset import split_cases
    from edgeba.io import load_image
    from edgeba.manifest import load_manifest as load_model_manifest
    from edgeba.preprocess import crops_to_hand, input_configs, regressor_feeds, source_mask, work_image, work_side
    from edgeba.segment import mask_from_prob, unet_input

    m = load_model_manifest(model_dir)
    inputs = input_configs(m.data)
    cfg = inputs["image"]
    crops = crops_to_hand(inputs)
    tta = bool(m.data.get("tta", False))
    stages = ("segment", "regress") if m.segments else ("regress",)
    wanted = set(formats or FORMATS) | {"keras"}
    runners = {st: {f: runner(m.files(st, f), threads) for f in m.formats(st) if f in wanted} for st in stages}
    for st in stages:
        if "keras" not in runners[st]:
            raise ValueError(f"{model_dir}: no keras model for stage {st}: parity needs the float reference")
    pairs = {}  # family -> {stage: format}, as the runtime's backend picks them (INT8 first)
    for fam in FAMILIES:
        pick = {st: next((f for f in (f"{fam}-int8", f"{fam}-fp32") if f in runners[st]), None) for st in stages}
        if all(pick.values()):
            pairs[fam] = pick

    cases = split_cases(split)[:limit]
    side = work_side(inputs)
    seg_fmts = list(runners.get("segment", {}))
    iou = {f: [] for f in seg_fmts}
    gate = {f: [] for f in seg_fmts}
    reg = {f: [] for f in runners["regress"]}  # per image: months of each view
    e2e = {fam: [] for fam in pairs}  # per image: months, or None when this chain refuses the image
    it = cases
    if progress:
        from rich.progress import track

        it = track(cases, description=f"parity {split}")
    for c in it:
        pixels = load_image(c.image_path).pixels
        masks = {}
        if seg_fmts:
            work = work_image(pixels, side)  # the U-Net and its mask on the runtime's working copy
            x, box = unet_input(work, cfg.unet_size)
            for fmt, r in runners["segment"].items():
                masks[fmt] = mask_from_prob(r({"image": x[None, :, :, None]}), box, work.shape)
                iou[fmt].append(_iou(masks[fmt], masks["keras"]))
                gate[fmt].append(_accepted(masks[fmt], crops))
        sex = {"sex": np.array([[float(c.male)]], np.float32)} if m.sex_input else {}

        def months(fmt: str, mask) -> list[float]:
            return [regress.months(runners["regress"][fmt](v | sex), m.target) for v in regressor_feeds(pixels, source_mask(mask, pixels.shape), inputs, tta)]

        for fmt in reg:
            reg[fmt].append(months(fmt, masks.get("keras")))
        for fam, pick in pairs.items():
            fseg = pick.get("segment")
            if fseg and not (gate[fseg][-1] and gate["keras"][-1]):
                e2e[fam].append(None)
            elif crops:
                e2e[fam].append(float(np.mean(months(pick["regress"], masks[fseg]))))
            else:  # the regressor does not crop: same input as the regress stage
                e2e[fam].append(float(np.mean(reg[pick["regress"]][-1])))

    truth = np.array([c.boneage_months for c in cases])
    views = {f: np.array(v) for f, v in reg.items()}  # (n, n_views)
    ref = views["keras"].mean(axis=1)
    out = {
        "model": m.name,
        "split": split,
        "n_images": len(cases),
        "threads": threads,
        "tta_views": int(views["keras"].shape[1]),
        "targets": TARGETS,
        "float_mae": round(float(np.abs(ref - truth).mean()), 3),
        "segment": {},
        "regress": {},
        "e2e": {},
    }
    for fmt in (f for f in seg_fmts if f != "keras"):
        v, g = np.array(iou[fmt]), np.array(gate[fmt])
        out["segment"][fmt] = {
            "mean_iou": round(float(v.mean()), 4),
            "p05_iou": round(float(np.percentile(v, 5)), 4),
            "min_iou": round(float(v.min()), 4),
            "gate_disagree": int((g != np.array(gate["keras"])).sum()),
        }
    if seg_fmts:
        out["float_gate_refused"] = int(len(cases) - np.sum(gate["keras"]))
    for fmt, v in views.items():
        if fmt != "keras":
            out["regress"][fmt] = {**_diff_stats(v.mean(axis=1), ref, truth), "plain_view": _diff_stats(v[:, 0], views["keras"][:, 0], truth)}
    both = [i for i in range(len(cases)) if all(e2e[f][i] is not None for f in e2e)]
    for fam, v in e2e.items():
        keep = [i for i in range(len(cases)) if v[i] is not None]
        out["e2e"][fam] = {"formats": pairs[fam], "n_images": len(keep),
                           **_diff_stats(np.array([v[i] for i in keep]), ref[keep], truth[keep])}
    out["e2e_common_images"] = len(both)
    out["pass"] = parity_pass(out)
    return out


def parity_pass(report: dict, targets: dict = TARGETS) -> dict:
    """{stage/format: bool} against the issue-5 targets (INT8 formats; FP32 ones must be near-exact)."""
    ok = {}
    for fmt, s in report["segment"].items():
        ok[f"segment/{fmt}"] = s["mean_iou"] >= targets["segment_mean_iou"]
    for fmt, s in report["regress"].items():
        ok[f"regress/{fmt}"] = s["mae_delta"] <= targets["regress_mae_delta"] and s["p95_abs_diff"] <= targets["regress_p95_abs_diff"]
    for fam, s in report["e2e"].items():
        ok[f"e2e/{fam}"] = abs(s["mae_delta"]) <= targets["e2e_mae_drift"]
    return ok
