"""Calibrate a model's 90 % prediction interval and write it into its manifest.

    python export/calibrate_interval.py --model DIR --split tune [--backend auto] [--residuals-from RUN_DIR]

Runs the model end to end (load, U-Net gate, regressor with the 5 views of `--precise`) on every image
of a held-out split: the plain view gives the one-view residual, the views' mean the `--precise`
residual, their spread the scale of the `--precise` interval (edgeba/interval.py). The split must be
one the model was not fitted on; `val` is refused (it is only reported, never used for a choice).
`--residuals-from RUN_DIR` takes the residuals from a training run's predictions_<split>.csv and
predictions_<split>_tta.csv instead: a proxy for a model refitted on that split (its train-only
sibling's residuals), recorded as such in the manifest. Rerun whenever the shipped model changes.

`--conditions-model DIR` also calibrates the half-width of each condition of edgeba/conditions.py (a bright
film around the hand, a noisy image): the split's images under the stress suite's transforms that make it,
run end to end by DIR's model (a model directory whose regressor was not fitted on the split, e.g. the
shipped one's train-only sibling on the keras backend), keeping those the pipeline flags.
`--conditions-shift` (with `--residuals-from`) does the same with the model itself when no train-only sibling can
be run (its weights not kept): each flagged variant's residual is approximated by the sibling's held-out clean
residual plus what the condition did to this model's estimate (its estimate of the variant minus its estimate of the
clean image). The model was fitted on the split's labels, not on what an acquisition change does to its estimates.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgeba import dataset, interval, stress
from edgeba.conditions import CONDITIONS, flagged
from edgeba.errors import EdgebaError
from edgeba.manifest import DEFAULT_DIR
from edgeba.predictor import Predictor


def _run_csv(path: Path) -> dict[str, tuple[float, float]]:
    with open(path, newline="") as f:
        return {r["id"]: (float(r["boneage_months"]), float(r["predicted_months"])) for r in csv.DictReader(f)}


def measure(model_dir: Path, split: str, backend: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Per image of the split: id, true months, plain-view and views-mean months, views' spread."""
    pred = Predictor(model_dir, backend, tta=True)
    rows, refused = [], []
    cases = dataset.split_cases(split)
    for k, case in enumerate(cases, 1):
        try:
            p = pred.predict(case.image_path, "male" if case.male else "female")
        except EdgebaError as exc:
            refused.append((case.id, str(exc)))
            continue
        rows.append(_row(case, p))
        if k % 20 == 0:
            print(f"  {k}/{len(cases)}", file=sys.stderr, flush=True)
    return rows, refused


def _row(case, p) -> dict:
    v = p.view_months
    return {"id": case.id, "true": case.boneage_months, "single": v[0], "tta": float(np.mean(v)), "spread": float(np.std(v))}


def measure_conditions(model_dir: Path, split: str, backend: str) -> dict[str, tuple[list[dict], int]]:
    """Per condition: rows as `measure` for the split's images under its transforms whose pipeline flags it
    (the stress suite's draws: its seed, the clean image's mask), and how many variants were not flagged."""
    pred = Predictor(model_dir, backend, tta=True)
    out: dict[str, tuple[list[dict], int]] = {c.name: ([], 0) for c in CONDITIONS}
    with tempfile.TemporaryDirectory(prefix="edgeba-cal-") as tmp:
        for k, case in enumerate(dataset.split_cases(split), 1):
            sex = "male" if case.male else "female"
            try:
                clean = pred.predict(case.image_path, sex)
            except EdgebaError:
                continue
            img = stress.read_raw(case)
            if clean.mask is None or clean.mask.shape != img.shape:
                continue  # the suite's transforms need the hand's mask in the stored frame
            for c in CONDITIONS:
                for name in c.transforms:
                    path = stress.write_variant(img, clean.mask, case.id, name, stress.SEED, Path(tmp))
                    try:
                        p = pred.predict(path, sex)
                    except EdgebaError:
                        continue
                    finally:
                        path.unlink(missing_ok=True)
                    rows, unflagged = out[c.name]
                    if c in flagged(p.mask_quality["metrics"]):
                        rows.append(_row(case, p))
                    else:
                        out[c.name] = (rows, unflagged + 1)
            if k % 20 == 0:
                print(f"  {k} images", file=sys.stderr, flush=True)
    return out


def _shifted(variant: dict, own_clean: dict, held_clean: dict) -> dict:
    """`variant`'s row with the held-out clean estimate moved by what the condition did to this model's estimate."""
    return variant | {m: held_clean[m] + variant[m] - own_clean[m] for m in ("single", "tta")}


def _modes(rows: list[dict]) -> dict:
    true = np.array([r["true"] for r in rows])
    single = np.array([r["single"] for r in rows])
    tta = np.array([r["tta"] for r in rows])
    return {
        "single": interval.calibrate(single - true) | {"mae": round(float(np.mean(np.abs(single - true))), 3)},
        "tta": interval.calibrate(tta - true, [r["spread"] for r in rows]) | {"mae": round(float(np.mean(np.abs(tta - true))), 3)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_DIR, help="model directory (its manifest.json is updated)")
    ap.add_argument("--split", default="tune", choices=("train", "tune"), help="held-out split (never val)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--residuals-from", type=Path, default=None, help="training run whose predictions_<split>*.csv give the residuals (proxy)")
    ap.add_argument("--conditions-model", type=Path, default=None,
                    help="model directory (not fitted on the split) that calibrates the bright-film condition")
    ap.add_argument("--conditions-backend", default="keras")
    ap.add_argument("--conditions-shift", action="store_true",
                    help="calibrate the conditions from this model's shifts added to the --residuals-from residuals")
    ap.add_argument("--dry-run", action="store_true", help="print the calibration, do not write the manifest")
    a = ap.parse_args(argv)

    if a.conditions_shift and (a.residuals_from is None or a.conditions_model is not None):
        ap.error("--conditions-shift needs --residuals-from and replaces --conditions-model")
    t0 = time.time()
    rows, refused = measure(a.model, a.split, a.backend)
    own = {r["id"]: r for r in rows}  # this model's clean estimates, before a proxy's residuals replace them
    if a.residuals_from is not None:
        single = _run_csv(a.residuals_from / f"predictions_{a.split}.csv")
        tta = _run_csv(a.residuals_from / f"predictions_{a.split}_tta.csv")
        rows = [r | {"true": single[r["id"]][0], "single": single[r["id"]][1], "tta": tta[r["id"]][1]}
                for r in rows if r["id"] in single and r["id"] in tta]
        source = (f"proxy: residuals of {a.residuals_from.as_posix()} (predictions_{a.split}.csv, _tta.csv), a sibling "
                  f"never fitted on {a.split}; the views' spread from this model end to end ({a.backend})")
    else:
        source = f"this model end to end on {a.split} ({a.backend} backend)"
    cal = {
        "coverage": interval.COVERAGE,
        "method": "split-conformal on absolute residuals; --precise scaled by the views' spread (edgeba/interval.py)",
        "split": a.split,
        "source": source,
        "n_refused": len(refused),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python export/calibrate_interval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "modes": _modes(rows),
    }
    if a.conditions_model is not None:
        measured = measure_conditions(a.conditions_model, a.split, a.conditions_backend)
        cal["conditions"] = {c.name: _modes(measured[c.name][0]) | {
            "source": f"{a.conditions_model.as_posix()} end to end ({a.conditions_backend}) on the {a.split} images under the stress "
                      f"suite's {' and '.join(c.transforms)} (seed {stress.SEED}) that it flags; {measured[c.name][1]} variants not flagged"}
            for c in CONDITIONS}
    if a.conditions_shift:
        held = {r["id"]: r for r in rows}
        measured = measure_conditions(a.model, a.split, a.backend)
        cal["conditions"] = {c.name: _modes([_shifted(r, own[r["id"]], held[r["id"]]) for r in measured[c.name][0] if r["id"] in held]) | {
            "source": f"{a.residuals_from.as_posix()}'s held-out clean residuals on {a.split}, each moved by what the stress suite's "
                      f"{' and '.join(c.transforms)} (seed {stress.SEED}) did to this model's estimate ({a.backend}), for the variants "
                      f"it flags; {measured[c.name][1]} variants not flagged"}
            for c in CONDITIONS}
    print(json.dumps(cal, indent=1))
    print(f"{len(rows)} images, {len(refused)} refused, {time.time() - t0:.0f} s", file=sys.stderr)
    if not a.dry_run:
        path = a.model / "manifest.json"
        data = json.loads(path.read_text())
        data["interval"] = cal
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote the interval calibration into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
