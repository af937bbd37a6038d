"""Small U-Net for the hand mask, built for INT8 from the start, and its (self-)training loop.

Keras 3 only (`keras`, `keras.ops`): the same code trains on TensorFlow or JAX.

INT8 design (see ../shared/TOOLCHAIN.md): a plain U-Net with concatenated skips and unbounded decoder
activations breaks under INT8 because one scale is shared per concat. Here every conv is
Conv -> BatchNorm (folds into the conv) -> ReLU6, so every activation lies in [0, 6]; skips are fused
by *addition* of two ReLU6 tensors of the same range; upsampling is bilinear resize (no transposed
conv); the decoder reduces channels with a 1x1 conv at the low resolution before upsampling.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path

import cv2
import keras
import numpy as np
from keras import layers, ops

log = logging.getLogger("segmentation")


def _conv(x, filters: int, kernel: int, name: str):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x)


def build_unet(size: int = 128, base: int = 8, depth: int = 4) -> keras.Model:
    """(1, size, size, 1) image in [0, 1] -> (1, size, size, 1) hand probability."""
    image = keras.Input((size, size, 1), batch_size=1, name="image")
    x, skips = image, []
    for level in range(depth):
        f = base * 2**level
        x = _conv(x, f, 3, f"enc{level}a")
        x = _conv(x, f, 3, f"enc{level}b")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv(x, base * 2**depth, 3, "mid_a")
    x = _conv(x, base * 2**depth, 3, "mid_b")
    for level in reversed(range(depth)):
        f = base * 2**level
        x = _conv(x, f, 1, f"dec{level}_reduce")  # channels down at low resolution: cheap
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up")(x)
        x = layers.Add(name=f"dec{level}_add")([x, skips[level]])  # both ReLU6: same range
        x = _conv(x, f, 3, f"dec{level}a")
        x = _conv(x, f, 3, f"dec{level}b")
    out = layers.Conv2D(1, 1, activation="sigmoid", name="prob")(x)
    return keras.Model(image, out, name=f"unet{size}_b{base}")


def conv_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass (convolutions and dense layers; the rest is noise)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, cout = layer.output.shape
            cin = layer.input.shape[-1]
            total += h * w * kh * kw * cin * cout // layer.groups
        elif isinstance(layer, layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)


# ---------------------------------------------------------------- training


def dice_bce(y_true, y_pred):
    """BCE for calibrated probabilities plus soft Dice so the thin fingers weigh as much as the palm."""
    y_pred = ops.clip(y_pred, 1e-6, 1 - 1e-6)
    bce = ops.mean(-(y_true * ops.log(y_pred) + (1 - y_true) * ops.log(1 - y_pred)))
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    dice = (2 * inter + 1) / (ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3)) + 1)
    return bce + 1 - ops.mean(dice)


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random geometry (same for image and mask) and photometry (image only); both (U, U) float."""
    u = x.shape[0]
    angle = rng.uniform(-25, 25)
    scale = rng.uniform(0.8, 1.15)
    m = cv2.getRotationMatrix2D((u / 2, u / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.08, 0.08, 2) * u
    x = cv2.warpAffine(x, m, (u, u), flags=cv2.INTER_LINEAR, borderValue=0.0)
    y = cv2.warpAffine(y, m, (u, u), flags=cv2.INTER_LINEAR, borderValue=0.0)
    if rng.random() < 0.5:  # right hands and mirrored films exist
        x, y = x[:, ::-1], y[:, ::-1]
    gamma = math.exp(rng.uniform(-0.4, 0.4))
    x = np.clip(x, 0, 1) ** gamma * rng.uniform(0.75, 1.1) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.2))
    x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape)
    return np.clip(x, 0, 1).astype(np.float32), (y > 0.5).astype(np.float32)


class MaskBatches(keras.utils.PyDataset):
    """Augmented batches from in-memory (N, U, U) images and masks."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int, seed: int, train: bool = True):
        super().__init__()
        self.x, self.y, self.batch, self.train = x, y, batch, train
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(x))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch)

    def on_epoch_end(self) -> None:
        if self.train:
            self.rng.shuffle(self.order)

    def __getitem__(self, k: int):
        idx = self.order[k * self.batch : (k + 1) * self.batch]
        if not self.train:
            return self.x[idx, ..., None], self.y[idx, ..., None]
        pairs = [augment(self.x[i], self.y[i], self.rng) for i in idx]
        return np.stack([p[0] for p in pairs])[..., None], np.stack([p[1] for p in pairs])[..., None]


def trainable_copy(model: keras.Model, batch: int | None = None) -> keras.Model:
    """The same layers on a batch-free input, for training with batches (export keeps batch 1)."""
    size = model.input.shape[1]
    image = keras.Input((size, size, 1), batch_size=batch, name="image")
    return keras.Model(image, model(image), name=model.name + "_train")


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    tune: tuple[np.ndarray, np.ndarray],
    epochs: int,
    ckpt: Path,
    history_csv: Path,
    tag: str,
    lr: float = 2e-3,
    batch: int = 16,
    seed: int = 0,
    initial_epoch: int = 0,
    state_file: Path | None = None,
    round_: int = 0,
) -> None:
    """Train in place with cosine-decayed Adam; checkpoint `model` (batch-1 graph) after every epoch."""
    net = trainable_copy(model)
    steps = math.ceil(len(train[0]) / batch)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.05)
    net.compile(optimizer=keras.optimizers.Adam(schedule), loss=dice_bce)
    net.optimizer.iterations.assign(initial_epoch * steps)
    data = MaskBatches(*train, batch=batch, seed=seed + initial_epoch)
    val = MaskBatches(*tune, batch=batch, seed=seed, train=False)

    class Checkpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            model.save(ckpt)
            new = not history_csv.exists()
            with open(history_csv, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["tag", "epoch", "loss", "val_loss", "time"])
                w.writerow([tag, epoch + 1, f"{logs['loss']:.4f}", f"{logs['val_loss']:.4f}", time.strftime("%H:%M:%S")])
            if state_file is not None:
                state_file.write_text(json.dumps({"round": round_, "epoch": epoch + 1}))
            log.info("%s epoch %d/%d loss %.4f val_loss %.4f", tag, epoch + 1, epochs, logs["loss"], logs["val_loss"])

    net.fit(data, validation_data=val, epochs=epochs, initial_epoch=initial_epoch, verbose=0, callbacks=[Checkpoint()])


def predict_probs(model: keras.Model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """(N, U, U) inputs -> (N, U, U) probabilities."""
    net = trainable_copy(model)
    return np.concatenate([np.asarray(net(x[i : i + batch, ..., None], training=False))[..., 0] for i in range(0, len(x), batch)])


# ---------------------------------------------------------------- self-training


def to_letterbox(mask: np.ndarray, lb, size: int) -> np.ndarray:
    """A full-resolution mask placed like its image in the (size, size) model input, as float {0,1}."""
    small = cv2.resize(mask.astype(np.float32), (lb.width, lb.height), interpolation=cv2.INTER_AREA)
    out = np.zeros((size, size), np.float32)
    out[lb.top : lb.top + lb.height, lb.left : lb.left + lb.width] = small >= 0.5
    return out


def load_inputs(ids: list[str], size: int, cache: Path) -> tuple[np.ndarray, list, list]:
    """U-Net inputs of every id (cached as float16), their letterboxes and the image shapes."""
    from edgeba import dataset
    from edgeba.io import load_image
    from edgeba.segment import Letterbox, unet_input

    if cache.exists():
        z = np.load(cache)
        if list(z["ids"]) == ids:
            lbs = [Letterbox(float(r[0]), *(int(v) for v in r[1:])) for r in z["lb"]]
            return z["x"].astype(np.float32), lbs, [tuple(int(v) for v in s) for s in z["shape"]]
    xs, lbs, shapes = [], [], []
    for i in ids:
        pixels = load_image(dataset.rsna_root() / "train" / f"{i}.jpg").pixels
        x, lb = unet_input(pixels, size)
        xs.append(x.astype(np.float16))
        lbs.append(lb)
        shapes.append(pixels.shape)
    lb_arr = np.array([[lb.scale, lb.top, lb.left, lb.height, lb.width] for lb in lbs], np.float64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, ids=np.array(ids), x=np.stack(xs), lb=lb_arr, shape=np.array(shapes))
    return load_inputs(ids, size, cache)


def self_train(cfg: dict, run_dir: Path, work_dir: Path, boot_dir: Path, after_round=None) -> keras.Model:
    """Round 0 trains on the bootstrap masks that pass QC; each later round predicts every train+tune
    image with the current U-Net, keeps the predictions that pass QC and fine-tunes on them.

    Resumable: the model is checkpointed after every epoch in work_dir and state.json says where
    to continue. Per-round results go to run_dir/rounds.jsonl (train+tune, and val for reporting
    only: nothing is chosen on val). after_round(r, path) runs after each round's model is saved."""
    from edgeba import dataset
    from edgeba.quality import mask_quality
    from edgeba.segment import mask_from_prob
    from edgeba.training.seg_eval import Evaluator, read_mask

    size = cfg["size"]
    cases = dataset.cases()
    ids = [c.id for c in cases]
    split = {c.id: c.split for c in cases}
    x, lbs, shapes = load_inputs(ids, size, work_dir / f"inputs_{size}.npz")
    index = {i: k for k, i in enumerate(ids)}
    state_file, ckpt = work_dir / "state.json", work_dir / "last.keras"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"round": 0, "epoch": 0}

    def masks_of_round(r: int, previous: dict) -> dict:
        """id -> letterboxed target for train/tune ids: the bootstrap (round 0) or the model's mask
        where it passes QC, else the target the id had in the previous round (a hard image that was
        once segmented well stays in the training set instead of dropping out)."""
        keep, carried, ev = {}, 0, Evaluator()
        probs = None if r == 0 else predict_probs(model, x)
        for k, i in enumerate(ids):
            full = read_mask(boot_dir / f"{i}.png") if r == 0 else mask_from_prob(probs[k], lbs[k], shapes[k])
            ok = mask_quality(full).ok
            ev.add(i, full, ok)
            if split[i] == "val":
                continue
            if ok:
                keep[i] = to_letterbox(full, lbs[k], size)
            elif i in previous:
                keep[i], carried = previous[i], carried + 1
        fit_ids = [i for i in ids if split[i] != "val"]
        val_ids = [i for i in ids if split[i] == "val"]
        entry = {
            "round": r,
            "source": "bootstrap" if r == 0 else f"U-Net trained in round {r - 1}",
            "kept_train": sum(split[i] == "train" for i in keep),
            "kept_tune": sum(split[i] == "tune" for i in keep),
            "carried_from_previous": carried,
            "of_train_tune": len(fit_ids),
            "train_tune": ev.summary(fit_ids),
            "val": ev.summary(val_ids),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with open(run_dir / "rounds.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        log.info("round %d targets from %s: kept %d train + %d tune of %d (%d carried over); train+tune %s; val %s", r,
                 entry["source"], entry["kept_train"], entry["kept_tune"], len(fit_ids), carried, entry["train_tune"], entry["val"])
        return keep

    def load_targets(r: int) -> dict:
        f = work_dir / f"targets_round{r}.npz"
        if not f.exists():
            return {}
        z = np.load(f)
        return dict(zip(z["ids"].tolist(), z["y"].astype(np.float32)))

    model = keras.saving.load_model(ckpt) if ckpt.exists() else build_unet(size, cfg["base"])
    for r in range(state["round"], cfg["rounds"] + 1):
        keep = load_targets(r)
        if not keep:
            keep = masks_of_round(r, load_targets(r - 1))
            np.savez_compressed(work_dir / f"targets_round{r}.npz", ids=np.array(list(keep)), y=np.stack(list(keep.values())).astype(np.uint8))
        tr = [i for i in keep if split[i] == "train"]
        tu = [i for i in keep if split[i] == "tune"]

        def data(sel: list[str]) -> tuple[np.ndarray, np.ndarray]:
            return x[[index[i] for i in sel]], np.stack([keep[i] for i in sel]).astype(np.float32)

        epochs = cfg["epochs_first"] if r == 0 else cfg["epochs_round"]
        lr = cfg["lr"] if r == 0 else cfg["lr_round"]
        fit(model, data(tr), data(tu), epochs, ckpt, run_dir / "history.csv", f"round{r}", lr=lr,
            batch=cfg["batch"], seed=cfg["seed"] + r, initial_epoch=state["epoch"] if state["round"] == r else 0,
            state_file=state_file, round_=r)
        model.save(work_dir / f"round{r}.keras")
        if after_round is not None:
            after_round(r, work_dir / f"round{r}.keras")
        state = {"round": r + 1, "epoch": 0}
        state_file.write_text(json.dumps(state))
    masks_of_round(cfg["rounds"] + 1, {})  # scores the final model (its kept masks would feed a next round)
    return model
