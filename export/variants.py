"""Measure the INT8 variants behind the shipped choices of edgeba.export.DEFAULT_QUANT (export/PARITY.md).

    python export/variants.py --unet U.keras --regressor R.keras --n-calib 256 --n-val 100 --out export/variants_val.json

Regressor only (its months are what the choices move); same calibration images as the exporter, the
first --n-val validation images through the runtime preprocessing, plain view; statistics in months.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeba import export
from edgeba.export import QuantOptions

VARIANTS = {
    "tflite-int8": {
        "output int8 (plain full-integer)": QuantOptions(tflite_output_float=False),
        "output layer float (shipped)": export.DEFAULT_QUANT["regress"],
        "first + output layer float": QuantOptions(keep_float=("input", "output")),
    },
    "onnx-int8": {
        "S8S8 reduce_range, output int8 (toolchain probe)": QuantOptions(onnx_types="S8S8", onnx_reduce_range=True, keep_float=()),
        "S8S8 reduce_range, output float": QuantOptions(onnx_types="S8S8", onnx_reduce_range=True),
        "U8U8, output int8": QuantOptions(keep_float=()),
        "U8U8, output float (shipped)": export.DEFAULT_QUANT["regress"],
    },
    "openvino-int8": {
        "NNCF defaults (MEAN_MINMAX ranges, fast bias correction)": QuantOptions(nncf_activation_range="MEAN_MINMAX", nncf_bias_correction=True, keep_float=()),
        "MINMAX ranges, fast bias correction": QuantOptions(nncf_bias_correction=True),
        "MINMAX ranges, no bias correction, output int8": QuantOptions(keep_float=()),
        "MINMAX ranges, no bias correction, output float (shipped)": export.DEFAULT_QUANT["regress"],
    },
}


def main(argv: list[str] | None = None) -> dict:
    import keras

    from edgeba.dataset import split_cases
    from edgeba.io import load_image
    from edgeba.preprocess import PreprocessConfig, regressor_input

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unet", type=Path, required=True)
    p.add_argument("--regressor", type=Path, required=True)
    p.add_argument("--n-calib", type=int, default=export.N_CALIB)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    run = export.load_run_config(a.regressor)
    unet = keras.models.load_model(a.unet, compile=False)
    model = keras.models.load_model(a.regressor, compile=False)
    cfg = PreprocessConfig.from_dict({**run["preprocess"], "unet_size": int(unet.inputs[0].shape[1])})
    sex_input = len(model.inputs) == 2
    _, calib, desc = export.calibration_feeds(unet, cfg, sex_input, a.n_calib)
    if cfg.segment:
        raise SystemExit("variants.py feeds the uncropped view; the shipped regressor does not crop")
    val = []
    for c in split_cases("val")[: a.n_val]:
        f = {"image": regressor_input(load_image(c.image_path).pixels, None, cfg)[None, :, :, None]}
        if sex_input:
            f["sex"] = np.array([[float(c.male)]], np.float32)
        val.append(f)
    std = float(run["target"]["std"])
    wrapper = export.serving_model(model, export.REGRESS)
    ref = np.array([np.asarray(wrapper([f[n] for n, _ in export.input_specs(model)])[export.REGRESS.output]).item() for f in val])
    results = {"n_calib": len(calib), "calibration_ids_sha256": desc["ids_sha256"], "n_val": len(val), "split": "val", "view": "plain", "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export.write_onnx(wrapper, tmp / "fp32.onnx")
        export.write_openvino(tmp / "fp32.onnx", tmp / "fp32.xml")
        for fmt, variants in VARIANTS.items():
            for name, q in variants.items():
                t0 = time.time()
                f = tmp / {"tflite-int8": "q.tflite", "onnx-int8": "q.onnx", "openvino-int8": "q.xml"}[fmt]
                if fmt == "tflite-int8":
                    export.write_tflite(wrapper, f, calib, q)
                elif fmt == "onnx-int8":
                    export.write_onnx_int8(tmp / "fp32.onnx", f, calib, q)
                else:
                    export.write_openvino_int8(tmp / "fp32.xml", f, calib, q)
                run_q = export.make_runner(fmt, f)
                d = (np.array([run_q(x).item() for x in val]) - ref) * std
                r = {"bias": round(float(d.mean()), 3), "mean_abs_diff": round(float(np.abs(d).mean()), 3),
                     "p95_abs_diff": round(float(np.percentile(np.abs(d), 95)), 3), "max_abs_diff": round(float(np.abs(d).max()), 3),
                     "seconds": round(time.time() - t0, 1)}
                results["variants"].setdefault(fmt, {})[name] = r
                print(fmt, name, r, flush=True)
    a.out.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
