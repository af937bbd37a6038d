"""Hand segmentation end to end: classical bootstrap masks, then U-Net self-training.

    python train/segmentation.py bootstrap        # cache/masks_bootstrap/<id>.png for all ids
    python train/segmentation.py selftrain        # train/runs/unet/, resumable (rounds, epochs)
    python train/segmentation.py predict          # cache/masks_unet/<id>.png from the final U-Net
    python train/segmentation.py evaluate         # seg_eval on bootstrap and U-Net masks
    python train/segmentation.py int8 --model M   # TFLite full-int8 mask IoU vs float on val

Masks are derived from the RSNA images: they live in cache/ (gitignored) and are never committed.
Each mask is written to a temporary name and renamed, and a DONE file marks a complete folder, so a
reader never sees a half-written set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edgeba import dataset
from edgeba.io import load_image
from edgeba.quality import mask_quality
from edgeba.segment import bootstrap_mask

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "cache"
RUN_DIR = REPO / "train" / "runs" / "unet"
log = logging.getLogger("segmentation")


def write_mask(path: Path, mask: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    cv2.imwrite(str(tmp), (mask > 0).astype(np.uint8) * 255)
    os.replace(tmp, path)


def bootstrap(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "DONE").unlink(missing_ok=True)
    ids = [c.id for c in dataset.cases()]
    quality = {}
    t0 = time.time()
    for k, i in enumerate(ids, 1):
        mask = bootstrap_mask(load_image(dataset.rsna_root() / "train" / f"{i}.jpg").pixels)
        write_mask(out_dir / f"{i}.png", mask)
        q = mask_quality(mask)
        quality[i] = {"ok": q.ok, "reasons": q.reasons, **q.metrics}
        if k % 100 == 0 or k == len(ids):
            ok = sum(v["ok"] for v in quality.values())
            log.info("bootstrap %d/%d  ok %d (%.0f%%)  %.1f s", k, len(ids), ok, 100 * ok / k, time.time() - t0)
    (out_dir / "quality.json").write_text(json.dumps(quality, indent=0))
    (out_dir / "DONE").write_text(f"{len(ids)} masks\n")


CONFIG = {
    "size": 128,  # U-Net input; masks are upsampled to the image (see segment.mask_from_prob)
    "base": 8,  # filters of the first level, doubled per level: 0.145 GMAC
    "rounds": 5,  # self-training rounds after the bootstrap round
    "epochs_first": 12,
    "epochs_round": 3,
    "lr": 2e-3,
    "lr_round": 5e-4,
    "batch": 16,
    "seed": 0,
}


def selftrain() -> None:
    from edgeba.training.unet import build_unet, conv_macs, self_train

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    cfg = dict(CONFIG, gmac=round(conv_macs(build_unet(CONFIG["size"], CONFIG["base"])) / 1e9, 4))
    (RUN_DIR / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")

    def check_first_round(r: int, path: Path) -> None:
        # INT8 must be checked early: an architecture that quantizes badly is cheap to fix now.
        if r == 0:
            (RUN_DIR / "int8_check_round0.json").write_text(json.dumps(int8_check(path), indent=1) + "\n")

    model = self_train(cfg, RUN_DIR, CACHE / "unet_work", CACHE / "masks_bootstrap", after_round=check_first_round)
    model.save(RUN_DIR / "unet.keras")


def predict(out_dir: Path) -> None:
    """Full-resolution U-Net masks for every id, written atomically, then DONE."""
    import keras

    from edgeba.segment import mask_from_prob
    from edgeba.training.unet import load_inputs, predict_probs

    model = keras.saving.load_model(RUN_DIR / "unet.keras")
    size = model.input.shape[1]
    ids = [c.id for c in dataset.cases()]
    x, lbs, shapes = load_inputs(ids, size, CACHE / "unet_work" / f"inputs_{size}.npz")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "DONE").unlink(missing_ok=True)
    probs = predict_probs(model, x)
    quality = {}
    for k, i in enumerate(ids):
        mask = mask_from_prob(probs[k], lbs[k], shapes[k])
        write_mask(out_dir / f"{i}.png", mask)
        q = mask_quality(mask)
        quality[i] = {"ok": q.ok, "reasons": q.reasons, **q.metrics}
    (out_dir / "quality.json").write_text(json.dumps(quality, indent=0))
    (out_dir / "DONE").write_text(f"{len(ids)} masks from {RUN_DIR / 'unet.keras'}\n")
    log.info("predict: %d masks, %d pass QC", len(ids), sum(v["ok"] for v in quality.values()))


def evaluate() -> None:
    from edgeba.training.seg_eval import evaluate_dir

    out = {}
    for name in ("masks_bootstrap", "masks_unet"):
        if (CACHE / name / "DONE").exists():
            out[name] = {split or "all": evaluate_dir(CACHE / name, split) for split in ("val", "tune", "train", None)}
            log.info("%s val %s", name, out[name]["val"])
    (RUN_DIR / "metrics.json").write_text(json.dumps(out, indent=1) + "\n")


def int8_check(model_path: Path, n_calib: int = 100) -> dict:
    """Quick INT8 sanity check (the export stage owns the real export): TFLite full-int8 with ~100
    train images as calibration, mask IoU INT8 vs float on every val image at full resolution."""
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from edgeba.segment import mask_from_prob
    from edgeba.training.unet import load_inputs, predict_probs

    model = keras.saving.load_model(model_path)
    size = model.input.shape[1]
    cases = dataset.cases()
    ids = [c.id for c in cases]
    x, lbs, shapes = load_inputs(ids, size, CACHE / "unet_work" / f"inputs_{size}.npz")
    train_idx = [k for k, c in enumerate(cases) if c.split == "train"]
    calib = np.random.default_rng(0).choice(train_idx, n_calib, replace=False)

    def representative():
        for k in calib:
            yield [x[k][None, :, :, None]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    blob = conv.convert()
    interp = Interpreter(model_content=blob)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    val_idx = [k for k, c in enumerate(cases) if c.split == "val"]
    ref = predict_probs(model, x[val_idx])
    ious = []
    for j, k in enumerate(val_idx):
        interp.set_tensor(inp["index"], x[k][None, :, :, None].astype(np.float32))
        interp.invoke()
        q = mask_from_prob(interp.get_tensor(out["index"]), lbs[k], shapes[k]).astype(bool)
        f = mask_from_prob(ref[j], lbs[k], shapes[k]).astype(bool)
        ious.append((q & f).sum() / max((q | f).sum(), 1))
    ops = sorted({d["op_name"] for d in interp._get_ops_details()})
    res = {
        "model": str(model_path.relative_to(REPO)) if model_path.is_relative_to(REPO) else str(model_path),
        "calibration_images": n_calib,
        "val_images": len(ious),
        "iou_mean": round(float(np.mean(ious)), 4),
        "iou_p5": round(float(np.percentile(ious, 5)), 4),
        "iou_min": round(float(np.min(ious)), 4),
        "tflite_int8_kb": round(len(blob) / 1024, 1),
        "ops": ops,
    }
    log.info("int8 check: %s", res)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["bootstrap", "selftrain", "predict", "evaluate", "int8"])
    ap.add_argument("--model", type=Path, default=RUN_DIR / "unet.keras", help="model for the int8 stage")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if args.stage == "bootstrap":
        bootstrap(CACHE / "masks_bootstrap")
    elif args.stage == "selftrain":
        selftrain()
    elif args.stage == "predict":
        predict(CACHE / "masks_unet")
    elif args.stage == "int8":
        res = int8_check(args.model)
        (RUN_DIR / f"int8_check_{args.model.stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    else:
        evaluate()


if __name__ == "__main__":
    main()
