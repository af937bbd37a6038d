"""Soft targets for distillation: the mean prediction of finished runs, with 5-view TTA, on the train split.

    python train/teacher.py --cache cache/gpu/crops_noseg256.npz --out cache/teacher_train.csv \
        --members train/runs/regressor/RUN_A train/runs/regressor/RUN_B ...

Writes id,boneage_months,male,predicted_months for every train image of the cache (the format of a run's
predictions_<split>.csv), for `python -m edgeba.training.regressor --soft-targets CSV --soft-weight W`.
The members must share the cache's preprocessing. Only train images are predicted: tune stays the judge.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np

from edgeba.training.crops import load_crop_cache
from edgeba.training.regressor import RegressorConfig, check_geometry, predict_months, write_predictions


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--members", type=Path, nargs="+", required=True, help="run directories")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    cache = load_crop_cache(a.cache)
    tr = cache["split"] == "train"
    preds = []
    for run in a.members:
        conf = json.loads((run / "config.json").read_text())
        cfg = RegressorConfig.from_dict(conf)
        check_geometry(cache, cfg.preprocess, str(a.cache))
        model = keras.models.load_model(run / "regressor.keras")
        preds.append(predict_months(model, cache["crops"][tr], cache["male"][tr], cfg, conf["target"], tta=True))
        print(f"{run.name}: train MAE {np.abs(preds[-1] - cache['age'][tr]).mean():.2f}", flush=True)
    mean = np.mean(preds, axis=0)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(a.out, cache, tr, mean)
    print(f"teacher: train MAE {np.abs(mean - cache['age'][tr]).mean():.2f} over {int(tr.sum())} images -> {a.out}")


if __name__ == "__main__":
    main()
