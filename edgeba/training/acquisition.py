"""Training views of the fitted radiographs as a clinic might acquire them (robustness, issue 15).

The stress suite (edgeba/stress.py) found what the regressor never saw in training and handles worst: a bright
plate or a collimated field around the hand, a small hand on a large plate, sensor noise, a hand turned from its
pose. This module draws each fitted radiograph under some of those changes, with wider ranges than the suite's and its
own seed (the suite measures; it is not the training set), and runs every variant through the inference pipeline
itself (Predictor: turns, inversion, re-framing, with the model's INT8 U-Net) up to the regressor's geometry stage.
Training then sees what inference will see. The result is a crop cache (crops.write_crop_cache) for `--mix-cache`.

    python -m edgeba.training.acquisition --out cache/acq_noseg256.npz --masks cache/masks_unet

Built from RSNA images: it stays in cache/, never committed. Val images are never drawn.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from edgeba import dataset, stress
from edgeba.errors import EdgebaError
from edgeba.manifest import load_manifest
from edgeba.preprocess import input_configs
from edgeba.training.crops import crop_u8, read_mask, write_crop_cache

SEED = 20261204  # not the stress suite's 20261203

# name -> transform(img, mask, rng); ranges wider than the suite's (stress.py) on purpose.
DRAWS = {
    "bright_plate": lambda img, mask, rng: stress.bright_plate(img, mask, rng, levels=(0.45, 0.95)),
    "collimation": lambda img, mask, rng: stress.collimation(img, mask, rng, levels=(0.45, 0.95), margins=(0.03, 0.25)),
    "small_on_plate": lambda img, mask, rng: stress.small_on_plate(img, rng, scales=(0.25, 0.7)),
    "noise": lambda img, mask, rng: stress.noise(img, rng, sigmas=(0.01, 0.06)),
    # A hand turned from its own pose: the regressor reads it differently even when re-framed (stress suite, rot+-15:
    # 1.0-1.8 months over clean on train300 and tune; train/RESULTS.md, session 17). Beyond 24 degrees the pipeline
    # turns the hand upright first (reframe.MAX_TILT), so these views hold both kinds.
    "rotation": lambda img, mask, rng: stress.rotate(img, float(rng.uniform(-35.0, 35.0))),
}

_predictor = None


def _start(model: Path | None, backend: str) -> None:
    global _predictor
    from edgeba.predictor import Predictor

    _predictor = Predictor(model, backend, threads=1)


def plan(cases, per_image: int, seed: int = SEED) -> list[tuple]:
    """(case, draw name) pairs: `per_image` different draws per radiograph, chosen by the seed."""
    rng = np.random.default_rng(seed)
    names = list(DRAWS)
    return [(c, n) for c in cases for n in rng.choice(names, size=min(per_image, len(names)), replace=False)]


def variant_crop(case, name: str, mask_dir: Path, seed: int = SEED):
    """The regressor's geometry-stage crop (uint8) of one drawn variant and whether its mask passed QC;
    None when the pipeline refuses the variant (it is then not trained on, as it would not be scored)."""
    img = stress.read_raw(case)
    mask = read_mask(mask_dir, case.id)
    rng = np.random.default_rng([seed, int(case.id), list(DRAWS).index(name)])
    with tempfile.TemporaryDirectory(prefix="edgeba-acq-") as tmp:
        path = Path(tmp) / f"{case.id}_{name}.png"
        stress._write(path, DRAWS[name](img, mask, rng))
        try:
            p = _predictor.predict(path, "male" if case.male else "female")
        except EdgebaError:
            return None
    return crop_u8(p.source_pixels, p.source_mask(), _predictor.cfg), bool(p.mask_quality["ok"])


def _one(job):
    case, name, mask_dir, seed = job
    return variant_crop(case, name, mask_dir, seed)


def build(out: Path, mask_dir: Path, model: Path | None = None, backend: str = "tflite", per_image: int = 2,
          splits=("train", "tune"), workers: int = 2, seed: int = SEED, command: str = "") -> dict:
    cases = [c for c in dataset.cases() if c.split in splits and c.split != "val"]
    jobs = plan(cases, per_image, seed)
    with ProcessPoolExecutor(workers, initializer=_start, initargs=(model, backend)) as pool:
        results = list(pool.map(_one, [(c, n, mask_dir, seed) for c, n in jobs], chunksize=8))
    kept = [(c, n, r) for (c, n), r in zip(jobs, results) if r is not None]
    cfg = input_configs(load_manifest(model).data)["image"]  # the geometry of the crops (Predictor.cfg)
    write_crop_cache(out, cfg, [f"{c.id}/{n}" for c, n, _ in kept], [c.boneage_months for c, _, _ in kept],
                     [c.male for c, _, _ in kept], [c.split for c, _, _ in kept], [r[1] for _, _, r in kept],
                     np.stack([r[0] for _, _, r in kept]), command)
    return {"variants": len(jobs), "refused": len(jobs) - len(kept)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Crop cache of fitted radiographs under drawn acquisition changes.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--masks", type=Path, required=True, help="folder of <id>.png hand masks of the raw radiographs")
    p.add_argument("--model", type=Path, help="model directory whose pipeline prepares the variants (default model)")
    p.add_argument("--backend", default="tflite")
    p.add_argument("--per-image", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    command = shlex.join(["python", "-m", "edgeba.training.acquisition", *(sys.argv[1:] if argv is None else argv)])
    print(build(a.out, a.masks, a.model, a.backend, a.per_image, workers=a.workers, command=command))


if __name__ == "__main__":
    main()
