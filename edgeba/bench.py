"""`edgeba bench`: size, load time, cold start, latency per stage, peak memory, accuracy and INT8 drift
of every installed backend and precision, on this machine, into JSON + Markdown + PNG.

Every measurement that depends on threads or process state runs in a fresh worker process
(`python -m edgeba.bench _worker SPEC`): TensorFlow fixes its thread pools when it starts, and a clinic
user's `edgeba predict` is a fresh process too. This module itself imports no runtime, so it works
after a plain `pip install edgeba` on a Raspberry Pi; TensorFlow is only imported by the keras worker.

The pipeline timed here is edgeba.predictor's, step by step, with the format chosen explicitly
(a Predictor picks the INT8 file of a backend, and the benchmark needs FP32 beside it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgeba import regress
from edgeba.manifest import FORMATS, STAGES, load_manifest, sha256

SCHEMA = "edgeba-bench/1"
RUNTIME_MODULE = {"tflite": "ai_edge_litert.interpreter", "openvino": "openvino", "onnx": "onnxruntime", "keras": "keras"}
STAGE_KEYS = ("decode", "segment", "qc", "crop_enhance", "regress", "total")
MODEL_KEYS = ("segment_model", "regress_model", "models")
DETAIL_KEYS = ("segment_input", "segment_mask")  # the U-Net's pre- and post-processing, inside "segment"
FLOAT_REFERENCE_ORDER = ("keras", "tflite-fp32", "onnx-fp32", "openvino-fp32")
TARGETS = {"int8_vs_keras": 2.5, "int8_vs_best_fp32": 1.5, "pipeline_gmac": 1.5, "predict_peak_rss_mb": 250.0, "cold_start_s": 1.5}


class Settings:
    """How much to measure: the full run, or --quick (a CI smoke run of every code path)."""

    def __init__(self, quick: bool, threads: list[int], val_images: int | None):
        self.quick = quick
        self.threads = threads
        self.latency_images = 2 if quick else 8  # decode cost varies with the file; cycle over a few
        self.warmup = 1 if quick else 3
        self.runs = 3 if quick else 40
        self.cold_repeats = 1 if quick else 3
        self.cold_warm = not quick  # one unmeasured run first, so every measured run finds the files in the page cache
        self.val_images = val_images if val_images is not None else (3 if quick else None)  # None = whole split
        # Many short matmuls, best one: on a shared machine a long one is rarely left alone for its whole run.
        self.matmul = {"n": 512, "repeats": 5} if quick else {"n": 1024, "repeats": 30}

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def backend_of(fmt: str) -> str:
    return fmt.split("-")[0]


def stats(values) -> dict:
    a = np.asarray(values, np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()), "n": int(a.size)}


# ------------------------------------------------------------------------------------- pipeline


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


# --------------------------------------------------------------------------------------- workers


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


def run_worker(task: str, spec: dict, threads: int, timeout: float = 3600) -> dict:
    proc = subprocess.run([sys.executable, "-m", "edgeba.bench", "_worker", task, json.dumps(spec)], env=thread_env(threads),
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise RuntimeError(f"{task} worker failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------- cold start


def format_view(manifest, fmt: str, root: Path) -> Path:
    """A model dir holding only `fmt`, so `edgeba predict --backend B` runs exactly that format."""
    view = root / fmt
    view.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(manifest.data))
    data["stages"] = {}
    for stage, formats in manifest.data["stages"].items():
        if fmt not in formats:
            continue
        entry = formats[fmt]
        data["stages"][stage] = {fmt: entry}
        copy_files(manifest.dir, entry, view)
    (view / "manifest.json").write_text(json.dumps(data))
    return view


def copy_files(src: Path, entry: dict, dst: Path) -> None:
    """Copies, not links: the manifest refuses symlinks out of its dir, and an export must never write through a link."""
    for key in ("file", "weights"):
        if key in entry:
            shutil.copyfile(src / entry[key], dst / entry[key])


def cold_start(view: Path, fmt: str, image: str, male: int, timeout: float = 300) -> dict:
    """`edgeba predict` as a user runs it: wall time of the whole process and its peak RSS (wait4)."""
    cmd = [sys.executable, "-m", "edgeba.cli", "predict", image, "--sex", "male" if male else "female",
           "--backend", backend_of(fmt), "--model", str(view), "--force", "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this one child, not all children
        wall = time.perf_counter() - t0
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"edgeba predict --backend {backend_of(fmt)} failed (exit {proc.returncode}): {stderr.strip()[-300:]}")
    pred = json.loads(stdout.strip().splitlines()[-1])
    if pred["formats"]["regress"] != fmt:
        raise RuntimeError(f"edgeba predict ran {pred['formats']} instead of {fmt}")
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss_mb = usage.ru_maxrss / (1024 if sys.platform != "darwin" else 1024**2)
    return {"wall_s": wall, "peak_rss_mb": rss_mb, "bone_age_months": pred["bone_age_months"]}


# ------------------------------------------------------------------------------------- counting


def tflite_gmac(path: Path) -> float:
    """Multiply-accumulates of the conv / dense layers of a TFLite model (batch 1), in GMAC.
    Element-wise ops, pooling and resizing are not counted: they are a few % of a conv net."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    shape = {t["index"]: tuple(int(d) for d in t["shape"]) for t in it.get_tensor_details()}
    macs = 0
    for op in it._get_ops_details():  # noqa: SLF001 - the only per-op view the interpreter offers
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if name == "CONV_2D":  # filter (O, KH, KW, I)
            _, kh, kw, ci = shape[ins[1]]
            macs += int(np.prod(shape[outs[0]])) * kh * kw * ci
        elif name == "DEPTHWISE_CONV_2D":  # filter (1, KH, KW, O)
            _, kh, kw, _ = shape[ins[1]]
            macs += int(np.prod(shape[outs[0]])) * kh * kw
        elif name == "FULLY_CONNECTED":  # filter (O, I)
            macs += int(np.prod(shape[outs[0]])) * shape[ins[1]][-1]
        elif name == "TRANSPOSE_CONV":  # (output_shape, filter (O, KH, KW, I), input)
            co, kh, kw, _ = shape[ins[1]]
            macs += int(np.prod(shape[ins[2]])) * kh * kw * co
    return macs / 1e9


def stage_gmac(manifest) -> dict:
    """GMAC per image per stage: the manifest's own number if it records one, else counted from a TFLite file."""
    out = {}
    for stage in STAGES:
        formats = manifest.data["stages"].get(stage) or {}
        if not formats:
            continue
        recorded = next((e["gmac"] for e in formats.values() if "gmac" in e), None)
        tfl = next((f for f in ("tflite-fp32", "tflite-int8") if f in formats), None)
        if recorded is not None:
            out[stage] = {"gmac": float(recorded), "source": "manifest"}
        elif tfl is not None:
            out[stage] = {"gmac": tflite_gmac(manifest.files(stage, tfl).path), "source": f"counted from {tfl}"}
    if out:
        out["total"] = {"gmac": sum(v["gmac"] for v in out.values()), "source": "sum of stages"}
    return out


def model_sizes(manifest, fmt: str) -> dict:
    sizes = {}
    for stage in STAGES:
        entry = (manifest.data["stages"].get(stage) or {}).get(fmt)
        if entry:
            sizes[stage] = sum((manifest.dir / entry[k]).stat().st_size for k in ("file", "weights") if k in entry)
    sizes["total"] = sum(sizes.values())
    return sizes


# -------------------------------------------------------------------------------------- machine


ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
             "0xd42": "Cortex-A78AE", "0x004": "NVIDIA Carmel"}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
             "neon", "asimd", "asimddp", "i8mm", "bf16", "sve")


def machine() -> dict:
    import psutil

    from edgeba.backends import default_threads, installed
    from edgeba.info import PACKAGES, _version

    info = _read("/proc/cpuinfo")
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    part = fields.get("cpu part", "")
    cpu = fields.get("model name") or ARM_PARTS.get(part, f"ARM part {part}" if part else platform.processor() or "unknown")
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    os_name = next((ln.split("=", 1)[1].strip('"') for ln in _read("/etc/os-release").splitlines() if ln.startswith("PRETTY_NAME=")), platform.system())
    libc, libc_version = platform.libc_ver()
    return {
        "cpu": cpu,
        "board": _read("/proc/device-tree/model").strip("\x00\n ") or None,
        "arch": platform.machine(),
        "cores_logical": os.cpu_count(),
        "cores_usable": default_threads(),
        "cpu_flags": sorted(flags & set(CPU_FLAGS)),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "os": os_name,
        "kernel": platform.release(),
        "libc": f"{libc} {libc_version}".strip(),
        "python": platform.python_version(),
        "packages": {p: v for p in PACKAGES + ("edgeba", "psutil") if (v := _version(p))},
        "backends_installed": installed(),
        "nice": os.nice(0),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------------- orchestration


class Log:
    """Progress on stderr; samples the load average at every step (timings on a busy machine are noisy)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.load = [os.getloadavg()]

    def __call__(self, msg: str) -> None:
        self.load.append(os.getloadavg())
        print(f"[bench {time.perf_counter() - self.t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    def summary(self) -> dict:
        return {"start": list(self.load[0]), "end": list(self.load[-1]), "max_1min": max(l[0] for l in self.load)}


def needed_stages(manifest) -> list[str]:
    return (["segment"] if manifest.segments else []) + ["regress"]


def complete_fp32(manifest, work: Path, log: Log):
    """The manifest plus the FP32 formats it lacks (exported from its Keras files), so every backend's
    INT8/FP32 ratio is measured in the same run. Returns (manifest, derived formats)."""
    from edgeba.backends import installed

    stages = needed_stages(manifest)
    have = installed()
    jobs = [{"stage": s, "keras": str(manifest.files(s, "keras").path), "formats": missing}
            for s in stages if "keras" in manifest.formats(s)
            if (missing := [f for f in FORMATS if f.endswith("fp32") and backend_of(f) in have and f not in manifest.formats(s)])]
    if not jobs or importlib.util.find_spec("tensorflow") is None:
        return manifest, []
    out = work / "model"
    out.mkdir(parents=True)
    for stage_formats in manifest.data["stages"].values():
        for entry in stage_formats.values():
            copy_files(manifest.dir, entry, out)
    log(f"exporting missing FP32 formats from the Keras models: {sorted({f for j in jobs for f in j['formats']})}")
    data = json.loads(json.dumps(manifest.data))
    for stage, entries in run_worker("derive", {"out": str(out), "jobs": jobs}, default_cores()).items():
        data["stages"][stage].update(entries)
    (out / "manifest.json").write_text(json.dumps(data, indent=1))
    return load_manifest(out), sorted({f for j in jobs for f in j["formats"]})


def default_cores() -> int:
    from edgeba.backends import default_threads

    return default_threads()


def runnable_formats(manifest, wanted: list[str] | None) -> list[str]:
    """Formats whose runtime is installed and that have a file for every stage the model needs."""
    from edgeba.backends import installed

    have = installed()
    stages = needed_stages(manifest)
    return [f for f in FORMATS if backend_of(f) in have and all(f in manifest.formats(s) for s in stages)
            and (wanted is None or f in wanted)]


def auto_format(manifest) -> str | None:
    """The format a plain `edgeba predict` runs here (the targets on memory and cold start are about it)."""
    from edgeba.backends import FORMATS as BACKEND_FORMATS
    from edgeba.backends import choose
    from edgeba.errors import ModelError

    try:
        backend = choose(manifest)
    except ModelError:
        return None
    return next(f for f in BACKEND_FORMATS[backend] if f in manifest.formats("regress"))


def benchmark(model_dir: Path | None, settings: Settings, wanted: list[str] | None, work: Path, log: Log) -> dict:
    from edgeba.dataset import split_cases
    from edgeba.errors import ModelError

    shipped = load_manifest(model_dir)
    manifest, derived = (shipped, []) if settings.quick else complete_fp32(shipped, work, log)
    formats = runnable_formats(manifest, wanted)
    if not formats:
        raise ModelError(f"no installed backend can run a format of {shipped.name} (wanted: {wanted or 'all'})")
    reference = next((f for f in FLOAT_REFERENCE_ORDER if f in formats), formats[0])
    val = split_cases("val")
    val = val[: settings.val_images] if settings.val_images else val
    lat_cases = [[str(c.image_path), c.male] for c in val[: settings.latency_images]]
    res: dict = {f: {"backend": backend_of(f), "precision": f.split("-")[-1] if "-" in f else "float (keras)",
                     "derived_by_bench": f in derived, "size_bytes": model_sizes(manifest, f), "latency": {}, "errors": []}
                 for f in formats}

    def attempt(fmt: str, what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # one failing runtime must not hide the others' numbers
            res[fmt]["errors"].append(f"{what}: {type(exc).__name__}: {exc}"[:400])
            log(f"{fmt}: {what} FAILED: {exc}")

    peak = {}
    for t in settings.threads:
        log(f"float32 matmul peak at {t} thread(s)")
        peak[str(t)] = run_worker("peak", settings.matmul, t)
    for fmt in formats:
        for t in settings.threads:
            log(f"{fmt}: latency at {t} thread(s)")

            def latency(fmt=fmt, t=t):
                spec = {"model": str(manifest.dir), "format": fmt, "threads": t, "cases": lat_cases,
                        "warmup": settings.warmup, "runs": settings.runs}
                res[fmt]["latency"][str(t)] = run_worker("latency", spec, t)

            attempt(fmt, f"latency {t}T", latency)
    views = work / "views"
    image, male = lat_cases[0]
    for fmt in formats:
        log(f"{fmt}: cold start of edgeba predict x{settings.cold_repeats}")

        def cold(fmt=fmt):
            view = format_view(manifest, fmt, views)
            if settings.cold_warm:
                cold_start(view, fmt, image, male)
            runs = [cold_start(view, fmt, image, male) for _ in range(settings.cold_repeats)]
            res[fmt]["cold_start"] = {"wall_s": stats([r["wall_s"] for r in runs]), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                                      "bone_age_months": runs[0]["bone_age_months"], "threads": default_cores()}

        attempt(fmt, "cold start", cold)
    log(f"accuracy on {len(val)} val images, reference {reference}")
    acc_spec = {"model": str(manifest.dir), "formats": formats, "reference": reference, "threads": default_cores(),
                "cases": [[str(c.image_path), c.male, c.boneage_months] for c in val]}
    try:
        for fmt, a in run_worker("accuracy", acc_spec, default_cores()).items():
            res[fmt]["accuracy"] = a
    except Exception as exc:
        for fmt in formats:
            res[fmt]["errors"].append(f"accuracy: {exc}"[:400])
    gmac = stage_gmac(manifest)
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": settings.quick,
        "settings": settings.as_dict(),
        "model": {"dir": str(shipped.dir.resolve()), "name": shipped.name, "created": shipped.data.get("created"),
                  "manifest_sha256": sha256(shipped.dir / "manifest.json"), "preprocess": shipped.preprocess,
                  "derived_formats": derived},
        "images": {"split": "val", "accuracy": len(val), "latency": len(lat_cases), "latency_ids": [Path(p).stem for p, _ in lat_cases]},
        "reference": reference,
        "auto_format": auto_format(shipped),
        "gmac": gmac,
        "peak": peak,
        "formats": res,
    }


def derive(r: dict) -> dict:
    """Ratios, compute floor and targets from the measured numbers (all from this one run)."""
    fm, total_gmac = r["formats"], (r["gmac"].get("total") or {}).get("gmac")

    def e2e(fmt, t, key="total"):
        lat = fm.get(fmt, {}).get("latency", {}).get(str(t))
        return lat[key]["median"] if lat else None

    floor = {}
    for t, p in r["peak"].items():
        ms = total_gmac / p["gmac_per_s"] * 1e3 if total_gmac else None
        floor[t] = {"floor_ms": ms, "x_floor": {f: {"models": e2e(f, t, "models") / ms, "e2e": e2e(f, t) / ms}
                                                 for f in fm if ms and e2e(f, t)}}
    ratios = {}
    for b in ("tflite", "onnx", "openvino"):
        i8, f32 = f"{b}-int8", f"{b}-fp32"
        for t in r["settings"]["threads"]:
            if e2e(i8, t) and e2e(f32, t):
                ratios.setdefault(b, {})[str(t)] = {"e2e": e2e(f32, t) / e2e(i8, t), "models": e2e(f32, t, "models") / e2e(i8, t, "models")}
    t1 = 1
    int8 = {f: e2e(f, t1) for f in fm if f.endswith("int8") and e2e(f, t1)}
    fp = {f: e2e(f, t1) for f in fm if not f.endswith("int8") and e2e(f, t1)}
    fastest = min(int8, key=int8.get) if int8 else None
    best_fp = min(fp, key=fp.get) if fp else None
    auto = fm.get(r["auto_format"] or "", {}).get("cold_start")
    targets = [
        _target("fastest INT8 vs keras float, e2e, 1 thread", fastest and "keras" in fp and fp["keras"] / int8[fastest], ">=", TARGETS["int8_vs_keras"], fastest),
        _target("fastest INT8 vs best FP32, e2e, 1 thread", fastest and best_fp and fp[best_fp] / int8[fastest], ">=", TARGETS["int8_vs_best_fp32"], f"{fastest} vs {best_fp}"),
        _target("whole pipeline GMAC per image", total_gmac, "<=", TARGETS["pipeline_gmac"], "segment + regress"),
        _target("edgeba predict peak RSS (MB)", auto and auto["peak_rss_mb"], "<=", TARGETS["predict_peak_rss_mb"], r["auto_format"]),
        _target("edgeba predict cold start (s, median)", auto and auto["wall_s"]["median"], "<=", TARGETS["cold_start_s"], r["auto_format"]),
    ]
    return {"floor": floor, "int8_speedup": ratios, "targets": targets}


def _target(name: str, value, op: str, limit: float, what) -> dict:
    ok = None if not value else (value >= limit if op == ">=" else value <= limit)
    return {"name": name, "value": value or None, "op": op, "limit": limit, "pass": ok, "path": what}


# ------------------------------------------------------------------------------------------ report


def _f(v, fmt="{:.1f}", none="-") -> str:
    return none if v is None else fmt.format(v)


def markdown(r: dict) -> str:
    m, fm, d = r["machine"], r["formats"], r["derived"]
    ts = [str(t) for t in r["settings"]["threads"]]
    load = m["loadavg"]
    lines = [
        f"# edgeba bench: {r['model']['name']} on {m['cpu']} ({m['arch']})",
        "",
        f"{r['created']}, `{r['command']}`{' (--quick: a smoke run, not a measurement)' if r['quick'] else ''}.",
        f"Images: accuracy on {r['images']['accuracy']} {r['images']['split']} images; latency cycles over {r['images']['latency']} of them, "
        f"{r['settings']['warmup']} warm-up + {r['settings']['runs']} timed runs per format and thread count. "
        f"Load average (1 min) at start {load['start'][0]:.2f}, end {load['end'][0]:.2f}, max {load['max_1min']:.2f} on {m['cores_logical']} cores.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for k in ("cpu", "board", "arch", "cores_usable", "cpu_flags", "memory_gb", "os", "kernel", "libc", "python", "nice"):
        v = m[k]
        lines.append(f"| {k} | {', '.join(v) if isinstance(v, list) else v} |")
    lines.append(f"| packages | {', '.join(f'{p} {v}' for p, v in m['packages'].items())} |")
    head = ["format", "MB", "load ms"] + [f"e2e ms {t}T (p90)" for t in ts] + [f"models ms {t}T" for t in ts]
    head += ["cold start s", "peak RSS MB", "MAE", "mask IoU vs ref", "regress drift", "e2e drift"]
    lines += ["", f"## Summary (reference for drift: {r['reference']}; `edgeba predict` default here: {r['auto_format']})", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f, x in fm.items():
        lat, cs, acc = x["latency"], x.get("cold_start"), x.get("accuracy") or {}
        runs_as = next((v["inference_precision"] for v in lat.values() if "inference_precision" in v), None)
        name = f + (" *" if x["derived_by_bench"] else "") + (f" (runs {runs_as})" if runs_as and runs_as != "f32" else "")
        row = [name, _f(x["size_bytes"]["total"] / 1e6, "{:.2f}"),
               _f(lat.get(ts[0], {}).get("load_ms"), "{:.0f}")]
        row += [f"{lat[t]['total']['median']:.1f} ({lat[t]['total']['p90']:.1f})" if t in lat else "-" for t in ts]
        row += [_f(lat[t]["models"]["median"]) if t in lat else "-" for t in ts]
        row += [_f(cs and cs["wall_s"]["median"], "{:.2f}"), _f(cs and cs["peak_rss_mb"], "{:.0f}"), _f(acc.get("mae"), "{:.2f}")]
        for k, fmt in (("mask_iou", "{:.3f}"), ("regress_drift_months", "{:.2f}"), ("e2e_drift_months", "{:.2f}")):
            s = acc.get(k)
            row.append("ref" if acc.get("reference") else (f"{fmt.format(s['mean'])} (p95 {fmt.format(s['p95'])})" if s else "-"))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "MB: both stages' files. Drift: mean (p95) over the images; IoU: U-Net mask vs the reference's mask; "
              "regress drift: this regressor on the reference's own input (months); e2e drift: whole pipeline vs the reference (months). "
              "`*`: FP32 file exported by the bench from the model's Keras files (the shipped dir lacks it). "
              "(runs bf16): OpenVINO's CPU plugin runs an FP32 model in bfloat16 on CPUs with AMX / AVX512-BF16, as `edgeba predict` does."]
    for t in ts:
        lines += ["", f"## Stages at {t} thread(s): median ms", "",
                  "| format | decode | segment: input + model + mask | mask QC | crop+enhance | regress | total (p90) | not in a model |",
                  "|---|---|---|---|---|---|---|---|"]
        for f, x in fm.items():
            s = {k: v["median"] for k, v in x["latency"].get(t, {}).items() if isinstance(v, dict)}
            if s:
                lines.append(f"| {f} | {s['decode']:.1f} | {s['segment']:.1f}: {s['segment_input']:.1f} + {s['segment_model']:.1f} + "
                             f"{s['segment_mask']:.1f} | {s['qc']:.1f} | {s['crop_enhance']:.1f} | {s['regress']:.1f} | "
                             f"{s['total']:.1f} ({x['latency'][t]['total']['p90']:.1f}) | {s['total'] - s['models']:.1f} |")
    lines += ["", "## INT8 speed-up over FP32, same backend, same run (FP32 ms / INT8 ms)", "", "| backend | " +
              " | ".join(f"e2e {t}T | models {t}T" for t in ts) + " |", "|---|" + "---|---|" * len(ts)]
    for b, v in d["int8_speedup"].items():
        lines.append(f"| {b} | " + " | ".join(f"{v[t]['e2e']:.2f} | {v[t]['models']:.2f}" if t in v else "- | -" for t in ts) + " |")
    g = r["gmac"]
    lines += ["", "## Compute floor", "",
              "GMAC per image: " + ", ".join(f"{k} {v['gmac']:.3f} ({v['source']})" for k, v in g.items()) + ".",
              f"Peak: best of {r['settings']['matmul']['repeats']} float32 numpy matmuls n={r['settings']['matmul']['n']} ("
              + ", ".join(f"{t}T {p['gmac_per_s']:.1f} GMAC/s" for t, p in r["peak"].items()) + "). "
              "Floor = GMAC / peak; x floor = measured median / floor (models: both model invocations only; e2e: whole pipeline). "
              "INT8 kernels can beat a float32 floor, so it bounds FP32 paths only.", "",
              "| format | " + " | ".join(f"x floor models {t}T | x floor e2e {t}T" for t in ts) + " |", "|---|" + "---|---|" * len(ts)]
    for f in fm:
        cells = []
        for t in ts:
            x = d["floor"].get(t, {}).get("x_floor", {}).get(f)
            cells += [_f(x and x["models"]), _f(x and x["e2e"])]
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Floor ms: " + ", ".join(f"{t}T {_f(v['floor_ms'], '{:.2f}')}" for t, v in d["floor"].items()) + ".")
    lines += ["", "## Targets (stated for x86, 1 thread)", "", "| target | path | value | limit | pass |", "|---|---|---|---|---|"]
    for t in d["targets"]:
        ok = {True: "yes", False: "**no**", None: "not measured"}[t["pass"]]
        lines.append(f"| {t['name']} | {t['path']} | {_f(t['value'], '{:.2f}')} | {t['op']} {t['limit']} | {ok} |")
    notes = [f"{f}: OpenVINO inference precision {x['latency'][ts[0]]['inference_precision']}" for f, x in fm.items()
             if x["latency"].get(ts[0], {}).get("inference_precision")]
    notes += [f"{f}: {e}" for f, x in fm.items() for e in x["errors"]]
    notes += [f"{f}: {a['failed']} of {r['images']['accuracy']} images failed ({'; '.join(a['failures'])})"
              for f, x in fm.items() if (a := x.get("accuracy")) and a["failed"]]
    notes += [f"{f}: {a['qc_fail']} of {a['n']} masks failed mask QC (predicted anyway, as with --force)"
              for f, x in fm.items() if (a := x.get("accuracy")) and a["qc_fail"]]
    notes += [f"{f}: {x['latency'][t]['empty_masks']} latency runs at {t}T had an empty mask (timed on the whole frame)"
              for f, x in fm.items() for t in ts if x["latency"].get(t, {}).get("empty_masks")]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> bool:
    """Stacked stage medians per format, one panel per thread count; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ts = [str(t) for t in r["settings"]["threads"]]
    fm = r["formats"]
    names = list(fm)
    fig, axes = plt.subplots(1, len(ts), figsize=(6 * len(ts), 0.5 * len(names) + 1.8), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], ts):
        left = np.zeros(len(names))
        for stage in STAGE_KEYS[:-1]:
            v = np.array([fm[f]["latency"].get(t, {}).get(stage, {}).get("median", 0.0) for f in names])
            ax.barh(names, v, left=left, label=stage)
            left += v
        ax.set_title(f"{t} thread(s): median ms per image")
        ax.set_xlabel("ms")
        ax.invert_yaxis()
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"edgeba {r['model']['name']} on {r['machine']['cpu']} ({r['machine']['arch']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------- cli


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgeba bench", description="Benchmark every installed backend and precision on this machine.")
    p.add_argument("--quick", action="store_true", help="a smoke run of every code path (a few images and runs), for CI")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for the JSON, Markdown and PNG")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all cores)")
    p.add_argument("--formats", nargs="+", default=None, metavar="FORMAT",
                   help=f"formats or backends to run (default: all installed): {', '.join(FORMATS)}")
    p.add_argument("--val", type=int, default=None, metavar="N", help="accuracy on the first N val images (default: all; --quick: 3)")
    a = p.parse_args(argv)
    if a.formats:
        unknown = [f for f in a.formats if f not in FORMATS and f not in RUNTIME_MODULE]
        if unknown:
            p.error(f"unknown formats {unknown}")
        a.formats = [f for f in FORMATS if f in a.formats or backend_of(f) in a.formats]
    if a.threads and min(a.threads) < 1 or a.val is not None and a.val < 1:
        p.error("--threads and --val must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    """`edgeba bench ARGS`: writes OUT/<arch>-<time>[-quick].{json,md,png}; 0 when every format ran cleanly."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        print(json.dumps(WORKERS[argv[1]](json.loads(argv[2]))))
        return 0
    a = parse(argv)
    cores = default_cores()
    # --quick: all cores only (the 1-thread path is the same code; CI time is short)
    settings = Settings(a.quick, sorted(set(a.threads or ([cores] if a.quick else [1, cores]))), a.val)
    log = Log()
    with tempfile.TemporaryDirectory(prefix="edgeba-bench-") as work:
        r = benchmark(a.model, settings, a.formats, Path(work), log)
    r["command"] = " ".join(["edgeba bench", *argv])
    r["machine"] = machine() | {"loadavg": log.summary()}
    r["derived"] = derive(r)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{platform.machine()}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S}{'-quick' if a.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(r, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(r))
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    if plot(r, stem.with_suffix(".png")):
        written.append(stem.with_suffix(".png"))
    else:
        log("no plot: matplotlib is not installed")
    print("\n".join(map(str, written)))
    errors = sum(len(x["errors"]) for x in r["formats"].values())
    log(f"done, {errors} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
