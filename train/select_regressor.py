"""Select the shipped regressor on the tune split, end to end with the U-Net masks (float Keras).

    python train/select_regressor.py --masks cache/masks_unet --split tune [--candidates RUN RUN+RUN ...]

A candidate is a run directory name under --runs, or several joined by "+": their ensemble (the mean
of the members' months, what train/ensemble.py builds as one graph). Each candidate gets the runtime's
own inputs (edgeba.preprocess.regressor_input); models that crop to the hand are also scored on the images whose mask passes QC alone, since the runtime refuses the rest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np

from edgeba import dataset, metrics
from edgeba.io import load_image
from edgeba.preprocess import PreprocessConfig, regressor_input
from edgeba.quality import mask_quality
from edgeba.training.crops import read_mask
from edgeba.training.report import fit_splits

CANDIDATES = ("relu_sex_enh_seg", "relu_sex_enh_seg_s1", "thesis_sex_enh_seg", "relu_sex_enh_noseg")  # the first selection


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masks", type=Path, default=Path("cache/masks_unet"))
    p.add_argument("--split", default="tune")
    p.add_argument("--runs", type=Path, default=Path("train/runs/regressor"))
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    a = p.parse_args(argv)
    confs = {run: json.loads((a.runs / run / "config.json").read_text()) for cand in a.candidates for run in cand.split("+")}
    for run in confs:
        if a.split in fit_splits(json.loads((a.runs / run / "metrics.json").read_text())):  # a final fit (--fit-tune): its score on this split would be in-sample
            raise SystemExit(f"{run} was fitted on {a.split}: it cannot be selected on it")
    # Each candidate gets the inputs of its own preprocessing (input size, crop or not).
    pps = {json.dumps(c["preprocess"], sort_keys=True): PreprocessConfig.from_dict(c["preprocess"]) for c in confs.values()}
    cases = dataset.split_cases(a.split)
    inputs = {k: [] for k in pps}
    ok = []
    for c in cases:
        pixels = load_image(c.image_path).pixels
        mask = read_mask(a.masks, c.id)
        ok.append(mask_quality(mask).ok)
        for k, pp in pps.items():
            inputs[k].append(regressor_input(pixels, mask if pp.segment else None, pp))
    ok = np.array(ok)
    age = np.array([c.boneage_months for c in cases])
    sex = np.array([[c.male] for c in cases], np.float32)
    print(f"{a.split}: {len(cases)} images, {ok.sum()} with a QC-passing mask")
    preds = {}
    for cand in a.candidates:
        months = []
        for run in cand.split("+"):
            if run not in preds:
                conf = confs[run]
                model = keras.models.load_model(a.runs / run / "regressor.keras")
                x = np.stack(inputs[json.dumps(conf["preprocess"], sort_keys=True)])[..., None]
                feeds = {"image": x, "sex": sex} if conf["sex_input"] else x
                preds[run] = model.predict(feeds, verbose=0)[:, 0] * conf["target"]["std"] + conf["target"]["mean"]
            months.append(preds[run])
        pred = np.mean(months, axis=0)
        print(f"{cand:48s} MAE all {metrics.mae(age, pred):.2f}   QC-ok {metrics.mae(age[ok], pred[ok]):.2f}")


if __name__ == "__main__":
    main()
