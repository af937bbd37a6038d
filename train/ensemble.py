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
Members that see differently preprocessed images (the whole radiograph, the upright hand crop) each get a
named image input (--inputs, one name per member; the first member's is `image`); the run's config then
records each input's preprocessing (`extra_inputs`), which export copies into the manifest, and its
metrics are the mean of the members' prediction files (there is no one crop cache to evaluate the graph on;
tests/test_ensemble.py proves the graph computes exactly that mean):
    python train/ensemble.py --members train/runs/regressor/relu_sex_enh_noseg_pre_final_soup \
        train/runs/regressor/effnet_seg320_e28 --inputs image crop --run-dir train/runs/regressor/pair_soup_effnet
Otherwise members must share the preprocessing and the sex input.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import keras
import numpy as np

from edgeba.preprocess import PreprocessConfig
from edgeba.training.crops import load_crop_cache
from edgeba.training.nets import average_regressors, count_macs
from edgeba.training.regressor import RegressorConfig, split_metrics, write_metrics
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
    p.add_argument("--cache", type=Path, help="the members' crop cache (not with --inputs)")
    p.add_argument("--members", type=Path, nargs="+", required=True, help="run directories")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--average-weights", action="store_true", help="one model with the mean weights (default: output ensemble)")
    p.add_argument("--last", type=int, metavar="K", help="with --average-weights: each run's last K epoch snapshots, not its best model")
    p.add_argument("--inputs", nargs="+", metavar="NAME", help="each member's image input name (members with different preprocessing)")
    a = p.parse_args(argv)
    if a.last and not a.average_weights:
        p.error("--last needs --average-weights")
    if a.inputs:
        if a.average_weights or len(a.inputs) != len(a.members) or a.inputs[0] != "image":
            p.error("--inputs: one name per member, the first 'image', and not with --average-weights")
        return mixed_ensemble(a.members, a.inputs, a.run_dir, argv)
    if a.cache is None:
        p.error("--cache is required")

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
    fitted = fitted_splits(member_metrics)
    result = write_metrics(model, cache, cfg, target, a.run_dir, max(m["n_train"] for m in member_metrics),
                           max(m["n_tune"] for m in member_metrics), fit_splits=fitted, **how)
    # val is in metrics.json, for reporting only; members that fitted tune make the tune number in-sample
    print(json.dumps({("fitted_tune_mae" if "tune" in fitted else "tune_mae"): result["tune"]["plain"]["mae"]}))
    return result


def fitted_splits(member_metrics: list[dict]) -> list[str]:
    """The splits any member was fitted on (tune among them: the ensemble's tune number is in-sample)."""
    return sorted({s for m in member_metrics for s in fit_splits(m)}, key=["train", "tune"].index)


def _predictions(path: Path) -> dict[str, tuple[float, int, float]]:
    with open(path, newline="") as f:
        return {r["id"]: (float(r["boneage_months"]), int(r["male"]), float(r["predicted_months"])) for r in csv.DictReader(f)}


def mixed_ensemble(runs: list[Path], names: list[str], run_dir: Path, argv) -> dict:
    """Members on differently preprocessed inputs -> one graph; metrics from the members' prediction files."""
    confs = [json.loads((r / "config.json").read_text()) for r in runs]
    by_name: dict[str, dict] = {}
    for c, n, r in zip(confs, names, runs):
        if by_name.setdefault(n, c["preprocess"]) != c["preprocess"]:
            raise SystemExit(f"{r}: input {n!r} is already fed another preprocessing")
        if c["sex_input"] != confs[0]["sex_input"]:
            raise SystemExit(f"{r}: sex input differs from {runs[0]}")
    model = average_regressors([keras.models.load_model(r / "regressor.keras") for r in runs], [c["target"] for c in confs], names)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "regressor.keras")
    how = {"members": [str(r) for r in runs], "inputs": names, "combine": "ensemble",
           "command": "python train/ensemble.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    config = {"variant": "ensemble", "sex_input": confs[0]["sex_input"], "preprocess": by_name["image"],
              "extra_inputs": {n: c for n, c in by_name.items() if n != "image"}, "target": confs[0]["target"], **how}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    member_metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    result = {**how, "metrics_from": "mean of the members' predictions_<split>[_tta].csv",
              "fit_splits": fitted_splits(member_metrics),
              "params": int(model.count_params()), "gmac": round(count_macs(model) / 1e9, 4),
              "n_train": max(m["n_train"] for m in member_metrics), "n_tune": max(m["n_tune"] for m in member_metrics)}
    for split in ("tune", "val"):
        result[split] = {}
        for suffix, key in (("", "plain"), ("_tta", "tta")):
            files = [_predictions(r / f"predictions_{split}{suffix}.csv") for r in runs]
            ids = [i for i in files[0] if all(i in f for f in files)]
            true = np.array([files[0][i][0] for i in ids])
            pred = np.mean([[f[i][2] for i in ids] for f in files], axis=0)
            result[split][key] = split_metrics(true, pred, np.array([files[0][i][1] for i in ids]))
            with open(run_dir / f"predictions_{split}{suffix}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "boneage_months", "male", "predicted_months"])
                w.writerows([i, files[0][i][0], files[0][i][1], round(float(v), 2)] for i, v in zip(ids, pred))
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"tune_mae": result["tune"]["plain"]["mae"], "fit_splits": result["fit_splits"]}))
    return result


if __name__ == "__main__":
    main()
