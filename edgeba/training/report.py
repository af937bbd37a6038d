"""Figures and the results table of regressor runs (history.csv, predictions_val*.csv, metrics.json).

`python -m edgeba.training.report RUN_DIR [RUN_DIR ...] --out train/results` writes per run
loss curves, predicted-vs-true scatter and a Bland-Altman plot, and one Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """A run's CSV (history.csv, predictions_*.csv) as one float array per column, the id column left out."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # Keras' CSVLogger writes "NA" for a metric it did not compute (tune metrics of a final fit).
    return {k: np.array([float("nan") if r[k] == "NA" else float(r[k]) for r in rows]) for k in rows[0] if k != "id"}


def plot_loss(run: Path, out: Path, std: float) -> None:
    name = run.name
    h = read_columns(run / "history.csv")
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    fitted = np.isnan(h.get("val_loss", [np.nan])).all()  # a final fit (--fit-tune) has no tune curve: tune is fitted
    ax[0].plot(h["epoch"] + 1, h["loss"], label="train + tune (augmented)" if fitted else "train (augmented)")
    ax[1].plot(h["epoch"] + 1, h["mae"] * std, label="train + tune (augmented)" if fitted else "train (augmented)")
    if not fitted:
        ax[0].plot(h["epoch"] + 1, h["val_loss"], label="tune")
        ax[1].plot(h["epoch"] + 1, h["val_mae"] * std, label="tune")
    ax[0].set(xlabel="epoch", ylabel="MSE (normalised age)", yscale="log", title=f"{name}: loss")
    ax[1].set(xlabel="epoch", ylabel="MAE (months)", title="MAE")
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"{name}_loss.png", dpi=110)
    plt.close(fig)


def plot_run(run: Path, out: Path, std: float) -> None:
    name = run.name
    if (run / "history.csv").is_file():  # a combined run (train/ensemble.py) has no curve of its own
        plot_loss(run, out, std)
    p = read_columns(run / "predictions_val.csv")  # one view: what `edgeba predict` does
    t, y = p["boneage_months"], p["predicted_months"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.2))
    ax[0].scatter(t, y, s=8, alpha=0.6, c=np.where(p["male"] > 0, "tab:blue", "tab:red"))
    ax[0].plot([0, 240], [0, 240], "k--", lw=1)
    ax[0].set(xlabel="true bone age (months)", ylabel="predicted (months)", title=f"{name}\nval (n={len(t)}, one view); blue male, red female", xlim=(0, 240), ylim=(0, 240))
    mean, diff = (t + y) / 2, y - t
    bias, loa = diff.mean(), 1.96 * diff.std()
    ax[1].scatter(mean, diff, s=8, alpha=0.6)
    for v, ls in ((bias, "-"), (bias + loa, "--"), (bias - loa, "--")):
        ax[1].axhline(v, color="k", ls=ls, lw=1)
    ax[1].set(xlabel="mean of true and predicted (months)", ylabel="predicted - true (months)", title=f"Bland-Altman: bias {bias:.2f}, LoA +-{loa:.1f}")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"{name}_val.png", dpi=110)
    plt.close(fig)


def fit_splits(metrics: dict) -> list[str]:
    """The splits a run was fitted on, from its metrics.json (runs made before `--fit-tune`: train)."""
    return metrics.get("fit_splits", ["train"])


def tune_cell(m: dict) -> str:
    """The tune MAE, marked "(fitted)" when the run fitted the tune images (a final fit): in-sample."""
    return f"{m['tune']['plain']['mae']:.2f}" + (" (fitted)" if "tune" in fit_splits(m) else "")


def table(runs: list[Path]) -> str:
    # Every column is one view (plain) except "+TTA", the MAE of the 5-view mean.
    head = "| run | variant | sex | enhance | segment | px | epochs | val MAE | +TTA | MSE | RMSE | max | mean err | mean rel err | tune MAE |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        c, pp = m["config"], m["config"]["preprocess"]
        v, vt = m["val"]["plain"], m["val"].get("tta", m["val"]["plain"])
        epochs = sum(1 for _ in open(run / "history.csv")) - 1 if (run / "history.csv").is_file() else "-"
        lines.append(
            f"| {run.name} | {c['variant']} | {'yes' if c['sex_input'] else 'no'} | {'yes' if pp['enhance'] else 'no'} | "
            f"{'yes' if pp['segment'] else 'no'} | {pp['input_size']} | {epochs} | {v['mae']:.2f} | {vt['mae']:.2f} | {v['mse']:.1f} | "
            f"{v['rmse']:.2f} | {v['max_error']:.1f} | {v['mean_error']:+.2f} | {v['mean_relative_error']:.3f} | {tune_cell(m)} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    # A shell glob over train/runs/regressor also matches SHIPPED.md and the low-res pre-training runs,
    # which have no val images (val ids are left out of their cache): report what can be reported.
    skipped = [r for r in a.runs if not (r / "predictions_val.csv").is_file()]
    for r in skipped:
        print(f"skipped {r}: no val predictions (not a run, or a low-res pre-training run)", file=sys.stderr)
    runs = [r for r in a.runs if r not in skipped]
    for run in runs:
        std = json.loads((run / "metrics.json").read_text())["target"]["std"]
        plot_run(run, a.out, std)
    text = table(runs)
    (a.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
