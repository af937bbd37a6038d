"""Combine finished regressor runs into one model and evaluate it like a training run: tune and val
metrics and prediction files from the crop cache.

Ensemble (output mean, edgeba.training.nets.average_regressors; costs the members' compute together):
    python train/ensemble.py --cache cache/gpu/crops_noseg256.npz \
        --members train/runs/regressor/relu_sex_enh_noseg_ft train/runs/regressor/relu_sex_enh_seg_s1_ft_noseg \
        --run-dir train/runs/regressor/ens2_noseg
Weight average ("model soup": one model, no extra compute) of runs fine-tuned from the same start, each
run's best model or, with --last K, its last K epoch snapshots (a run saves every epoch in snapshots/):
    python train/ensemble.py --cache cache/gpu/crops_noseg256.npz --average-weights \
        --members train/runs/regressor/relu_sex_enh_noseg_ft train/runs/regressor/relu_sex_enh_noseg_ft_s1 \
        --run-dir train/runs/regressor/relu_sex_enh_noseg_soup

The result is a normal run directory (config.json, metrics.json, regressor.keras, predictions_*.csv),
so export, the model card and the selection script treat it like any single run.
Members must share the preprocessing and the sex input (one input contract for the exported graph).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import keras

from edgeba.preprocess import PreprocessConfig
from edgeba.training.crops import load_crop_cache
from edgeba.training.nets import average_regressors
from edgeba.training.regressor import RegressorConfig, write_metrics
from edgeba.training.report import fit_splits


def average_weights(weights: list[list]) -> list:
    """Element-wise mean of several weight lists of the same network (BatchNorm statistics included:
    this is meant for weights fine-tuned from one start at a low learning rate, which sit close
    together; tune decides whether it helped)."""
    return [sum(ws) / len(ws) for ws in zip(*weights)]


def snapshot_weights(model: keras.Model, snapshot: Path) -> list:
    model.load_weights(snapshot)
    return model.get_weights()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--members", type=Path, nargs="+", required=True, help="run directories")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--average-weights", action="store_true", help="one model with the mean weights (default: output ensemble)")
    p.add_argument("--last", type=int, metavar="K", help="with --average-weights: each run's last K epoch snapshots, not its best model")
    a = p.parse_args(argv)
    if a.last and not a.average_weights:
        p.error("--last needs --average-weights")

    confs = [json.loads((r / "config.json").read_text()) for r in a.members]
    for c, r in zip(confs[1:], a.members[1:]):
        if c["preprocess"] != confs[0]["preprocess"] or c["sex_input"] != confs[0]["sex_input"]:
            raise SystemExit(f"{r}: preprocessing or sex input differs from {a.members[0]}")
    members = [keras.models.load_model(r / "regressor.keras") for r in a.members]
    if a.average_weights:
        if any(c["target"] != confs[0]["target"] for c in confs):
            raise SystemExit("weight averaging needs the same target normalisation in every run")
        model = members[0]
        if a.last:
            snaps = [x for r in a.members for x in sorted((r / "snapshots").glob("epoch*.weights.h5"))[-a.last :]]
            weights = [snapshot_weights(model, x) for x in snaps]
        else:
            snaps = [r / "regressor.keras" for r in a.members]
            weights = [m.get_weights() for m in members]
        model.set_weights(average_weights(weights))
    else:
        snaps = []
        model = average_regressors(members, [c["target"] for c in confs])
    a.run_dir.mkdir(parents=True, exist_ok=True)
    model.save(a.run_dir / "regressor.keras")

    first = confs[0]
    cfg = RegressorConfig(variant=first["variant"], sex_input=first["sex_input"], preprocess=PreprocessConfig.from_dict(first["preprocess"]))
    target = first["target"]
    how = {"members": [str(r) for r in a.members], "combine": "average-weights" if a.average_weights else "ensemble",
           "averaged": [str(x) for x in snaps], "command": "python train/ensemble.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    (a.run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "target": target, **how, "cache": str(a.cache)}, indent=2))
    cache = load_crop_cache(a.cache)
    member_metrics = [json.loads((r / "metrics.json").read_text()) for r in a.members]
    fitted = sorted({s for m in member_metrics for s in fit_splits(m)}, key=["train", "tune"].index)
    result = write_metrics(model, cache, cfg, target, a.run_dir, max(m["n_train"] for m in member_metrics),
                           max(m["n_tune"] for m in member_metrics), fit_splits=fitted, **how)
    # val is in metrics.json, for reporting only; members that fitted tune make the tune number in-sample
    print(json.dumps({("fitted_tune_mae" if "tune" in fitted else "tune_mae"): result["tune"]["plain"]["mae"]}))
    return result


if __name__ == "__main__":
    main()
