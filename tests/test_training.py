"""The regressor's training loop on the CPU (TensorFlow backend), on a tiny synthetic crop cache:
it writes what a run promises (config, history, per-epoch snapshots, best model, metrics, predictions),
and train/ensemble.py turns finished runs into one model (weight average, output ensemble)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import tensorflow  # noqa: F401  (the test environment installs every extra; missing is a failure)

import keras  # noqa: E402

from edgeba.preprocess import PreprocessConfig  # noqa: E402
from edgeba.training.crops import load_crop_cache, write_crop_cache  # noqa: E402
from edgeba.training.regressor import RegressorConfig, train  # noqa: E402
from scripts import load_script  # noqa: E402

SIZE = 128


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch run on 40 synthetic 'radiographs' (a bright disc whose size grows with age)."""
    tmp = tmp_path_factory.mktemp("training")
    rng = np.random.default_rng(0)
    n = 40
    age = rng.uniform(12, 216, n)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    crops = np.stack([((np.hypot(yy - 64, xx - 64) < 10 + a / 8) * 200 + rng.integers(0, 40, (SIZE, SIZE))).astype(np.uint8) for a in age])
    split = ["train"] * 24 + ["tune"] * 8 + ["val"] * 8
    cfg = PreprocessConfig(input_size=SIZE, segment=False)
    cache = write_crop_cache(tmp / "cache.npz", cfg, [f"id{i}" for i in range(n)], age, rng.integers(0, 2, n), split, np.ones(n, bool), crops)
    rcfg = RegressorConfig(preprocess=cfg, epochs=2, batch_size=8, patience=5, report_tta=False)
    result = train(cache, tmp / "run", rcfg, workers=1)
    return tmp, cache, result


def test_cache_round_trip(run):
    _, cache, _ = run
    d = load_crop_cache(cache)
    assert d["crops"].shape == (40, SIZE, SIZE) and d["crops"].dtype == np.uint8
    assert list(d["split"]).count("val") == 8 and d["preprocess"]["input_size"] == SIZE


def test_run_writes_what_it_promises(run):
    tmp, cache, result = run
    d = tmp / "run"
    rows = list(csv.DictReader(open(d / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r["val_mae"])) for r in rows)
    assert len(list((d / "snapshots").glob("epoch*.weights.h5"))) == 2
    conf = json.loads((d / "config.json").read_text())
    assert conf["backend"] == "tensorflow" and conf["preprocess"]["input_size"] == SIZE
    assert list(conf["cache_commands"]) == [str(cache)]  # what built the cache, for the model card
    assert result["n_train"] == 24 and result["n_tune"] == 8
    val = result["val"]["plain"]
    assert {"mae", "mse", "rmse", "max_error", "mean_error", "mean_relative_error"} <= set(val)
    preds = list(csv.DictReader(open(d / "predictions_val.csv")))
    assert len(preds) == 8 and all(np.isfinite(float(p["predicted_months"])) for p in preds)
    model = keras.models.load_model(d / "regressor.keras")
    assert getattr(model, "optimizer", None) is None  # shipped without optimizer state
    assert model.predict({"image": np.zeros((1, SIZE, SIZE, 1), np.float32), "sex": np.zeros((1, 1), np.float32)}, verbose=0).shape == (1, 1)


def test_weight_average_and_self_ensemble(run):
    tmp, cache, result = run
    ens = load_script("train/ensemble.py")
    wa = ens.main(["--cache", str(cache), "--members", str(tmp / "run"), "--average-weights", "--last", "2", "--run-dir", str(tmp / "wa")])
    assert len(wa["averaged"]) == 2 and wa["combine"] == "average-weights" and np.isfinite(wa["val"]["plain"]["mae"])
    # An ensemble of a run with itself is the run: same predictions, twice the compute.
    same = ens.main(["--cache", str(cache), "--members", str(tmp / "run"), str(tmp / "run"), "--run-dir", str(tmp / "self")])
    assert same["val"]["plain"]["mae"] == pytest.approx(result["val"]["plain"]["mae"], abs=1e-3)
    assert same["gmac"] == pytest.approx(2 * result["gmac"], rel=1e-3)
    # The weight average of a model with itself is the model.
    soup = ens.main(["--cache", str(cache), "--members", str(tmp / "run"), str(tmp / "run"), "--average-weights", "--run-dir", str(tmp / "soup")])
    assert soup["val"]["plain"]["mae"] == pytest.approx(result["val"]["plain"]["mae"], abs=1e-3)
    assert soup["gmac"] == pytest.approx(result["gmac"], rel=1e-3)


def test_lowres_cache_never_holds_val_images(tmp_path):
    """Pre-training data: every low-res image except the val ids (their low-res copies would leak val),
    unsquashed to the typical hand proportions (letterboxed like the full-resolution images)."""
    from edgeba import dataset
    from edgeba.training import crops

    args = ["--out", str(tmp_path / "lowres.npz"), "--lowres", "--unsquash", "--size", "128"]
    crops.main(args)
    d = load_crop_cache(tmp_path / "lowres.npz")
    # The cache remembers how it was built (the model card prints it).
    assert crops.cache_command(tmp_path / "lowres.npz") == "python -m edgeba.training.crops " + " ".join(args) == d["command"]
    split_of = {c.id: c.split for c in dataset.cases()}
    val = {i for i, s in split_of.items() if s == "val"}
    assert len(val) == 269 and not val & set(d["ids"])
    assert len(d["ids"]) == len(dataset.lowres_table()) - 269
    assert all(s == split_of.get(i, "train") for i, s in zip(d["ids"], d["split"]))
    assert d["crops"].shape[1:] == (128, 128) and d["crops"].std() > 10
    # Narrowed to width/height ~0.79: the letterbox pads the last ~21 % of the columns of every crop.
    assert 0.7 < dataset.typical_aspect() < 0.9
    filled = (d["crops"].max(axis=(0, 1)) > 0).sum()
    assert filled == pytest.approx(128 * dataset.typical_aspect(), abs=2)


def test_training_losses():
    """--loss: MSE (the thesis), MAE, and Huber, quadratic up to HUBER_DELTA and linear beyond."""
    from edgeba.training.regressor import HUBER_DELTA, training_loss

    y = np.zeros((4, 1), np.float32)
    p = np.array([[0.1], [-0.2], [1.0], [-2.0]], np.float32)
    e = np.abs(p - y)
    huber = np.where(e <= HUBER_DELTA, 0.5 * e**2, HUBER_DELTA * (e - 0.5 * HUBER_DELTA)).mean()
    expect = {"mse": (e**2).mean(), "mae": e.mean(), "huber": huber}
    for name, want in expect.items():
        got = float(np.mean(keras.losses.get(training_loss(name))(y, p)))  # a named loss gives per-sample values
        assert got == pytest.approx(want, rel=1e-5), name
    with pytest.raises(ValueError):
        training_loss("l1")


def test_precise_bn_sets_moving_stats_to_the_mean_of_batch_stats():
    mod = load_script("train/precise_bn.py")
    inp = keras.Input((3,), name="x")
    bn = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inp, bn(inp))
    x = np.random.default_rng(0).normal(5.0, 2.0, (40, 3)).astype(np.float32)
    assert mod.precise_bn(model, {"x": x}, batch_size=16) == 1
    batches = [x[:16], x[16:32], x[32:]]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), np.mean([b.var(0) for b in batches], 0), rtol=1e-4)
    assert bn.momentum == 0.99  # restored


def test_mixed_batches_hold_both_pools_and_cover_the_main_one():
    """--mix-per-batch: every batch holds k images of the second pool; an epoch is one pass over the main pool."""
    from edgeba.training.regressor import CropBatches

    cfg = RegressorConfig(preprocess=PreprocessConfig(input_size=16, segment=False), batch_size=8, mix_per_batch=3, augment=False)
    main = (np.zeros((20, 16, 16), np.uint8), np.zeros(20, np.float32), np.arange(20, dtype=np.float32))
    pool = (np.full((50, 16, 16), 255, np.uint8), np.ones(50, np.float32), 100 + np.arange(50, dtype=np.float32))
    b = CropBatches(*main, cfg, True, mix=pool)
    assert len(b) == 4  # ceil(20 / (8 - 3))
    seen = []
    for i in range(len(b)):
        x, y = b[i]
        from_pool = y[:, 0] >= 100
        assert from_pool.sum() == 3 and (x["sex"][from_pool] == 1).all() and (x["sex"][~from_pool] == 0).all()
        seen += list(y[~from_pool, 0])
    assert sorted(seen) == list(range(20))
    first = b[0][1][:, 0].copy()
    b.on_epoch_end()
    assert not np.array_equal(first, b[0][1][:, 0])  # a fresh draw every epoch
    with pytest.raises(ValueError):
        CropBatches(*main, RegressorConfig(batch_size=8, mix_per_batch=8), True, mix=pool)


def test_lr_schedule_warms_up_then_decays():
    from edgeba.training.regressor import lr_schedule

    lr = lambda cfg, step: float(lr_schedule(cfg, 10)(step))  # noqa: E731
    plain = RegressorConfig(lr=1e-3, epochs=5)
    assert lr(plain, 0) == pytest.approx(1e-3) and lr(plain, 50) == pytest.approx(2e-5)
    warm = RegressorConfig(lr=1e-3, epochs=5, warmup_epochs=1)
    assert lr(warm, 0) == 0 and lr(warm, 5) == pytest.approx(5e-4) and lr(warm, 10) == pytest.approx(1e-3)
    assert lr(warm, 50) == pytest.approx(2e-5)


def test_soft_targets_move_only_the_fitted_rows(tmp_path):
    """--soft-targets/--soft-weight (distillation): fitted rows move toward the teacher, others keep the truth."""
    from edgeba.training.regressor import blend_soft_targets

    ids = np.array(["a", "b", "c"])
    months = np.array([100.0, 50.0, 10.0], np.float32)
    fit = np.array([True, True, False])
    f = tmp_path / "teacher.csv"
    f.write_text("id,boneage_months,male,predicted_months\na,100,1,120\nb,50,0,40\n")
    out = blend_soft_targets(months, ids, fit, f, 0.25)
    np.testing.assert_allclose(out, [105.0, 47.5, 10.0])
    assert out.dtype == months.dtype and months[0] == 100.0  # the cache's labels are not modified
    with pytest.raises(ValueError, match="no prediction for 1"):
        blend_soft_targets(months, ids, np.ones(3, bool), f, 0.5)


def test_config_round_trips_through_a_run_config_and_geometry_is_checked():
    from edgeba.training.regressor import check_geometry

    cfg = RegressorConfig(variant="relu_blur", preprocess=PreprocessConfig(input_size=192, segment=False), mix_per_batch=8, loss="huber")
    assert RegressorConfig.from_dict({**cfg.to_dict(), "target": {"mean": 1.0, "std": 2.0}, "cache": "c.npz"}) == cfg
    cache = {"preprocess": PreprocessConfig(input_size=192, segment=False).to_dict()}
    check_geometry(cache, cfg.preprocess, "cache")
    for other in (PreprocessConfig(input_size=256, segment=False), PreprocessConfig(input_size=192, segment=False, margin=0.1)):
        with pytest.raises(ValueError, match="cache was cropped with"):
            check_geometry(cache, other, "cache")


def test_final_fit_fits_train_and_tune_and_keeps_the_last_epoch(run):
    """--fit-tune: the tune rows join the fit (so nothing monitors or selects), the last epoch is the model,
    and metrics.json marks the tune numbers as in-sample."""
    tmp, cache, _ = run
    rcfg = RegressorConfig(preprocess=PreprocessConfig(input_size=SIZE, segment=False), epochs=2, batch_size=8, report_tta=False, fit_tune=True)
    result = train(cache, tmp / "final", rcfg, workers=1)
    assert result["n_train"] == 32 and result["n_tune"] == 0 and result["fit_splits"] == ["train", "tune"]
    d = tmp / "final"
    rows = list(csv.DictReader(open(d / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and all(r.get("val_mae", "NA") == "NA" for r in rows)
    assert not (d / "best.keras").exists()
    # The shipped weights are the last epoch's snapshot.
    last = keras.models.load_model(d / "regressor.keras")
    ref = keras.models.load_model(d / "regressor.keras")
    ref.load_weights(sorted((d / "snapshots").glob("epoch*.weights.h5"))[-1])
    for a, b in zip(last.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The fitted target statistics are those of the 32 fitted rows.
    d_cache = load_crop_cache(cache)
    fitted = np.isin(d_cache["split"], ["train", "tune"])
    assert result["target"]["mean"] == pytest.approx(float(d_cache["age"][fitted].mean()), rel=1e-6)
    # The report's table says the tune number is in-sample, and its loss plot needs no tune curve.
    from edgeba.training.report import plot_run, table

    plot_run(d, tmp, result["target"]["std"])
    assert (tmp / "final_loss.png").is_file()
    assert table([d]).strip().splitlines()[-1].rstrip(" |").endswith("(fitted)")
