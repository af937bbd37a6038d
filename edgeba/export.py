"""Export: one place that turns the float Keras models into every format edge users run.

    keras -> tflite-fp32, tflite-int8     (TFLiteConverter from one batch-1 tf.function)
          -> onnx-fp32 -> onnx-int8       (tf2onnx from the same tf.function; onnxruntime static QDQ)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

FORMATS = ("keras", "tflite-fp32", "tflite-int8", "openvino-fp32", "openvino-int8", "onnx-fp32", "onnx-int8")
SHIPPED_FORMATS = ("keras", "tflite-int8", "openvino-int8", "onnx-int8")  # what edgeba/models/default holds
FAMILIES = ("tflite", "openvino", "onnx")
N_CALIB = 256  # >= 200 real training images (issue 5); TFLite calibration cost grows linearly with it
CALIB_SEED = 20261130
MASK_CACHES = ("cache/masks_unet", "cache/masks_bootstrap")  # relative to the repo root; first hit wins


@dataclass(frozen=True)
class Stage:
    key: str  # manifest stage key
    stem: str  # file name stem
    output: str  # output tensor name in every format


SEGMENT = Stage("segment", "unet", "prob")
REGRESS = Stage("regress", "regressor", "age_z")
STAGES = {s.key: s for s in (SEGMENT, REGRESS)}


@dataclass
class QuantOptions:
    """Knobs of the post-training quantization; the defaults are the shipped choice (see export/PARITY.md).

    keep_float: parts left in float in every INT8 format: "output" = the layer producing the model
    output (the regressor's last Dense, so months do not get an int8 step), "input" = the first
    convolution, "concat" = the U-Net skip concatenations (TFLite/onnxruntime give a concat one scale).
    """

    keep_float: tuple[str, ...] = ()
    onnx_calibrate: str = "MinMax"  # onnxruntime CalibrationMethod name
    onnx_reduce_range: bool = True  # 7-bit weights: no int16 saturation on x86 CPUs without VNNI
    nncf_preset: str = "MIXED"  # asymmetric activations: ELU/BatchNorm outputs are not >= 0
    nncf_overflow_fix: str = "ENABLE"  # same saturation trap as reduce_range, for OpenVINO
    tflite_output_float: bool = True  # keep the last layer (and so the output) float in TFLite

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


DEFAULT_QUANT = {
    "segment": QuantOptions(keep_float=(), tflite_output_float=False),
    "regress": QuantOptions(keep_float=("output",)),
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

    The image is the 4-D input, the sex the 2-D one, whatever the builder named its layers.
    """
    specs = []
    for t in model.inputs:
        shape = tuple(int(d) for d in t.shape[1:])
        specs.append(("image" if len(shape) == 3 else "sex", (1, *shape)))
    if sorted(n for n, _ in specs) not in (["image"], ["image", "sex"]):
        raise ValueError(f"unexpected model inputs {[tuple(t.shape) for t in model.inputs]}")
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


def make_runner(fmt: str, path: str | os.PathLike, threads: int = 1) -> Callable[[dict], np.ndarray]:
    """feeds {name: float32 array} -> the model's single output, for any format.

    Float reference semantics everywhere: OpenVINO runs FP32 models in bf16 on CPUs with AMX/
    AVX512-BF16 unless told INFERENCE_PRECISION_HINT=f32.
    """
    path = str(path)
    if fmt == "keras":
        import keras

        model = keras.models.load_model(path, compile=False)
        names = [n for n, _ in input_specs(model)]
        return lambda feeds: np.asarray(model([feeds[n] for n in names] if len(names) > 1 else feeds[names[0]], training=False))
    if fmt.startswith("tflite"):
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner()
        return lambda feeds: next(iter(runner(**feeds).values()))
    if fmt.startswith("onnx"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)[0]
    if fmt.startswith("openvino"):
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        return lambda feeds: compiled(feeds)[0]
    raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")


# -------------------------------------------------------------------------------------- writers


def _tflite_ops(content: bytes) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    tensors = {t["index"]: t["name"] for t in it.get_tensor_details()}
    return [{"op": o["op_name"], "outputs": [tensors[i] for i in o["outputs"]], "inputs": list(o["inputs"])} for o in it._get_ops_details()]


def _tflite_float_nodes(fp32: bytes, keep: Iterable[str]) -> list[str]:
    """Output tensor names (the debugger's node names) of the ops to leave in float."""
    ops = [o for o in _tflite_ops(fp32) if o["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONCATENATION")]
    compute = [o for o in ops if o["op"] != "CONCATENATION"]
    nodes = []
    if "input" in keep:
        nodes += compute[0]["outputs"]
    if "output" in keep:
        nodes += compute[-1]["outputs"]
    if "concat" in keep:
        nodes += [t for o in ops if o["op"] == "CONCATENATION" for t in o["outputs"]]
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
    compute = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")]
    nodes = []
    if "input" in keep:
        nodes.append(compute[0].name)
    if "output" in keep:
        # The last compute node and everything after it (its bias Add, activation).
        last = list(g.node).index(compute[-1])
        nodes += [n.name for n in list(g.node)[last:]]
    if "concat" in keep:
        nodes += [n.name for n in g.node if n.op_type == "Concat"]
    return nodes


def write_onnx_int8(fp32: Path, out: Path, calib: list[dict], q: QuantOptions) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Folds BatchNorm/constants so quantization sees the inference graph; shapes are static (batch 1),
        # so the symbolic shape pass (and its sympy dependency) is not needed.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            _Reader(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=q.onnx_reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_onnx_float_nodes(pre, q.keep_float),
            calibrate_method=getattr(CalibrationMethod, q.onnx_calibrate),
            extra_options={"CalibTensorRangeSymmetric": False},
        )


def write_openvino(onnx_fp32: Path, out: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_fp32)), str(out), compress_to_fp16=False)


def _ov_float_nodes(model, keep: Iterable[str]) -> tuple[list[str], list[str]]:
    compute = [o for o in model.get_ordered_ops() if o.get_type_name() in ("Convolution", "ConvolutionBackpropData", "MatMul", "GroupConvolution")]
    names = []
    if "input" in keep:
        names.append(compute[0].get_friendly_name())
    if "output" in keep:
        names.append(compute[-1].get_friendly_name())
    return names, ["Concat"] if "concat" in keep else []


def write_openvino_int8(fp32_xml: Path, out: Path, calib: list[dict], q: QuantOptions) -> None:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = ov.Core().read_model(str(fp32_xml))
    names, types = _ov_float_nodes(model, q.keep_float)
    qmodel = nncf.quantize(
        model,
        nncf.Dataset(calib),
        preset=getattr(nncf.QuantizationPreset, q.nncf_preset),
        subset_size=len(calib),
        ignored_scope=nncf.IgnoredScope(names=names, types=types) if names or types else None,
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=getattr(OverflowFix, q.nncf_overflow_fix)),
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
        got = np.stack([make_runner(fmt, out / e["file"])(f) for f in feeds])
        if got.shape != ref.shape or not np.isfinite(got).all():
            raise RuntimeError(f"{stage.key} {fmt}: output shape {got.shape} (want {ref.shape}) or non-finite values")
        err = float(np.abs(got - ref).max())
        if fmt.endswith("fp32") and err > 1e-3 * scale:
            raise RuntimeError(f"{stage.key} {fmt}: max |diff| vs Keras {err:.3g} > 1e-3 of the output scale {scale:.3g}")


# ---------------------------------------------------------------------------------- calibration


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def cached_mask(case_id: str) -> np.ndarray | None:
    """The cached hand mask (uint8 {0,1}) of a dataset image, from the first cache that has it."""
    import cv2

    for d in MASK_CACHES:
        p = repo_root() / d / f"{case_id}.png"
        if p.is_file():
            return (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
    return None


def calibration_cases(n: int = N_CALIB, seed: int = CALIB_SEED):
    """n training-split cases in a fixed random order (the split file is sorted by id, not by age)."""
    from edgeba.dataset import split_cases

    train = split_cases("train")
    order = np.random.default_rng(seed).permutation(len(train))[:n]
    return [train[i] for i in sorted(order)]


def calibration_feeds(cases, unet_size: int, cfg, sex_input: bool) -> tuple[list[dict], list[dict], dict]:
    """(U-Net feeds, regressor feeds, description) through the runtime's preprocessing.

    The regressor inputs use the cached masks (the U-Net's own masks, made once for the whole
    dataset) so calibration does not run the U-Net again.
    """
    from edgeba.io import load_image
    from edgeba.preprocess import regressor_input
    from edgeba.segment import unet_input

    seg, reg, sources = [], [], {}
    for c in cases:
        pixels = load_image(c.image_path).pixels
        x, _ = unet_input(pixels, unet_size)
        seg.append({"image": x.reshape(1, unet_size, unet_size, 1).astype(np.float32)})
        mask = cached_mask(c.id)
        if mask is None:
            raise FileNotFoundError(f"no cached mask for {c.id} in {MASK_CACHES}")
        r = regressor_input(pixels, mask, cfg)
        feed = {"image": r.reshape(1, *r.shape, 1).astype(np.float32)}
        if sex_input:
            feed["sex"] = np.array([[float(c.male)]], np.float32)
        reg.append(feed)
    ids = ",".join(c.id for c in cases)
    desc = {
        "split": "train",
        "n_images": len(cases),
        "selection": f"numpy default_rng({CALIB_SEED}).permutation of split_cases('train'), first {len(cases)}",
        "ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
        "segment_inputs": "segment.unet_input of the loaded image",
        "regress_inputs": "preprocess.regressor_input with the cached U-Net hand mask (bootstrap mask where none)",
        "n_male": int(sum(c.male for c in cases)),
        "age_months_range": [float(min(c.boneage_months for c in cases)), float(max(c.boneage_months for c in cases))],
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
         quant: dict[str, QuantOptions] | None = None) -> dict:
    """Export both stages to `out` and write its manifest.json; returns the manifest."""
    import keras

    formats = tuple(f for f in FORMATS if f in set(formats))
    if unknown := set(formats) - set(FORMATS):
        raise ValueError(f"unknown formats {sorted(unknown)}")
    quant = {**DEFAULT_QUANT, **(quant or {})}
    unet, regressor, out = Path(unet), Path(regressor), Path(out)
    run = load_run_config(regressor, config)
    u = keras.models.load_model(unet, compile=False)
    unet_size = int(u.inputs[0].shape[1])
    r = keras.models.load_model(regressor, compile=False)
    sex_input = len(r.inputs) == 2
    reg_specs = {n: list(shape) for n, shape in input_specs(r)}
    from edgeba.preprocess import PreprocessConfig

    cfg = PreprocessConfig.from_dict({**run["preprocess"], "unet_size": unet_size})
    if int(r.inputs[0].shape[1]) != cfg.input_size:
        raise ValueError(f"regressor input {tuple(r.inputs[0].shape)} does not match preprocess input_size {cfg.input_size}")
    del u, r
    cases = calibration_cases(n_calib)
    seg_calib, reg_calib, calib_desc = calibration_feeds(cases, unet_size, cfg, sex_input)
    stages = {
        "segment": export_stage(unet, SEGMENT, out, seg_calib, formats, quant["segment"], verify=seg_calib[:4]),
        "regress": export_stage(regressor, REGRESS, out, reg_calib, formats, quant["regress"], verify=reg_calib[:4]),
    }
    manifest = {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "preprocess": cfg.to_dict(),
        "target": {"mean": float(run["target"]["mean"]), "std": float(run["target"]["std"])},
        "sex_input": sex_input,
        "io": {
            "segment": {"inputs": {"image": [1, unet_size, unet_size, 1]}, "output": SEGMENT.output},
            "regress": {"inputs": reg_specs, "output": REGRESS.output},
            "note": "TFLite: use the 'serving_default' signature runner; its input/output names are these",
        },
        "stages": stages,
        "calibration": calib_desc,
        "quantization": {k: v.as_dict() for k, v in quant.items()},
        "source": {"unet": unet.name, "unet_sha256": sha256(unet), "regressor": regressor.name, "regressor_sha256": sha256(regressor)},
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


def parity(model_dir: str | os.PathLike, split: str = "val", limit: int | None = None, threads: int = 1,
           formats: Iterable[str] | None = None, progress: bool = False) -> dict:
    """Every format of a model directory against its float Keras models on `split` (first `limit` cases).

    Runs each file through the runtime's own backends (edgeba.backends) and the runtime's own
    stage functions, exactly as `edgeba predict` chains them:
      segment - mean IoU of each format's full-resolution mask vs the Keras mask;
      regress - months from each format on the same input (built with the Keras mask) vs Keras;
      e2e     - each runtime's INT8 pair (its FP32 pair when no INT8) vs the all-Keras chain.
    """
    import importlib

    from edgeba import regress
    from edgeba.dataset import split_cases
    from edgeba.io import load_image
    from edgeba.manifest import load_manifest as load_model_manifest
    from edgeba.preprocess import PreprocessConfig, regressor_input
    from edgeba.segment import mask_from_prob, unet_input

    m = load_model_manifest(model_dir)
    cfg = PreprocessConfig.from_dict(m.preprocess)
    target = m.target
    stages = ("segment", "regress") if cfg.segment else ("regress",)
    wanted = set(formats or FORMATS) | {"keras"}
    runners = {}
    for st in stages:
        runners[st] = {}
        for fmt in m.formats(st):
            if fmt in wanted:
                family = fmt.split("-")[0]
                runners[st][fmt] = importlib.import_module(f"edgeba.backends.{family}").Runner(m.files(st, fmt), threads)
        if "keras" not in runners[st]:
            raise ValueError(f"{model_dir}: no keras model for stage {st}: parity needs the float reference")
    pairs = {}  # family -> (segment format, regress format) as the runtime's backend would choose them
    for fam in FAMILIES:
        pick = {st: next((f for f in (f"{fam}-int8", f"{fam}-fp32") if f in runners[st]), None) for st in stages}
        if all(pick.values()):
            pairs[fam] = pick

    cases = split_cases(split)[:limit]
    ious = {f: [] for f in runners.get("segment", {})}
    reg = {f: [] for f in runners["regress"]}
    e2e = {fam: [] for fam in pairs}
    e2e_ref = []
    it = cases
    if progress:
        from rich.progress import track

        it = track(cases, description=f"parity {split}")
    for c in it:
        pixels = load_image(c.image_path).pixels
        masks = {}
        if cfg.segment:
            x, box = unet_input(pixels, cfg.unet_size)
            for fmt, r in runners["segment"].items():
                masks[fmt] = mask_from_prob(r.run({"image": x[None, :, :, None]}), box, pixels.shape)
            for fmt in ious:
                ious[fmt].append(_iou(masks[fmt], masks["keras"]))

        def months(fmt: str, mask) -> float:
            feed = {"image": regressor_input(pixels, mask, cfg)[None, :, :, None]}
            if m.sex_input:
                feed["sex"] = np.array([[float(c.male)]], np.float32)
            return regress.months(runners["regress"][fmt].run(feed), target)

        for fmt in reg:
            reg[fmt].append(months(fmt, masks.get("keras")))
        e2e_ref.append(reg["keras"][-1])  # the all-Keras chain
        for fam, pick in pairs.items():
            mask = masks.get(pick.get("segment"))
            e2e[fam].append(months(pick["regress"], mask))

    truth = np.array([c.boneage_months for c in cases])
    out = {
        "model": m.name,
        "split": split,
        "n_images": len(cases),
        "threads": threads,
        "targets": TARGETS,
        "segment": {},
        "regress": {},
        "e2e": {},
    }
    for fmt, v in ious.items():
        if fmt != "keras":
            v = np.array(v)
            out["segment"][fmt] = {"mean_iou": round(float(v.mean()), 4), "p05_iou": round(float(np.percentile(v, 5)), 4), "min_iou": round(float(v.min()), 4)}
    ref = np.array(reg["keras"])
    out["float_mae"] = round(float(np.abs(ref - truth).mean()), 3)
    for fmt, v in reg.items():
        if fmt != "keras":
            out["regress"][fmt] = _diff_stats(np.array(v), ref, truth)
    for fam, v in e2e.items():
        out["e2e"][fam] = {"formats": pairs[fam], **_diff_stats(np.array(v), np.array(e2e_ref), truth)}
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
