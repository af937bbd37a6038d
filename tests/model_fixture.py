"""Build a tiny model directory with the contract's tensors, for testing the runtime before (and
besides) the trained default model: `python tests/model_fixture.py OUT_DIR`.

- U-Net-shaped: `image` (1,U,U,1) -> (1,U,U,1). Fixed weights: a blurred threshold of the image,
  which passes mask QC on real radiographs like tests/conftest.py's GOOD_IDS, through a skip concat.
- Regressor-shaped: `image` (1,S,S,1) + `sex` (1,1) -> (1,1), fixed weights (brightness + sex).
Formats: keras, tflite-int8 (U-Net with int8 input/output tensors, regressor with float ones),
onnx-fp32, onnx-int8 (QDQ), openvino-fp32.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

UNET_SIZE = 64
INPUT_SIZE = 64
TARGET = {"mean": 120.0, "std": 40.0}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _models():
    import keras

    keras.utils.set_random_seed(7)
    img = keras.Input((UNET_SIZE, UNET_SIZE, 1), batch_size=1, name="image")
    low = keras.layers.AveragePooling2D(4)(img)
    up = keras.layers.UpSampling2D(4, interpolation="bilinear")(low)
    cat = keras.layers.Concatenate()([up, img])
    # sigmoid(12 * (blurred - 0.3)): hand brighter than the stretched background
    head = keras.layers.Conv2D(1, 1, activation="sigmoid", name="prob")
    prob = head(cat)
    head.set_weights([np.array([12.0, 0.0], np.float32).reshape(1, 1, 2, 1), np.array([-3.6], np.float32)])
    unet = keras.Model(img, prob, name="unet")

    x = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), batch_size=1, name="image")
    sex = keras.Input((1,), batch_size=1, name="sex")
    conv = keras.layers.Conv2D(1, 3, strides=4, activation="relu")
    h = keras.layers.GlobalAveragePooling2D()(conv(x))
    h = keras.layers.Concatenate()([h, sex])
    dense = keras.layers.Dense(1)
    out = dense(h)
    # (months - mean) / std = 10 * mean brightness + 0.5 * male - 2: varies from image to image
    conv.set_weights([np.full((3, 3, 1, 1), 1 / 9, np.float32), np.zeros(1, np.float32)])
    dense.set_weights([np.array([[10.0], [0.5]], np.float32), np.array([-2.0], np.float32)])
    regressor = keras.Model([x, sex], out, name="regressor")
    return unet, regressor


def _real_inputs(n=8) -> list[tuple[np.ndarray, np.ndarray]]:
    """(U-Net input, regressor input) of real radiographs, through the runtime's own preprocessing."""
    from edgeba.dataset import cases
    from edgeba.io import load_image
    from edgeba.preprocess import PreprocessConfig, regressor_input
    from edgeba.segment import bootstrap_mask, unet_input

    cfg = PreprocessConfig(input_size=INPUT_SIZE, unet_size=UNET_SIZE)
    out = []
    for case in cases()[:n]:
        pixels = load_image(case.image_path).pixels
        out.append((unet_input(pixels, UNET_SIZE)[0], regressor_input(pixels, bootstrap_mask(pixels), cfg)))
    return out


_REAL: list = []


def _calibration(model):
    """Batches keyed by input name (converters reorder multi-input models), from real images."""
    if not _REAL:
        _REAL.extend(_real_inputs())
    for k, (u, r) in enumerate(_REAL):
        if model.name == "unet":
            yield {"image": u[None, :, :, None]}
        else:
            yield {"image": r[None, :, :, None], "sex": np.array([[k % 2]], np.float32)}


def _tflite_int8(model, int8_io: bool) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: _calibration(model)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def _onnx(model, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec(t.shape, tf.float32, name=t.name) for t in model.inputs]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))


def _onnx_int8(model, src: Path, dst: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(_calibration(model))

        def get_next(self):
            batch = next(self.it, None)
            return batch

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, extra_options={"ReduceRange": True})


def _openvino(src: Path, xml: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=False)


def build(out: Path) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out.mkdir(parents=True, exist_ok=True)
    unet, regressor = _models()
    stages: dict = {}
    for stage, model, int8_io in (("segment", unet, True), ("regress", regressor, False)):
        base = "unet" if stage == "segment" else "regressor"
        model.save(out / f"{base}.keras")
        (out / f"{base}_int8.tflite").write_bytes(_tflite_int8(model, int8_io))
        _onnx(model, out / f"{base}.onnx")
        _onnx_int8(model, out / f"{base}.onnx", out / f"{base}_int8.onnx")
        _openvino(out / f"{base}.onnx", out / f"{base}.xml")
        entry = {
            "keras": {"file": f"{base}.keras"},
            "tflite-int8": {"file": f"{base}_int8.tflite"},
            "onnx-fp32": {"file": f"{base}.onnx"},
            "onnx-int8": {"file": f"{base}_int8.onnx"},
            "openvino-fp32": {"file": f"{base}.xml", "weights": f"{base}.bin"},
        }
        for e in entry.values():
            e["sha256"] = _sha(out / e["file"])
            if "weights" in e:
                e["weights_sha256"] = _sha(out / e["weights"])
        stages[stage] = entry
    manifest = {
        "name": "edgeba-test-fixture",
        "created": "test",
        "preprocess": {"input_size": INPUT_SIZE, "enhance": True, "segment": True, "margin": 0.04, "unet_size": UNET_SIZE},
        "target": TARGET,
        "sex_input": True,
        "stages": stages,
        "metrics": {},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
