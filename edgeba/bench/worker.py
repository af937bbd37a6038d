"""Measurements that run in a fresh process: `python -m edgeba.bench.worker TASK SPEC_JSON` prints one JSON line.

A fresh process per (format, thread count), because TensorFlow fixes its thread pools when it
starts and a clinic user's `edgeba predict` is a fresh process too. `run()` is the parent's side.

The pipeline timed here is edgeba.predictor's, step by step, with the format chosen explicitly
(a Predictor picks the INT8 file of a backend, and the benchmark needs FP32 beside it).
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
from edgeba.manifest import load_manifest

RUNTIME_MODULE = {"tflite": "ai_edge_litert.interpreter", "openvino": "openvino", "onnx": "onnxruntime", "keras": "keras"}
STAGE_KEYS = ("decode", "segment", "qc", "crop_enhance", "regress", "total")
MODEL_KEYS = ("segment_model", "regress_model", "models")
DETAIL_KEYS = ("segment_input", "segment_mask")  # the U-Net's pre- and post-processing, inside "segment"


def backend_of(fmt: str) -> str:
    return fmt.split("-")[0]


def stats(values) -> dict:
    a = np.asarray(values, np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()), "n": int(a.size)}


class Pipeline:
    """Both stages of a model in one format, run with the runtime's own pre- and post-processing."""

    def __init__(self, model_dir: str, fmt: str, threads: int):
        from edgeba.preprocess import PreprocessConfig

        manifest = load_manifest(model_dir)
        runner = importlib.import_module(f"edgeba.backends.{backend_of(fmt)}").Runner
        self.cfg = PreprocessConfig.from_dict(manifest.preprocess)
        self.target, self.sex_input = manifest.target, manifest.sex_input
        self.unet = runner(manifest.files("segment", fmt), threads) if self.cfg.segment else None
        self.regressor = runner(manifest.files("regress", fmt), threads)

    def mask(self, pixels: np.ndarray) -> np.ndarray | None:
        from edgeba.segment import mask_from_prob, unet_input

        if self.unet is None:
            return None
        x, box = unet_input(pixels, self.cfg.unet_size)
        return mask_from_prob(self.unet.run({"image": x[None, :, :, None]}), box, pixels.shape)

    def months(self, x: np.ndarray, male: int) -> float:
        feed = {"image": x[None, :, :, None]}
        if self.sex_input:
            feed["sex"] = np.array([[float(male)]], np.float32)
        return regress.months(self.regressor.run(feed), self.target)

    def timed(self, path: str, male: int) -> dict[str, float]:
        """One image through every stage; ms per step (the steps of Predictor.predict, mask QC included)."""
        from edgeba.io import load_image
        from edgeba.preprocess import regressor_input
        from edgeba.quality import mask_quality
        from edgeba.segment import mask_from_prob, unet_input

        ms: dict[str, float] = {}
        t0 = t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            ms[name] = (now - t) * 1e3
            t = now

        rad = load_image(path)
        lap("decode")
        mask = None
        if self.unet is not None:
            x, box = unet_input(rad.pixels, self.cfg.unet_size)
            lap("segment_input")
            prob = self.unet.run({"image": x[None, :, :, None]})
            lap("segment_model")
            mask = mask_from_prob(prob, box, rad.shape)
            lap("segment_mask")
            mask_quality(mask)
            lap("qc")
            if not mask.any():  # an untrained or broken U-Net: still time the rest, on the whole frame
                mask = np.ones_like(mask)
                ms["empty_mask"] = 1.0
        x = regressor_input(rad.pixels, mask, self.cfg)
        lap("crop_enhance")
        self.months(x, male)
        lap("regress")
        ms["total"] = (time.perf_counter() - t0) * 1e3
        ms["regress_model"] = ms["regress"]  # feed + invoke + months: nothing else to separate
        for k in DETAIL_KEYS + ("segment_model", "qc"):
            ms.setdefault(k, 0.0)
        ms["segment"] = ms["segment_input"] + ms["segment_model"] + ms["segment_mask"]
        ms["models"] = ms["segment_model"] + ms["regress_model"]
        return ms


def limit_threads(threads: int, fmt: str | None = None) -> None:
    """OpenCV (pre/post-processing) and TensorFlow to `threads`; the runtimes get it from their Runner."""
    import cv2

    cv2.setNumThreads(threads)
    if fmt == "keras":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def work_latency(spec: dict) -> dict:
    fmt, threads = spec["format"], spec["threads"]
    limit_threads(threads, fmt)
    t0 = time.perf_counter()
    importlib.import_module(RUNTIME_MODULE[backend_of(fmt)])
    import_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    pipe = Pipeline(spec["model"], fmt, threads)  # verifies sha256 like edgeba predict does
    load_ms = (time.perf_counter() - t0) * 1e3
    cases = spec["cases"]
    laps = [pipe.timed(*cases[i % len(cases)]) for i in range(spec["warmup"] + spec["runs"])][spec["warmup"] :]
    keys = STAGE_KEYS + MODEL_KEYS + DETAIL_KEYS
    out = {"import_ms": import_ms, "load_ms": load_ms, "empty_masks": int(sum(d.get("empty_mask", 0) for d in laps))}
    out |= {k: stats([d[k] for d in laps]) for k in keys}
    if backend_of(fmt) == "openvino":  # FP32 IR runs in bf16 on CPUs with AMX/AVX512-BF16 unless told f32
        out["inference_precision"] = pipe.regressor.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    return out


def work_accuracy(spec: dict) -> dict:
    """Every format on the same decoded images: MAE, and drift vs the float reference stage by stage
    (mask IoU; regressor on the reference's own input; end to end)."""
    from edgeba.io import load_image
    from edgeba.preprocess import regressor_input
    from edgeba.quality import mask_quality

    threads, ref, formats = spec["threads"], spec["reference"], spec["formats"]
    limit_threads(threads, "keras" if "keras" in formats else None)
    pipes = {f: Pipeline(spec["model"], f, threads) for f in formats}
    acc = {f: {"abs_err": [], "iou": [], "regress_drift": [], "e2e_drift": [], "qc_fail": 0, "failed": 0, "why": []} for f in formats}
    for path, male, truth in spec["cases"]:
        pixels = load_image(path).pixels
        r = None  # the reference's (mask, regressor input, months) on this image
        for f in [ref] + [f for f in formats if f != ref]:
            a, pipe = acc[f], pipes[f]
            try:
                mask = pipe.mask(pixels)
                a["qc_fail"] += int(mask is not None and not mask_quality(mask).ok)
                x = regressor_input(pixels, mask, pipe.cfg)
                months = pipe.months(x, male)
            except Exception as exc:  # a failed image is counted, never silently dropped
                a["failed"] += 1
                a["why"] = (a["why"] + [f"{Path(path).stem}: {type(exc).__name__}: {exc}"[:160]])[:3]
                continue
            a["abs_err"].append(abs(months - truth))
            if f == ref:
                r = (mask, x, months)
            elif r is not None:
                if mask is not None:
                    a["iou"].append(iou(mask, r[0]))
                a["regress_drift"].append(abs(pipe.months(r[1], male) - r[2]))
                a["e2e_drift"].append(abs(months - r[2]))
    return {f: summarize_accuracy(a, f == ref) for f, a in acc.items()}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def summarize_accuracy(a: dict, is_reference: bool) -> dict:
    def spread(v):
        return None if not v else {"mean": float(np.mean(v)), "p95": float(np.percentile(v, 95)), "max": float(np.max(v)), "min": float(np.min(v))}

    out = {"n": len(a["abs_err"]), "failed": a["failed"], "failures": a["why"], "qc_fail": a["qc_fail"],
           "mae": float(np.mean(a["abs_err"])) if a["abs_err"] else None, "reference": is_reference}
    if not is_reference:
        out |= {"mask_iou": spread(a["iou"]), "regress_drift_months": spread(a["regress_drift"]), "e2e_drift_months": spread(a["e2e_drift"])}
    return out


def work_peak(spec: dict) -> dict:
    """Float32 matmul throughput (GMAC/s, best of several): the compute floor's denominator."""
    n = spec["n"]
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    a @ b  # BLAS warm-up (thread pool, page faults)
    best = min(_timed(lambda: a @ b) for _ in range(spec["repeats"]))
    return {"n": n, "gmac_per_s": n**3 / best / 1e9, "seconds": best}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def work_derive(spec: dict) -> dict:
    """FP32 files the model dir lacks, written from its Keras models by the exporter (needs [train])."""
    from edgeba.export import STAGES as EXPORT_STAGES
    from edgeba.export import export_stage

    return {j["stage"]: export_stage(Path(j["keras"]), EXPORT_STAGES[j["stage"]], Path(spec["out"]), None, tuple(j["formats"]))
            for j in spec["jobs"]}


WORKERS = {"latency": work_latency, "accuracy": work_accuracy, "peak": work_peak, "derive": work_derive}


def thread_env(threads: int) -> dict:
    n = str(threads)
    return dict(os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, MKL_NUM_THREADS=n, TF_NUM_INTRAOP_THREADS=n,
                TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")


def run(task: str, spec: dict, threads: int, timeout: float = 3600) -> dict:
    """The parent's side: one task in a fresh process limited to `threads`; its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "edgeba.bench.worker", task, json.dumps(spec)], env=thread_env(threads),
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise RuntimeError(f"{task} worker failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(WORKERS[sys.argv[1]](json.loads(sys.argv[2]))))
