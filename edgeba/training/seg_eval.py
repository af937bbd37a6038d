"""Segmentation quality measured against annotations the masks were never made from.

- keypoint coverage: fraction of the 21 hand keypoints inside the mask (keypoints.csv ids whose row is
  annotated: some rows are all zeros);
- bone-ROI coverage: fraction of bone_rois/<id>.png pixels (221 ids) inside the mask;
- leakage: mask area outside the annotated hand box (union of the keypoints.csv bbox and the
  keypoints, grown by LEAK_MARGIN of its longer side), as a fraction of the mask area; the forearm
  below that box counts as leakage, so this is a strict measure;
- failure rate: masks that quality.mask_quality rejects (all ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edgeba import dataset
from edgeba.quality import mask_quality

LEAK_MARGIN = 0.10


def keypoint_coverage(mask: np.ndarray, points: np.ndarray) -> float:
    h, w = mask.shape
    xy = np.clip(np.round(points).astype(int), 0, [w - 1, h - 1])
    return float(mask[xy[:, 1], xy[:, 0]].astype(bool).mean())


def roi_coverage(mask: np.ndarray, roi: np.ndarray) -> float:
    r = roi > 0
    return float((mask.astype(bool) & r).sum() / max(r.sum(), 1))


def leakage(mask: np.ndarray, points: np.ndarray, bbox: tuple) -> float:
    x, y, bw, bh = bbox
    x0, y0 = min(x, points[:, 0].min()), min(y, points[:, 1].min())
    x1, y1 = max(x + bw, points[:, 0].max()), max(y + bh, points[:, 1].max())
    g = LEAK_MARGIN * max(x1 - x0, y1 - y0)
    h, w = mask.shape
    inside = np.zeros(mask.shape, bool)
    inside[max(0, int(y0 - g)) : min(h, int(np.ceil(y1 + g))), max(0, int(x0 - g)) : min(w, int(np.ceil(x1 + g)))] = True
    m = mask.astype(bool)
    return float((m & ~inside).sum() / max(m.sum(), 1))


def read_mask(path: Path) -> np.ndarray | None:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return None if m is None else (m > 127).astype(np.uint8)


def annotated_keypoints() -> dict[str, dict]:
    """keypoints.csv rows that carry annotations (some rows are all zeros)."""
    return {i: k for i, k in dataset.keypoints().items() if k["bbox"][2] > 0 and k["visible"].any()}


class Evaluator:
    """Accumulates the measures one mask at a time (full-resolution masks do not fit in memory)."""

    def __init__(self):
        self.kp = annotated_keypoints()
        self.rois = set(dataset.bone_roi_ids())
        self.rows: dict[str, dict] = {}

    def add(self, i: str, mask: np.ndarray, ok: bool | None = None) -> None:
        row = {"ok": mask_quality(mask).ok if ok is None else ok}
        if i in self.kp:
            row["kcov"] = keypoint_coverage(mask, self.kp[i]["points"])
            row["leak"] = leakage(mask, self.kp[i]["points"], self.kp[i]["bbox"])
        if i in self.rois:
            roi = cv2.imread(str(dataset.rsna_root() / "bone_rois" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
            row["rcov"] = roi_coverage(mask, roi)
        self.rows[i] = row

    def summary(self, ids: list[str]) -> dict:
        rows = [self.rows[i] for i in ids if i in self.rows]
        kcov = [r["kcov"] for r in rows if "kcov" in r]
        leak = [r["leak"] for r in rows if "leak" in r]
        rcov = [r["rcov"] for r in rows if "rcov" in r]

        def stat(v, f):
            return round(float(f(v)), 4) if v else None

        return {
            "images": len(rows),
            "missing": len(ids) - len(rows),
            "failure_rate": stat([not r["ok"] for r in rows], np.mean),
            "keypoint_ids": len(kcov),
            "keypoint_coverage": stat(kcov, np.mean),
            "keypoint_full_images": stat([c == 1.0 for c in kcov], np.mean),
            "roi_ids": len(rcov),
            "roi_coverage": stat(rcov, np.mean),
            "roi_coverage_min": stat(rcov, np.min),
            "leakage_median": stat(leak, np.median),
            "leakage_p90": stat(leak, lambda v: np.percentile(v, 90)),
        }


def evaluate(get_mask: Callable[[str], np.ndarray | None], ids: list[str]) -> dict:
    """Summary of all four measures over `ids`; get_mask(id) returns a mask or None (missing)."""
    ev = Evaluator()
    for i in ids:
        m = get_mask(i)
        if m is not None:
            ev.add(i, m)
    return ev.summary(ids)


def evaluate_dir(mask_dir: Path, split: str | None = None) -> dict:
    ids = [c.id for c in dataset.cases() if split is None or c.split == split]
    return evaluate(lambda i: read_mask(mask_dir / f"{i}.png"), ids)
