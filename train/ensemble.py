"""Average finished regressor runs into one model (edgeba.training.nets.average_regressors) and
evaluate it like a training run: tune and val metrics and prediction files from the crop cache.

    python train/ensemble.py --cache cache/gpu/crops_noseg256.npz \
        --members train/runs/regressor/relu_sex_enh_noseg_ft train/runs/regressor/relu_sex_enh_seg_s1_ft_noseg \
        --run-dir train/runs/regressor/ens2_noseg

The result is a normal run directory (config.json, metrics.json, regressor.keras, predictions_*.csv),
so export, the model card and the selection script treat it like any single run.
Members must share the preprocessing and the sex input (one input contract for the exported graph).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras

from edgeba.preprocess import PreprocessConfig
from edgeba.training.crops import load_crop_cache
from edgeba.training.nets import average_regressors, count_macs
from edgeba.training.regressor import RegressorConfig, _report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--members", type=Path, nargs="+", required=True, help="run directories")
    p.add_argument("--run-dir", type=Path, required=True)
    a = p.parse_args(argv)

    confs = [json.loads((r / "config.json").read_text()) for r in a.members]
    for c, r in zip(confs[1:], a.members[1:]):
        if c["preprocess"] != confs[0]["preprocess"] or c["sex_input"] != confs[0]["sex_input"]:
            raise SystemExit(f"{r}: preprocessing or sex input differs from {a.members[0]}")
    members = [keras.models.load_model(r / "regressor.keras") for r in a.members]
    model = average_regressors(members, [c["target"] for c in confs])
    a.run_dir.mkdir(parents=True, exist_ok=True)
    model.save(a.run_dir / "regressor.keras")

    first = confs[0]
    cfg = RegressorConfig(variant=first["variant"], sex_input=first["sex_input"], preprocess=PreprocessConfig.from_dict(first["preprocess"]))
    target = first["target"]
    (a.run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "target": target, "members": [str(r) for r in a.members], "cache": str(a.cache)}, indent=2))
    cache = load_crop_cache(a.cache)
    result = {
        "config": cfg.to_dict(),
        "members": [str(r) for r in a.members],
        "target": target,
        "params": int(model.count_params()),
        "gmac": round(count_macs(model) / 1e9, 4),
        "n_train": max(json.loads((r / "metrics.json").read_text())["n_train"] for r in a.members),
        "n_tune": max(json.loads((r / "metrics.json").read_text())["n_tune"] for r in a.members),
        "tune": _report(model, cache, cfg, target, "tune", a.run_dir),
        "val": _report(model, cache, cfg, target, "val", a.run_dir),
    }
    (a.run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"tune_mae": result["tune"]["plain"]["mae"], "val_mae": result["val"]["plain"]["mae"]}))
    return result


if __name__ == "__main__":
    main()
