"""Train and evaluate the bone-age regressor from a crop cache (see crops.py).

Runs on any Keras 3 backend: TensorFlow on the CPU here, JAX on a GPU machine.
Splits: fit on `train`, choose the epoch (early stopping / best checkpoint) on `tune`,
report on `val` only at the end. A final fit (`--fit-tune`) refits a recipe already chosen on tune on
train + tune, for its fixed number of epochs, and keeps the last epoch: nothing is selected.
Resumable: rerunning the same command continues from the last finished epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import keras
import numpy as np

from edgeba import metrics
from edgeba.preprocess import TTA_VIEWS, PreprocessConfig, affine, enhance_stage, tta_view
from edgeba.training.crops import cache_command, load_crop_cache
from edgeba.training.nets import VARIANTS, build_regressor, copy_weights, count_macs


@dataclass
class RegressorConfig:
    variant: str = "relu"  # "relu" (INT8-friendly), "thesis" (ELU, faithful baseline) or another of nets.VARIANTS
    sex_input: bool = True
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    epochs: int = 120
    batch_size: int = 32  # the thesis' batch size
    lr: float = 1e-3
    dropout: float = 0.3
    patience: int = 30  # early stopping on tune MAE
    augment: bool = True
    report_tta: bool = True  # also report metrics averaged over preprocess.TTA_VIEWS (evaluation only)
    qc_only: bool = True  # train/tune only on images whose mask passed QC
    seed: int = 0
    time_budget_s: float = 0.0  # stop training after this many seconds (0 = no limit)
    loss: str = "mse"  # "mse" (the thesis), "huber" or "mae" (robust: see training_loss)
    warmup_epochs: float = 0.0  # linear LR warm-up from 0 before the cosine decay (steadies a fine-tune's start)
    # Mixed fine-tuning: every batch also holds `mix_per_batch` train images of a second cache (the
    # low-res images at the same input size), so the 935 full-resolution images are not fitted alone.
    mix_cache: str = ""
    mix_per_batch: int = 0
    # Distillation: fit (1 - soft_weight) * label + soft_weight * teacher months (train/teacher.py's CSV).
    soft_targets: str = ""
    soft_weight: float = 0.0
    # Final fit: also fit the tune images (the recipe was chosen on tune before); no epoch selection,
    # the last epoch is kept, and tune metrics are in-sample (metrics.json says so).
    fit_tune: bool = False
    # Keep the last epoch although tune is held out: the train-only twin of a final fit (which keeps its
    # last epoch) is then measured on tune without having been chosen there.
    keep_last: bool = False

    @property
    def fitted_splits(self) -> tuple[str, ...]:
        """The splits the regressor is fitted on (tune only in a final fit); val never."""
        return ("train", "tune") if self.fit_tune else ("train",)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RegressorConfig":
        """The config of a run's config.json (its other keys, e.g. target and cache, are ignored)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
        return cls(**kw)


# The preprocessing fields a crop cache fixes (the rest, e.g. enhance, runs on the fly at training time).
GEOMETRY = ("input_size", "segment", "margin")


def check_geometry(cache: dict, cfg: PreprocessConfig, name: str) -> None:
    if any(cache["preprocess"][k] != getattr(cfg, k) for k in GEOMETRY):
        raise ValueError(f"{name} was cropped with {cache['preprocess']}, config wants {cfg.to_dict()}")


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Radiograph-safe augmentation on a [0,1] crop: small rotation/scale/shift and gamma.
    No flips: it is always the left hand. Linear brightness/contrast changes would be undone by
    normalisation, so intensity is varied by gamma instead."""
    x = affine(x, rng.uniform(-10, 10), rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05))
    return np.power(np.clip(x, 0, 1), rng.uniform(0.75, 1.33)).astype(np.float32)


class CropBatches(keras.utils.PyDataset):
    """Batches of ({"image", "sex"}, target) with on-the-fly augmentation and the shared enhance stage.

    `mix` = (crops, male, target) of a second pool: each batch then holds cfg.mix_per_batch of its
    images (a fresh random subset every epoch) next to batch_size - mix_per_batch of the main ones;
    an epoch is still one pass over the main images."""

    def __init__(self, crops, male, target, cfg: RegressorConfig, train: bool, mix=None, **kw):
        super().__init__(**kw)
        self.cfg, self.train = cfg, train
        self.k = cfg.mix_per_batch if mix is not None else 0
        if not 0 <= self.k < cfg.batch_size:
            raise ValueError(f"mix_per_batch must be in [0, {cfg.batch_size})")
        # One pool: main images first, then the mix pool (its indices offset by n_main).
        self.n_main = len(crops)
        pools = [(crops, male, target)] + ([mix] if mix is not None else [])
        self.crops, self.male, self.target = (np.concatenate([q[i] for q in pools]) for i in range(3))
        self.epoch = 0
        self.order, self.mix_order = np.arange(self.n_main), np.arange(self.n_main, len(self.crops))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(self.n_main / (self.cfg.batch_size - self.k))

    def on_epoch_end(self) -> None:
        if self.train:
            self.epoch += 1
            rng = np.random.default_rng([self.cfg.seed, self.epoch])
            self.order = rng.permutation(self.n_main)
            self.mix_order = self.n_main + rng.permutation(len(self.crops) - self.n_main)

    def __getitem__(self, i: int):
        m = self.cfg.batch_size - self.k
        idx = np.concatenate([self.order[i * m : (i + 1) * m], self.mix_order[i * self.k : (i + 1) * self.k]])
        xs = []
        for j in idx:
            x = self.crops[j].astype(np.float32) / 255.0
            if self.train and self.cfg.augment:
                x = augment(x, np.random.default_rng([self.cfg.seed, self.epoch, int(j)]))
            xs.append(enhance_stage(x, self.cfg.preprocess))
        inputs = {"image": np.stack(xs)[..., None]}
        if self.cfg.sex_input:
            inputs["sex"] = self.male[idx, None].astype(np.float32)
        return inputs, self.target[idx, None].astype(np.float32)


def model_inputs(crops: np.ndarray, male: np.ndarray, cfg: RegressorConfig, view=TTA_VIEWS[0]) -> dict:
    xs = [enhance_stage(tta_view(c.astype(np.float32) / 255.0, *view), cfg.preprocess) for c in crops]
    inputs = {"image": np.stack(xs)[..., None]}
    if cfg.sex_input:
        inputs["sex"] = male[:, None].astype(np.float32)
    return inputs


def predict_months(model, crops, male, cfg: RegressorConfig, target: dict, tta: bool) -> np.ndarray:
    views = TTA_VIEWS if tta else TTA_VIEWS[:1]
    outs = [model.predict(model_inputs(crops, male, cfg, v), batch_size=64, verbose=0)[:, 0] for v in views]
    return np.mean(outs, axis=0) * target["std"] + target["mean"]


# Huber's quadratic zone in normalised targets: 0.25 std is about 11 months, near the model's MAE,
# so typical errors are fitted as with MSE and only the outliers (often label noise) pull linearly.
HUBER_DELTA = 0.25


def training_loss(name: str):
    losses = {"mse": "mse", "mae": "mae", "huber": keras.losses.Huber(delta=HUBER_DELTA)}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}: one of {sorted(losses)}")
    return losses[name]


def lr_schedule(cfg: RegressorConfig, steps_per_epoch: int):
    """Cosine decay over the run, after an optional linear warm-up from 0 (cfg.warmup_epochs)."""
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    decay = steps_per_epoch * cfg.epochs - warm
    if not warm:
        return keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=decay, alpha=0.02)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=decay, alpha=0.02, warmup_target=cfg.lr, warmup_steps=warm)


class TimeBudget(keras.callbacks.Callback):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.start = seconds, time.time()

    def on_epoch_end(self, epoch, logs=None):
        if self.seconds and time.time() - self.start > self.seconds:
            self.model.stop_training = True


def blend_soft_targets(months: np.ndarray, ids: np.ndarray, fit: np.ndarray, csv_path: Path, weight: float) -> np.ndarray:
    """months with the `fit` rows moved `weight` of the way to the teacher's prediction (every fit id must
    have one); other rows (tune, val) keep their labels, so selection and reporting stay on the truth."""
    with open(csv_path, newline="") as f:
        teacher = {r["id"]: float(r["predicted_months"]) for r in csv.DictReader(f)}
    missing = [str(i) for i in ids[fit] if str(i) not in teacher]
    if missing:
        raise ValueError(f"{csv_path} has no prediction for {len(missing)} fitted images, e.g. {missing[:3]}")
    out = months.copy()
    out[fit] = [(1 - weight) * m + weight * teacher[str(i)] for m, i in zip(months[fit], ids[fit])]
    return out


def report_split(model, cache, cfg, target, split, run_dir: Path) -> dict:
    """Metrics of one split (plain, and TTA if cfg.report_tta); writes run_dir/predictions_<split>[_tta].csv."""
    sel = cache["split"] == split
    out = {}
    for tta in ((False, True) if cfg.report_tta else (False,)):
        pred = predict_months(model, cache["crops"][sel], cache["male"][sel], cfg, target, tta)
        true = cache["age"][sel]
        m = split_metrics(true, pred, cache["male"][sel])
        qc = cache["mask_ok"][sel]
        m["mae_mask_qc_ok"] = {"mae": metrics.mae(true[qc], pred[qc]), "n": int(qc.sum())}
        out["tta" if tta else "plain"] = m
        write_predictions(run_dir / f"predictions_{split}{'_tta' if tta else ''}.csv", cache, sel, pred)
    return out


def split_metrics(true: np.ndarray, pred: np.ndarray, male: np.ndarray) -> dict:
    """Table 5.2 metrics of one split's predictions, the MAE's 95 % interval, and the MAE by sex and age band."""
    m = metrics.all_metrics(true, pred)
    m["mae_ci95"] = list(metrics.mae_interval(true, pred))
    m["mae_by_sex"] = {("male" if k else "female"): v for k, v in metrics.mae_by_group(true, pred, np.asarray(male).astype(int)).items()}
    m["mae_by_age_band"] = metrics.age_band_mae(true, pred)
    return m


def write_predictions(path: Path, cache: dict, sel: np.ndarray, pred: np.ndarray) -> None:
    """id,boneage_months,male,predicted_months of the cache rows `sel` (a run's predictions_<split>.csv;
    blend_soft_targets reads the same format)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "boneage_months", "male", "predicted_months"])
        for row in zip(cache["ids"][sel], cache["age"][sel], cache["male"][sel].astype(int), np.round(pred, 2)):
            w.writerow(row)


def load_mix_pool(cfg: RegressorConfig, target: dict) -> tuple:
    """(crops, male, normalised target) of the mix cache's images of the fitted splits, for CropBatches(mix=...).
    Its train ids, plus its tune ids in a final fit (--fit-tune): tune stays unseen whenever it selects.
    Val ids never (a low-res cache holds none; an acquisition cache draws none)."""
    mc = load_crop_cache(Path(cfg.mix_cache))
    check_geometry(mc, cfg.preprocess, "mix cache")
    mt = np.isin(mc["split"], cfg.fitted_splits)
    return mc["crops"][mt], mc["male"][mt], (mc["age"][mt] - target["mean"]) / target["std"]


def train(cache_path: Path, run_dir: Path, cfg: RegressorConfig, workers: int = 2, init_from: Path | None = None) -> dict:
    keras.utils.set_random_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = load_crop_cache(cache_path)
    check_geometry(cache, cfg.preprocess, "cache")
    # Fit and select only on crops whose mask passed QC: at inference a failed mask is refused,
    # so a regressor never needs to learn from one. Val is reported on every image.
    ok = cache["mask_ok"] if cfg.qc_only else np.ones(len(cache["ids"]), bool)
    tr = np.isin(cache["split"], cfg.fitted_splits) & ok
    tu = (cache["split"] == "tune") & ok & ~tr
    target = {"mean": float(cache["age"][tr].mean()), "std": float(cache["age"][tr].std())}
    fit_months = cache["age"]
    if cfg.soft_weight:
        fit_months = blend_soft_targets(fit_months, cache["ids"], tr, Path(cfg.soft_targets), cfg.soft_weight)
    norm = (fit_months - target["mean"]) / target["std"]
    # The commands that built the caches, so a model card can print them where the caches are gone.
    caches = [str(cache_path)] + ([cfg.mix_cache] if cfg.mix_per_batch else [])
    built_by = {c: cache_command(Path(c)) for c in caches}
    (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "target": target, "cache": str(cache_path), "cache_commands": built_by, "init_from": str(init_from) if init_from else None, "backend": keras.config.backend()}, indent=2))

    mix = load_mix_pool(cfg, target) if cfg.mix_per_batch else None
    model = build_regressor(cfg.variant, cfg.preprocess.input_size, cfg.sex_input, cfg.dropout)
    if init_from is not None and Path(init_from).suffix == ".npz":  # ImageNet backbone (effnet_lite0)
        from edgeba.training.effnet import load_imagenet

        load_imagenet(model, init_from)
    elif init_from is not None:  # fine-tuning / annealing a finished run (e.g. on the CPU after a GPU run)
        copy_weights(keras.models.load_model(init_from), model)
    train_data = CropBatches(cache["crops"][tr], cache["male"][tr], norm[tr], cfg, True, mix=mix, workers=workers, use_multiprocessing=False, max_queue_size=8)
    model.compile(optimizer=keras.optimizers.Adam(lr_schedule(cfg, len(train_data))), loss=training_loss(cfg.loss), metrics=["mae"])
    tune_data = (model_inputs(cache["crops"][tu], cache["male"][tu], cfg), norm[tu, None]) if tu.any() else None
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        # Every epoch's weights, for weight averaging along the low-LR tail (train/ensemble.py --average-weights).
        keras.callbacks.ModelCheckpoint(str(run_dir / "snapshots" / "epoch{epoch:03d}.weights.h5"), save_weights_only=True),
        TimeBudget(cfg.time_budget_s),
    ]
    if tune_data is not None and not cfg.keep_last:  # select the epoch on tune
        callbacks += [keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor="val_mae", save_best_only=True),
                      keras.callbacks.EarlyStopping(monitor="val_mae", patience=cfg.patience)]
    t0 = time.time()
    model.fit(train_data, validation_data=tune_data, epochs=cfg.epochs, callbacks=callbacks, verbose=2)
    train_s = time.time() - t0

    best = keras.models.load_model(run_dir / "best.keras") if tune_data is not None and not cfg.keep_last else model
    # Ship the weights without optimizer state (a third of the size): an uncompiled twin.
    shipped = build_regressor(cfg.variant, cfg.preprocess.input_size, cfg.sex_input, cfg.dropout)
    shipped.set_weights(best.get_weights())
    shipped.save(run_dir / "regressor.keras")
    return write_metrics(best, cache, cfg, target, run_dir, int(tr.sum()), int(tu.sum()),
                         train_seconds=round(train_s, 1), backend=keras.config.backend(), fit_splits=list(cfg.fitted_splits))


def write_metrics(model, cache, cfg, target, run_dir: Path, n_train: int, n_tune: int, **extra) -> dict:
    """Evaluate a run's model on tune and val (report_split) and write run_dir/metrics.json; `extra`
    (how the model was made) goes in next to the config. Shared by training, ensembles and recalibration."""
    result = {
        "config": cfg.to_dict(),
        **extra,
        "target": target,
        "params": int(model.count_params()),
        "gmac": round(count_macs(model) / 1e9, 4),
        "n_train": n_train,
        "n_tune": n_tune,
        "tune": report_split(model, cache, cfg, target, "tune", run_dir),
        # A pre-training cache holds no val images (build_lowres_cache leaves them out).
        "val": report_split(model, cache, cfg, target, "val", run_dir) if (cache["split"] == "val").any() else None,
    }
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, RegressorConfig]:
    """The command line and the run config it stands for (export/model_card.py replays the inverse)."""
    p = argparse.ArgumentParser(description="Train the bone-age regressor from a crop cache.")
    p.add_argument("--cache", type=Path, required=True, help="npz from edgeba.training.crops.build_crop_cache")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--variant", choices=VARIANTS, default="relu")
    p.add_argument("--no-sex", action="store_true", help="ablation: no sex input")
    p.add_argument("--no-enhance", action="store_true", help="ablation: no edge enhancement")
    p.add_argument("--no-segment", action="store_true", help="ablation: plain letterbox of the whole image (needs a matching cache)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=30)
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds of training before stopping")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--init-from", type=Path, help="start from this model's weights (fine-tune / anneal), or from "
                   "ImageNet weights (.npz, --variant effnet_lite0: ../shared/weights/efficientnet_lite0_imagenet.npz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", choices=("mse", "huber", "mae"), default="mse")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear LR warm-up before the cosine decay")
    p.add_argument("--mix-cache", default="", help="second crop cache (same geometry) mixed into every batch")
    p.add_argument("--mix-per-batch", type=int, default=0, help="images per batch from --mix-cache")
    p.add_argument("--soft-targets", default="", help="teacher predictions on train (train/teacher.py) for distillation")
    p.add_argument("--soft-weight", type=float, default=0.0, help="weight of the teacher in the fitted target")
    p.add_argument("--fit-tune", action="store_true", help="final fit: train + tune, fixed epochs, keep the last (tune metrics become in-sample)")
    p.add_argument("--keep-last", action="store_true", help="keep the last epoch, not the best on tune (a final fit's train-only twin)")
    a = p.parse_args(argv)
    if bool(a.mix_cache) != bool(a.mix_per_batch):
        p.error("--mix-cache and --mix-per-batch go together")
    if bool(a.soft_targets) != bool(a.soft_weight):
        p.error("--soft-targets and --soft-weight go together")
    cfg = RegressorConfig(
        variant=a.variant,
        sex_input=not a.no_sex,
        preprocess=PreprocessConfig(input_size=a.size, enhance=not a.no_enhance, segment=not a.no_segment),
        epochs=a.epochs, lr=a.lr, patience=a.patience, time_budget_s=a.time_budget, seed=a.seed, loss=a.loss,
        warmup_epochs=a.warmup_epochs, mix_cache=a.mix_cache, mix_per_batch=a.mix_per_batch,
        soft_targets=a.soft_targets, soft_weight=a.soft_weight, fit_tune=a.fit_tune, keep_last=a.keep_last,
    )
    return a, cfg


def main(argv: list[str] | None = None) -> dict:
    a, cfg = parse_args(argv)
    result = train(a.cache, a.run_dir, cfg, workers=a.workers, init_from=a.init_from)
    # val is in metrics.json, for reporting only; after a final fit the tune number is in-sample
    print(json.dumps({("fitted_tune_mae" if cfg.fit_tune else "tune_mae"): result["tune"]["plain"]["mae"]}))
    return result


if __name__ == "__main__":
    main()
