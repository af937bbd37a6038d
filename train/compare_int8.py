"""Thesis (ELU) vs quantization-friendly (ReLU) regressor: float val MAE and INT8 drift per format.

Regressor stage only, from the crop cache (bit-identical to the runtime's regressor inputs, see
edgeba.preprocess.crop_stage), with the exporter's own INT8 writers and runners. Calibration:
256 QC-passing train crops; report: every val image (269).

    python train/compare_int8.py --cache cache/gpu/crops_seg256.npz \
        train/runs/regressor/thesis_sex_enh_seg train/runs/regressor/relu_sex_enh_seg --out train/results/int8_thesis_vs_relu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from edgeba import metrics
from edgeba.export import REGRESS, export_stage, make_runner
from edgeba.preprocess import PreprocessConfig, enhance_stage
from edgeba.training.crops import load_crop_cache

INT8 = ("tflite-int8", "onnx-int8", "openvino-int8")


def feeds(cache, idx, cfg: PreprocessConfig) -> list[dict]:
    return [
        {"image": enhance_stage(cache["crops"][i].astype(np.float32) / 255.0, cfg)[None, :, :, None],
         "sex": np.array([[cache["male"][i]]], np.float32)}
        for i in idx
    ]


def compare(run: Path, cache: dict, n_calib: int = 256) -> dict:
    conf = json.loads((run / "config.json").read_text())
    cfg, tgt = PreprocessConfig.from_dict(conf["preprocess"]), conf["target"]
    train = np.where((cache["split"] == "train") & cache["mask_ok"])[0]
    calib = feeds(cache, np.random.default_rng(0).permutation(train)[:n_calib], cfg)
    val_idx = np.where(cache["split"] == "val")[0]
    val, truth = feeds(cache, val_idx, cfg), cache["age"][val_idx]
    out = {"run": run.name, "n_val": len(val), "n_calib": len(calib)}
    with tempfile.TemporaryDirectory() as tmp:
        export_stage(run / "regressor.keras", REGRESS, Path(tmp), calib, formats=("keras",) + INT8)
        months = {}
        for fmt in ("keras",) + INT8:
            path = Path(tmp) / {"keras": "regressor.keras", "tflite-int8": "regressor_int8.tflite",
                                "onnx-int8": "regressor_int8.onnx", "openvino-int8": "regressor_int8.xml"}[fmt]
            run_fmt = make_runner(fmt, path)
            months[fmt] = np.array([float(np.ravel(run_fmt(f))[0]) for f in val]) * tgt["std"] + tgt["mean"]
    for fmt, pred in months.items():
        d = np.abs(pred - months["keras"])
        out[fmt] = {"val_mae": metrics.mae(truth, pred), "mae_minus_float": metrics.mae(truth, pred) - metrics.mae(truth, months["keras"]),
                    "drift_mean": float(d.mean()), "drift_p95": float(np.percentile(d, 95)), "drift_max": float(d.max())}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    cache = load_crop_cache(a.cache)
    results = [compare(r, cache) for r in a.runs]
    a.out.write_text(json.dumps(results, indent=2))
    for r in results:
        print(r["run"], {k: {m: round(v, 3) for m, v in r[k].items()} for k in ("keras",) + INT8})


if __name__ == "__main__":
    main()
