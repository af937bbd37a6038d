"""Access to the RSNA bone-age data in ../shared/data/rsna, and the project's fixed split.

The images never enter this repository: they are read from the shared folder (or $EDGEBA_DATA).
The split lives in edgeba/data/rsna_split.csv so every number in the project uses the same one:
  train - fit the weights
  tune  - early stopping, model and threshold selection
  val   - reported, never used for any choice
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SPLIT_CSV = Path(__file__).parent / "data" / "rsna_split.csv"
SPLITS = ("train", "tune", "val")
KEYPOINT_NAMES = (
    "wrist;thumb1;thumb2;thumb3;thumb4;forefinger1;forefinger2;forefinger3;forefinger4;"
    "middle_finger1;middle_finger2;middle_finger3;middle_finger4;ring_finger1;ring_finger2;"
    "ring_finger3;ring_finger4;pinky_finger1;pinky_finger2;pinky_finger3;pinky_finger4"
).split(";")


def rsna_root() -> Path:
    """The RSNA folder: $EDGEBA_DATA, else ../shared/data/rsna next to the repo or cwd."""
    env = os.environ.get("EDGEBA_DATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[1]
    candidates += [repo.parent / "shared" / "data" / "rsna", Path.cwd().parent / "shared" / "data" / "rsna"]
    for c in candidates:
        if (c / "train.csv").is_file():
            return c
    raise FileNotFoundError(
        "RSNA data not found: set EDGEBA_DATA to the folder holding train.csv "
        f"(looked in {', '.join(str(c) for c in candidates)})"
    )


@dataclass(frozen=True)
class Case:
    id: str
    boneage_months: float
    male: int
    split: str

    @property
    def image_path(self) -> Path:
        return rsna_root() / "train" / f"{self.id}.jpg"

    @property
    def bone_roi_path(self) -> Path:
        return rsna_root() / "bone_rois" / f"{self.id}.png"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@lru_cache(maxsize=1)
def cases() -> tuple[Case, ...]:
    """Every full-hand training image with its label and split, in split-file order."""
    return tuple(
        Case(r["id"], float(r["boneage_months"]), int(r["male"]), r["split"]) for r in _read_csv(SPLIT_CSV)
    )


def split_cases(split: str) -> list[Case]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    return [c for c in cases() if c.split == split]


def age_bin(months: float) -> int:
    """Clinically meaningful age bands used for stratification and per-band reporting."""
    edges = (24, 60, 96, 132, 168)  # 0-2 y, 2-5, 5-8, 8-11, 11-14, 14+
    return int(np.searchsorted(edges, months, side="right"))


AGE_BAND_NAMES = ("0-2y", "2-5y", "5-8y", "8-11y", "11-14y", "14y+")


def make_split(seed: int = 20221, fractions=(0.7, 0.1, 0.2)) -> list[dict[str, str]]:
    """Stratified (age band x sex) assignment of train.csv ids to train/tune/val."""
    rows = _read_csv(rsna_root() / "train.csv")
    rng = np.random.default_rng(seed)
    strata: dict[tuple[int, int], list[dict[str, str]]] = {}
    for r in rows:
        strata.setdefault((age_bin(float(r["boneage_months"])), int(r["male"])), []).append(r)
    out = []
    for key in sorted(strata):
        group = sorted(strata[key], key=lambda r: int(r["id"]))
        order = rng.permutation(len(group))
        n_val = int(round(fractions[2] * len(group)))
        n_tune = int(round(fractions[1] * len(group)))
        for rank, i in enumerate(order):
            split = "val" if rank < n_val else "tune" if rank < n_val + n_tune else "train"
            r = group[i]
            out.append({"id": r["id"], "boneage_months": r["boneage_months"], "male": r["male"], "split": split})
    return sorted(out, key=lambda r: int(r["id"]))


def write_split(path: Path = SPLIT_CSV, **kw) -> None:
    rows = make_split(**kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "boneage_months", "male", "split"])
        w.writeheader()
        w.writerows(rows)


@lru_cache(maxsize=1)
def keypoints() -> dict[str, dict]:
    """id -> {'points': (21, 2) float array in the stored image frame, 'visible': (21,) bool, 'bbox': (x, y, w, h)}."""
    out = {}
    for r in _read_csv(rsna_root() / "keypoints.csv"):
        pts = np.array([[float(r[f"{n}_x"]), float(r[f"{n}_y"])] for n in KEYPOINT_NAMES])
        vis = np.array([int(float(r[f"{n}_v"])) > 0 for n in KEYPOINT_NAMES])
        bbox = tuple(float(r[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        out[r["id"]] = {"points": pts, "visible": vis, "bbox": bbox}
    return out


def bone_roi_ids() -> list[str]:
    return sorted(p.stem for p in (rsna_root() / "bone_rois").glob("*.png"))


@lru_cache(maxsize=1)
def typical_aspect() -> float:
    """Median width/height of the train-split originals (train.csv orig_width/orig_height): the usual
    shape the 100x100 low-res images were squashed from."""
    train = {c.id for c in split_cases("train")}
    rows = [r for r in _read_csv(rsna_root() / "train.csv") if r["id"] in train]
    return float(np.median([float(r["orig_width"]) / float(r["orig_height"]) for r in rows]))


@lru_cache(maxsize=1)
def lowres_table() -> tuple[dict[str, str], ...]:
    """lowres.csv rows: id, boneage_months, male, in_train (100x100 squashed images)."""
    return tuple(_read_csv(rsna_root() / "lowres.csv"))
