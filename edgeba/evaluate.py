"""Score a model on labelled images: the thesis metrics over every image of a labels CSV.

LABELS_CSV has columns id,boneage_months,male (id = the image file's stem, male = 1/0, used as the
sex input). Images that fail (unreadable, segmentation refused) are counted, never silently dropped.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeba.batch import IMAGE_SUFFIXES
from edgeba.errors import EdgebaError, InputError
from edgeba.interval import coverage_stats
from edgeba.metrics import age_band_mae, all_metrics, mae_interval


@dataclass
class Evaluation:
    metrics: dict | None  # the thesis metrics, the MAE's 95 % interval, the prediction intervals' coverage; None when no image succeeded
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, one-line reason)
    rows: list[dict] = field(default_factory=list)  # id, true, predicted, interval, male


def read_labels(path: str | Path) -> list[dict]:
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"id", "boneage_months", "male"} - set(reader.fieldnames or ())
            if missing:
                raise InputError(f"{p.name}: labels CSV lacks column(s) {', '.join(sorted(missing))}")
            rows = list(reader)
    except FileNotFoundError:
        raise InputError(f"{p}: labels file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{p.name}: unreadable labels CSV ({type(exc).__name__})") from None
    out = []
    for k, r in enumerate(rows, start=2):
        try:
            male = int(float(r["male"]))
            if male not in (0, 1):
                raise ValueError
            out.append({"id": r["id"].strip(), "boneage_months": float(r["boneage_months"]), "male": male})
        except (TypeError, ValueError):
            raise InputError(f"{p.name} line {k}: needs a number in boneage_months and 1/0 in male") from None
    if not out:
        raise InputError(f"{p.name}: labels CSV has no rows")
    return out


def index_images(folder: str | Path) -> dict[str, Path]:
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"{d}: images folder not found")
    return {f.stem: f for f in sorted(d.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES}


def evaluate(images_dir, labels_csv, predict: Callable[[Path, str], tuple[float, list[float] | None]],
             progress: Callable[[str], None] | None = None) -> Evaluation:
    """`predict(path, sex)` returns (months, 90 % interval [lo, hi] or None) or raises EdgebaError."""
    labels = read_labels(labels_csv)
    images = index_images(images_dir)
    ev = Evaluation(metrics=None)
    for lab in labels:
        if progress:
            progress(lab["id"])
        path = images.get(lab["id"])
        if path is None:
            ev.failures.append((lab["id"], "no image with this id in the folder"))
            continue
        try:
            months, interval = predict(path, "male" if lab["male"] else "female")
        except EdgebaError as exc:
            ev.failures.append((lab["id"], str(exc)))
            continue
        ev.rows.append({"id": lab["id"], "true": lab["boneage_months"], "predicted": months, "interval": interval, "male": lab["male"]})
    if ev.rows:
        true, pred = [r["true"] for r in ev.rows], [r["predicted"] for r in ev.rows]
        ev.metrics = {**all_metrics(true, pred), "mae_ci95": list(mae_interval(true, pred)), **coverage_stats(ev.rows),
                      "mae_by_age_band": age_band_mae(true, pred)}
    return ev
