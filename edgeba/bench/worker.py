"""Measurements that run in a fresh process: `python -m edgeba.bench.worker TASK SPEC_JSON` prints one JSON line.

A fresh process per (format, thread count), because TensorFlow fixes its thread pools when it
starts and a clinic user's `edgeba predict` is a fresh process too. `run()` is the parent's side.

What is timed is edgeba.predictor.Predictor itself, on a model dir holding one format (see
measure.format_view): the benchmark measures the code `edgeba predict` runs, not a copy of it.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgeba import regress

RUNTIME_MODULE = {"tflite": "ai_edge_litert.interpreter", "openvino": "openvino", "onnx": "onnxruntime", "keras": "keras"}
# Predictor.timings_ms keys -> bench stage names; "qc" is the rest of the total (mask QC, sex, warnings).
STAGE_NAMES = {"load": "decode", "segment": "segment", "preprocess": "crop_enhance", "regress": "regress", "total": "total"}
STAGE_KEYS = ("decode", "segment", "qc", "crop_enhance", "regress", "total")
# The runtimes alone on the same inputs: one U-Net call, one regressor call, and all model calls of one prediction
# (the U-Net as many times as that prediction ran it: edgeba/orient.py turns, hand.py inverse and zoom passes).
MODEL_KEYS = ("segment_model", "regress_model", "models")


def backend_of(fmt: str) -> str:
    return fmt.split("-")[0]


def stats(values) -> dict:
    a = np.asarray(values, np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()), "n": int(a.size)}


def sex_of(male: int) -> str:
    return "male" if male else "female"


def limit_threads(threads: int, fmt: str | None = None) -> None:
    """OpenCV (pre/post-processing) and TensorFlow to `threads`; the runtimes get it from the Predictor."""
    import cv2

    cv2.setNumThreads(threads)
    if fmt == "keras":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def stage_ms(timings: dict[str, float]) -> dict[str, float]:
    ms = {STAGE_NAMES[k]: v for k, v in timings.items() if k in STAGE_NAMES}
    ms["qc"] = ms["total"] - sum(ms[k] for k in ("decode", "segment", "crop_enhance", "regress") if k in ms)
    return {k: ms.get(k, 0.0) for k in STAGE_KEYS}


def model_inputs(predictor, pred) -> tuple[dict | None, dict]:
    """The U-Net and regressor feeds of a finished prediction, rebuilt with the pipeline's own functions."""
    from edgeba.segment import unet_input

    pixels = pred.radiograph.pixels
    unet = {"image": unet_input(pixels, predictor.cfg.unet_size)[0][None, :, :, None]} if predictor.unet else None
    return unet, regressor_feed(predictor, pred.source_pixels, pred.source_mask(), pred.sex)


def regressor_feed(predictor, pixels: np.ndarray, mask: np.ndarray | None, sex: str | None) -> dict:
    """The regressor's plain-view feed for this image, as Predictor.predict builds it."""
    from edgeba.preprocess import regressor_feeds

    feed = regressor_feeds(pixels, mask, predictor.inputs)[0]
    if predictor.manifest.sex_input:
        feed["sex"] = np.array([[1.0 if sex == "male" else 0.0]], np.float32)
    return feed


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def work_latency(spec: dict) -> dict:
    from edgeba.predictor import Predictor

    fmt, threads, view, cases = spec["format"], spec["threads"], spec["view"], spec["cases"]
    limit_threads(threads, fmt)
    import_ms = _ms(lambda: importlib.import_module(RUNTIME_MODULE[backend_of(fmt)]))
    # Twice: the first load also fills OpenVINO's compiled-model cache (empty in this worker), the second
    # is what every later `edgeba predict` pays.
    first = Predictor(view, backend_of(fmt), threads)
    predictor = Predictor(view, backend_of(fmt), threads)
    preds = [predictor.predict(cases[i % len(cases)][0], sex_of(cases[i % len(cases)][1]), force=True)
             for i in range(spec["warmup"] + spec["runs"])][spec["warmup"] :]
    laps = [stage_ms(p.timings_ms) for p in preds]
    feeds = [model_inputs(predictor, p) for p in preds[: len(cases)]]
    views = preds[0].tta_views  # test-time augmentation: the regressor runs once per view
    n, keep = spec["warmup"] + spec["runs"], slice(spec["warmup"], None)
    # Each model in its own loop, as inside a prediction (the TTA regressor calls come back to back).
    seg = [_ms(lambda: predictor.unet.run(feeds[i % len(feeds)][0])) if predictor.unet else 0.0 for i in range(n)][keep]
    reg = [_ms(lambda: predictor.regressor.run(feeds[i % len(feeds)][1])) for i in range(n)][keep]
    passes = [p.unet_passes for p in preds]
    models = [{"segment_model": s, "regress_model": r, "models": k * s + views * r} for s, r, k in zip(seg, reg, passes)]
    out = {"import_ms": import_ms, "load_first_ms": first.load_ms, "load_ms": predictor.load_ms, "formats": predictor.formats,
           "tta_views": views, "unet_passes": stats(passes)}
    out |= {k: stats([d[k] for d in laps]) for k in STAGE_KEYS} | {k: stats([d[k] for d in models]) for k in MODEL_KEYS}
    if backend_of(fmt) == "openvino":  # FP32 IR runs in bf16 on CPUs with AMX/AVX512-BF16 unless told f32
        out["inference_precision"] = predictor.regressor.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    return out


def work_accuracy(spec: dict) -> dict:
    """Every format on the same images: MAE, and drift vs the float reference stage by stage
    (mask IoU; this regressor on the reference's own input; end to end)."""
    from edgeba.errors import EdgebaError
    from edgeba.predictor import Predictor

    threads, ref, views = spec["threads"], spec["reference"], spec["views"]
    limit_threads(threads, "keras" if "keras" in views else None)
    predictors = {f: Predictor(v, backend_of(f), threads) for f, v in views.items()}
    acc = {f: {"abs_err": [], "abs_err_qc_ok": [], "iou": [], "regress_drift": [], "e2e_drift": [], "qc_fail": 0, "failed": 0, "why": []}
           for f in views}
    for path, male, truth in spec["cases"]:
        r = None  # the reference's prediction and regressor feed on this image
        for f in [ref] + [f for f in views if f != ref]:
            a, p = acc[f], predictors[f]
            try:
                pred = p.predict(path, sex_of(male), force=True)
            except EdgebaError as exc:  # counted, never silently dropped (an empty mask is refused even forced)
                a["failed"] += 1
                a["why"] = (a["why"] + [str(exc)[:160]])[:3]
                continue
            qc_ok = pred.mask_quality is None or pred.mask_quality["ok"]
            a["qc_fail"] += int(not qc_ok)
            a["abs_err"].append(abs(pred.bone_age_months - truth))
            if qc_ok:  # what `edgeba predict` without --force answers at all
                a["abs_err_qc_ok"].append(a["abs_err"][-1])
            if f == ref:  # its prediction, its plain (un-augmented) regressor input, and its months on that input
                feed = regressor_feed(p, pred.source_pixels, pred.source_mask(), pred.sex)
                r = (pred, feed, regress.months(p.regressor.run(feed), p.target))
            elif r is not None:
                if pred.mask is not None:
                    a["iou"].append(iou(pred.mask, r[0].mask))
                a["regress_drift"].append(abs(regress.months(p.regressor.run(r[1]), p.target) - r[2]))
                a["e2e_drift"].append(abs(pred.bone_age_months - r[0].bone_age_months))
    return {f: summarize_accuracy(a, f == ref) for f, a in acc.items()}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:  # a re-framed image (edgeba/reframe.py) whose frame differs by a pixel or two
        import cv2

        b = cv2.resize(b.astype(np.uint8), (a.shape[1], a.shape[0]), interpolation=cv2.INTER_NEAREST)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def summarize_accuracy(a: dict, is_reference: bool) -> dict:
    def spread(v):
        return None if not v else {"mean": float(np.mean(v)), "p95": float(np.percentile(v, 95)), "max": float(np.max(v)), "min": float(np.min(v))}

    out = {"n": len(a["abs_err"]), "failed": a["failed"], "failures": a["why"], "qc_fail": a["qc_fail"],
           "mae": float(np.mean(a["abs_err"])) if a["abs_err"] else None,
           "mae_qc_ok": float(np.mean(a["abs_err_qc_ok"])) if a["abs_err_qc_ok"] else None, "reference": is_reference}
    if not is_reference:
        out |= {"mask_iou": spread(a["iou"]), "regress_drift_months": spread(a["regress_drift"]), "e2e_drift_months": spread(a["e2e_drift"])}
    return out


def work_peak(spec: dict) -> dict:
    """Float32 matmul throughput (GMAC/s, best of several): the compute floor's denominator."""
    n = spec["n"]
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    a @ b  # BLAS warm-up (thread pool, page faults)
    best = min(_ms(lambda: a @ b) for _ in range(spec["repeats"])) / 1e3
    return {"n": n, "gmac_per_s": n**3 / best / 1e9, "seconds": best}


def work_derive(spec: dict) -> dict:
    """FP32 files the model dir lacks, written from its Keras models by the exporter (needs [train])."""
    from edgeba.export import REGRESS, SEGMENT, export_stage

    stages = {s.key: s for s in (SEGMENT, REGRESS)}
    return {j["stage"]: export_stage(Path(j["keras"]), stages[j["stage"]], Path(spec["out"]), None, tuple(j["formats"]))
            for j in spec["jobs"]}


def work_throughput(spec: dict) -> dict:
    """`edgeba predict DIR --out results.csv --workers N` as the CLI runs it (edgeba.batch with a Job),
    on a folder of links to the images: images per second over the whole run (worker start-up and
    model loads included) and in the steady state (from the first finished row to the last)."""
    import tempfile

    from edgeba import batch

    with tempfile.TemporaryDirectory(prefix="edgeba-throughput-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for k, (path, _) in enumerate(spec["cases"]):  # one sex for the whole folder, as a batch run has
            os.symlink(path, folder / f"{k:04d}{Path(path).suffix}")
        done_at: list[float] = []
        t0 = time.perf_counter()
        job = batch.Job({"model_dir": spec["view"], "backend": backend_of(spec["format"]), "threads": spec["threads"]}, "male", True)
        summary = batch.run([folder], Path(tmp) / "results.csv", job, lambda k, n, f: k and done_at.append(time.perf_counter()),
                            spec["workers"])
        wall = time.perf_counter() - t0
    n = len(done_at)
    steady = (n - 1) / (done_at[-1] - done_at[0]) if n > 1 and done_at[-1] > done_at[0] else None
    return {"workers": spec["workers"], "threads_per_worker": spec["threads"], "images": n, "failed": summary.failed,
            "wall_s": wall, "images_per_s": n / wall, "steady_images_per_s": steady}


WORKERS = {"latency": work_latency, "throughput": work_throughput, "accuracy": work_accuracy, "peak": work_peak, "derive": work_derive}


def thread_env(threads: int, cache: Path) -> dict:
    n = str(threads)
    return dict(os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, MKL_NUM_THREADS=n, TF_NUM_INTRAOP_THREADS=n,
                TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3", XDG_CACHE_HOME=str(cache))


def run(task: str, spec: dict, threads: int, cache: Path, timeout: float = 3600) -> dict:
    """The parent's side: one task in a fresh process limited to `threads`, with `cache` as its
    XDG_CACHE_HOME (OpenVINO's compiled models: the bench neither uses nor fills the user's cache)."""
    proc = subprocess.run([sys.executable, "-m", "edgeba.bench.worker", task, json.dumps(spec)], env=thread_env(threads, cache),
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise RuntimeError(f"{task} worker failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(WORKERS[sys.argv[1]](json.loads(sys.argv[2]))))
