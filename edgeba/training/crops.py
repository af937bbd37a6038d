"""Compact training cache: the geometry stage (crop_stage) of every RSNA image, as uint8.

Cropping needs the full-resolution image and its mask; everything after it (augmentation,
normalisation, sharpening) runs on the fly from this cache, with the same edgeba code inference uses.
The cache is derived from the RSNA images: it stays outside git (cache/), never committed.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np
from rich.progress import track

from edgeba import dataset
from edgeba.io import load_image
from edgeba.preprocess import PreprocessConfig, crop_stage
from edgeba.quality import mask_quality


def read_mask(mask_dir: Path, case_id: str) -> np.ndarray:
    m = cv2.imread(str(mask_dir / f"{case_id}.png"), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise FileNotFoundError(f"no mask for {case_id} in {mask_dir}")
    return (m > 127).astype(np.uint8)


def crop_u8(pixels: np.ndarray, mask: np.ndarray | None, cfg: PreprocessConfig) -> np.ndarray:
    return np.round(crop_stage(pixels, mask, cfg) * 255).astype(np.uint8)  # exact: crop_stage gives 8-bit levels


def build_crop_cache(out: Path, cfg: PreprocessConfig, mask_dir: Path | None, command: str = "") -> Path:
    """Write out (npz): ids, age, male, split, mask_ok (QC), the crops as lossless WebP, and the preprocessing config."""
    cases = dataset.cases()
    crops = np.zeros((len(cases), cfg.input_size, cfg.input_size), np.uint8)
    mask_ok = np.ones(len(cases), bool)  # mask passes QC (always true without segmentation)
    for i, c in enumerate(track(cases, description=f"crops {out.name}")):
        pixels = load_image(c.image_path).pixels
        mask = read_mask(mask_dir, c.id) if cfg.segment else None
        if mask is not None:
            mask_ok[i] = mask_quality(mask).ok
        crops[i] = crop_u8(pixels, mask, cfg)
    return write_crop_cache(out, cfg, [c.id for c in cases], [c.boneage_months for c in cases], [c.male for c in cases],
                            [c.split for c in cases], mask_ok, crops, command)


def build_lowres_cache(out: Path, cfg: PreprocessConfig, unsquash: bool = False, command: str = "",
                       unet: Path | None = None) -> Path:
    """Crop cache of the 12,611 low-resolution images (100x100, squashed) for pre-training.

    Ids of the fixed split keep their split (so tune still only monitors); every other id is `train`.
    Val ids are left out entirely: their low-res copies must never be trained on.
    unsquash: first narrow each image to the typical original width/height (dataset.typical_aspect, about
    0.79), so its hand has the proportions of the letterboxed full-resolution images the model is fine-tuned on.
    With cfg.segment the low-res images have no masks of their own: `unet` (a Keras U-Net, e.g. the
    default model's unet.keras) segments each one as the runtime would, and mask_ok records its QC."""
    if cfg.segment and unet is None:
        raise ValueError("the low-res images have no masks: pass unet= (a U-Net .keras) or use segment=False")
    split_of = {c.id: c.split for c in dataset.cases()}
    rows = [r for r in dataset.lowres_table() if split_of.get(r["id"], "train") != "val"]
    aspect = dataset.typical_aspect() if unsquash else 1.0
    images = []
    for r in track(rows, description=f"load {out.name}"):
        pixels = load_image(dataset.rsna_root() / "lowres" / f"{r['id']}.png").pixels
        if unsquash:
            h, w = pixels.shape
            pixels = cv2.resize(pixels, (round(w * aspect), h), interpolation=cv2.INTER_AREA)
        images.append(pixels)
    masks = unet_masks(unet, images, cfg.unet_size) if cfg.segment else [None] * len(images)
    crops = np.zeros((len(rows), cfg.input_size, cfg.input_size), np.uint8)
    mask_ok = np.ones(len(rows), bool)
    for i, (pixels, mask) in enumerate(zip(images, masks)):
        if mask is not None:
            mask_ok[i] = mask_quality(mask).ok and mask.any()
            if not mask.any():
                continue  # nothing to crop: stays black and is excluded from fitting (mask_ok False)
        crops[i] = crop_u8(pixels, mask, cfg)
    return write_crop_cache(out, cfg, [r["id"] for r in rows], [float(r["boneage_months"]) for r in rows],
                            [int(r["male"]) for r in rows], [split_of.get(r["id"], "train") for r in rows],
                            mask_ok, crops, command)


def unet_masks(unet: Path, images: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Each image's hand mask from a Keras U-Net, through the runtime's own input and mask steps."""
    import keras

    from edgeba.segment import mask_from_prob, unet_input
    from edgeba.training.unet import predict_probs

    model = keras.saving.load_model(unet, compile=False)
    feeds = [unet_input(p, size) for p in images]
    probs = predict_probs(model, np.stack([x for x, _ in feeds]))
    return [mask_from_prob(pr, box, p.shape) for pr, (_, box), p in zip(probs, feeds, images)]


def write_crop_cache(out: Path, cfg: PreprocessConfig, ids, age, male, split, mask_ok, crops: np.ndarray, command: str = "") -> Path:
    """command: how the cache was built (the model card prints it with the training commands)."""
    # Lossless WebP per crop: ~40% smaller than zlib, so caches fit the GPU machine's 64 MiB carry.
    blobs = [cv2.imencode(".webp", c, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].ravel() for c in crops]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        ids=np.array(ids),
        age=np.array(age, np.float32),
        male=np.array(male, np.float32),
        split=np.array(split),
        mask_ok=np.array(mask_ok, bool),
        webp=np.concatenate(blobs),
        offsets=np.cumsum([0] + [len(b) for b in blobs]),
        preprocess=np.array(json.dumps(cfg.to_dict())),
        command=np.array(command),
    )
    return out


def load_crop_cache(path: Path) -> dict[str, np.ndarray]:
    """The cache as arrays, with crops decoded to (N, S, S) uint8."""
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    buf, off = d.pop("webp"), d.pop("offsets")
    d["crops"] = np.stack([cv2.imdecode(buf[off[i] : off[i + 1]], cv2.IMREAD_GRAYSCALE) for i in range(len(off) - 1)])
    d["preprocess"] = json.loads(str(d["preprocess"]))
    d["command"] = str(d.get("command", ""))
    return d


def cache_command(path: Path) -> str:
    """The command that built a cache ("" for caches written before it was recorded), without decoding it."""
    with np.load(path) as z:
        return str(z["command"]) if "command" in z.files else ""


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Build the crop cache that regressor training reads.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--masks", type=Path, help="folder of <id>.png hand masks (needed unless --no-segment)")
    p.add_argument("--size", type=int, default=PreprocessConfig.input_size)
    p.add_argument("--no-segment", action="store_true", help="plain letterbox of the whole image (ablation)")
    p.add_argument("--lowres", action="store_true", help="the 100x100 low-res images (pre-training; --no-segment unless --unet)")
    p.add_argument("--unsquash", action="store_true", help="with --lowres: restore the typical hand proportions first")
    p.add_argument("--unet", type=Path, help="with --lowres and segmentation: the U-Net (.keras) that masks each image")
    a = p.parse_args(argv)
    command = shlex.join(["python", "-m", "edgeba.training.crops", *(sys.argv[1:] if argv is None else argv)])
    cfg = PreprocessConfig(input_size=a.size, segment=not (a.no_segment or (a.lowres and a.unet is None)))
    if a.lowres:
        build_lowres_cache(a.out, cfg, unsquash=a.unsquash, command=command, unet=a.unet)
        return
    if cfg.segment and a.masks is None:
        p.error("--masks is required unless --no-segment")
    build_crop_cache(a.out, cfg, a.masks, command=command)


if __name__ == "__main__":
    main()
