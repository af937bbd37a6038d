"""Recompute a finished run's BatchNorm statistics on the training images ("precise BN"), evaluate it like a
training run, and write it as a new run directory.

    python train/precise_bn.py --cache cache/gpu/crops_noseg256.npz \
        --source train/runs/regressor/relu_sex_enh_noseg_pre --run-dir train/runs/regressor/relu_sex_enh_noseg_pre_pbn

Why: BatchNorm's moving averages (momentum 0.99) remember about 100 steps, while a fine-tune epoch here is
30 steps; after a short fine-tune (and a change of input size after pre-training) they lag behind the final
weights. Here each moving statistic becomes the plain mean of its per-batch statistics over one pass through
the train images, without augmentation (what inference sees), with the final weights (Wu & Johnson 2021,
"Rethinking 'Batch' in BatchNorm"). Weights are unchanged; only moving_mean / moving_variance move.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import keras
import numpy as np

from edgeba.training.crops import load_crop_cache
from edgeba.training.regressor import RegressorConfig, check_geometry, model_inputs, write_metrics


def precise_bn(model: keras.Model, inputs: dict, batch_size: int = 32) -> int:
    """Set every BatchNorm layer's moving statistics to the mean of its batch statistics over `inputs`
    (one pass, batches in order). Returns the number of BatchNorm layers."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [b.momentum for b in bns]
    n = len(next(iter(inputs.values())))
    try:
        for k, start in enumerate(range(0, n, batch_size)):
            for b in bns:  # moving <- moving * k/(k+1) + batch / (k+1): the running mean of the batch stats
                b.momentum = k / (k + 1)
            model({name: x[start : start + batch_size] for name, x in inputs.items()}, training=True)
    finally:
        for b, m in zip(bns, saved):
            b.momentum = m
    return len(bns)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True, help="the crop cache the source run was fine-tuned on")
    p.add_argument("--source", type=Path, required=True, help="finished run directory")
    p.add_argument("--run-dir", type=Path, required=True)
    a = p.parse_args(argv)

    conf = json.loads((a.source / "config.json").read_text())
    cfg = RegressorConfig.from_dict(conf)
    cache = load_crop_cache(a.cache)
    check_geometry(cache, cfg.preprocess, str(a.cache))
    # The images the run was fitted on: its fitted splits (train, + tune after --fit-tune), QC-passing masks
    # (as regressor.train does).
    splits = cfg.fitted_splits
    fit = np.isin(cache["split"], splits) & (cache["mask_ok"] if conf.get("qc_only", True) else True)
    model = keras.models.load_model(a.source / "regressor.keras")
    n_bn = precise_bn(model, model_inputs(cache["crops"][fit], cache["male"][fit], cfg))
    a.run_dir.mkdir(parents=True, exist_ok=True)
    model.save(a.run_dir / "regressor.keras")

    how = {"init_from": str(a.source / "regressor.keras"), "recalibrated": f"precise BN: {n_bn} layers, {int(fit.sum())} {' + '.join(splits)} images",
           "command": "python train/precise_bn.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    target = conf["target"]
    (a.run_dir / "config.json").write_text(json.dumps({**conf, **how, "cache": str(a.cache)}, indent=2))
    src = json.loads((a.source / "metrics.json").read_text())
    result = write_metrics(model, cache, cfg, target, a.run_dir, src["n_train"], src["n_tune"], **how)
    print(json.dumps({"tune_mae": result["tune"]["plain"]["mae"]}))  # val is in metrics.json, for reporting only
    return result


if __name__ == "__main__":
    main()
