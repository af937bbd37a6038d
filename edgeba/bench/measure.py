"""The benchmark run: which formats, in which worker processes, and what is derived from the numbers."""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgeba.bench import worker
from edgeba.bench.machine import model_sizes, stage_gmac
from edgeba.bench.worker import backend_of, stats
from edgeba.manifest import FORMATS, load_manifest, sha256

SCHEMA = "edgeba-bench/1"
FLOAT_REFERENCE_ORDER = ("keras", "tflite-fp32", "onnx-fp32", "openvino-fp32")
# pipeline_gmac: issue 18 raised the budget from 1.5 (issue 7's) to 3 GMAC per image, U-Net passes included.
TARGETS = {"int8_vs_keras": 3.0, "int8_vs_best_fp32": 1.5, "e2e_vs_models": 1.5, "pipeline_gmac": 3.0, "predict_peak_rss_mb": 250.0,
           "cold_start_s": 1.5, "batch_scaling": 1.6}


class Settings:
    """How much to measure: the full run, or --quick (a CI smoke run of every code path)."""

    def __init__(self, quick: bool, threads: list[int], val_images: int | None, precise: bool = False):
        self.quick = quick
        self.precise = precise  # measure `edgeba predict --precise`: every prediction averages the TTA views
        self.threads = threads
        self.latency_images = 2 if quick else 8  # decode cost varies with the file; cycle over a few
        self.warmup = 1 if quick else 3
        self.runs = 3 if quick else 40
        self.cold_repeats = 1 if quick else 3
        self.cold_warm = not quick  # one unmeasured run first, so every measured run finds the files in the page cache
        self.batch_images = 6 if quick else 40  # batch throughput: one folder, at 1 worker and at one per core
        self.val_images = val_images if val_images is not None else (3 if quick else None)  # None = whole split
        # Many short matmuls, best one: on a shared machine a long one is rarely left alone for its whole run.
        self.matmul = {"n": 512, "repeats": 5} if quick else {"n": 1024, "repeats": 30}

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def format_view(manifest, fmt: str, root: Path, tta: bool = False) -> Path:
    """A model dir holding only `fmt`, so `edgeba predict --backend B` runs exactly that format; `tta`
    sets its manifest's test-time augmentation, so every predictor and `edgeba predict` run on it averages
    the views as `--precise` does."""
    view = root / fmt
    view.mkdir(parents=True)
    stages = {stage: {fmt: formats[fmt]} for stage, formats in manifest.data["stages"].items() if fmt in formats}
    for entries in stages.values():
        copy_files(manifest.dir, entries[fmt], view)
    (view / "manifest.json").write_text(json.dumps({**manifest.data, "stages": stages} | ({"tta": True} if tta else {})))
    return view


def copy_files(src: Path, entry: dict, dst: Path) -> None:
    """Copies, not links: the manifest refuses symlinks out of its dir, and an export must never write through a link."""
    for key in ("file", "weights"):
        if key in entry:
            shutil.copyfile(src / entry[key], dst / entry[key])


def cold_start(view: Path, fmt: str, image: str, male: int, cache: Path, timeout: float = 300) -> dict:
    """`edgeba predict` as a user runs it: wall time of the whole process and its peak RSS (wait4).
    `cache` is its XDG_CACHE_HOME (OpenVINO keeps compiled models there)."""
    cmd = [sys.executable, "-m", "edgeba.cli", "predict", image, "--sex", worker.sex_of(male),
           "--backend", backend_of(fmt), "--model", str(view), "--force", "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=dict(os.environ, XDG_CACHE_HOME=str(cache)))
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
    for stage, entries in worker.run("derive", {"out": str(out), "jobs": jobs}, default_cores(), work / "cache" / "derive").items():
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
    val = val_all = split_cases("val")
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

    cores = default_cores()
    views = {f: format_view(manifest, f, work / "views", tta=settings.precise) for f in formats}
    peak = {}
    for t in settings.threads:
        log(f"float32 matmul peak at {t} thread(s)")
        peak[str(t)] = worker.run("peak", settings.matmul, t, work / "cache" / f"peak-{t}")
    for fmt in formats:
        for t in settings.threads:
            log(f"{fmt}: latency at {t} thread(s)")

            def latency(fmt=fmt, t=t):
                spec = {"view": str(views[fmt]), "format": fmt, "threads": t, "cases": lat_cases,
                        "warmup": settings.warmup, "runs": settings.runs}
                res[fmt]["latency"][str(t)] = worker.run("latency", spec, t, work / "cache" / f"latency-{fmt}-{t}")

            attempt(fmt, f"latency {t}T", latency)
    image, male = lat_cases[0]
    for fmt in formats:
        log(f"{fmt}: cold start of edgeba predict x{settings.cold_repeats}")

        def cold(fmt=fmt):
            cache = work / "cache" / f"cold-{fmt}"  # empty: the first run compiles OpenVINO models, later runs reuse them
            first = cold_start(views[fmt], fmt, image, male, cache) if settings.cold_warm else None
            runs = [cold_start(views[fmt], fmt, image, male, cache) for _ in range(settings.cold_repeats)]
            res[fmt]["cold_start"] = {"wall_s": stats([r["wall_s"] for r in runs]), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                                      "first_run_s": first and first["wall_s"], "bone_age_months": runs[0]["bone_age_months"],
                                      "threads": cores}

        attempt(fmt, "cold start", cold)
    throughput = []
    if (auto := auto_format(shipped)) in formats:
        for w in sorted({1, cores}):  # back to back, so both see the same machine load
            log(f"{auto}: batch throughput, {w} worker(s), {settings.batch_images} images")
            spec = {"view": str(views[auto]), "format": auto, "workers": w, "threads": None if w == 1 else max(1, cores // w),
                    "cases": [[str(c.image_path), c.male] for c in val_all[: settings.batch_images]]}
            attempt(auto, f"throughput {w} workers", lambda spec=spec: throughput.append(worker.run("throughput", spec, cores, work / "cache" / f"batch-{w}")))
    log(f"accuracy on {len(val)} val images, reference {reference}")
    acc_spec = {"views": {f: str(v) for f, v in views.items()}, "reference": reference, "threads": cores,
                "cases": [[str(c.image_path), c.male, c.boneage_months] for c in val]}
    try:
        for fmt, a in worker.run("accuracy", acc_spec, cores, work / "cache" / "accuracy").items():
            res[fmt]["accuracy"] = a
    except Exception as exc:
        for fmt in formats:
            res[fmt]["errors"].append(f"accuracy: {exc}"[:400])
    gmac = stage_gmac(manifest, needed_stages(manifest))
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
        "stages": needed_stages(manifest),
        "gmac": gmac,
        "peak": peak,
        "formats": res,
        "throughput": throughput,
    }


def derive(r: dict) -> dict:
    """Ratios, compute floor and targets from the measured numbers (all from this one run)."""
    fm = r["formats"]

    def e2e(fmt, t, key="total"):
        lat = fm.get(fmt, {}).get("latency", {}).get(str(t))
        return lat[key]["median"] if lat else None

    # Per image: the U-Net as often as the median prediction ran it, the regressor once per test-time view.
    views = next((lat["tta_views"] for x in fm.values() for lat in x["latency"].values()), None)
    passes = next((lat["unet_passes"]["median"] for x in fm.values() for lat in x["latency"].values() if "unet_passes" in lat), 1.0)
    g = r["gmac"]
    complete = views is not None and "regress" in g and ("segment" in g or "segment" not in r["stages"])
    total_gmac = passes * g.get("segment", {}).get("gmac", 0.0) + views * g["regress"]["gmac"] if complete else None

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
    default = r["auto_format"]
    rates = {x["workers"]: x["steady_images_per_s"] for x in r.get("throughput", []) if x.get("steady_images_per_s")}
    most = max(rates, default=1)
    targets = [
        _target("fastest INT8 vs keras float, e2e, 1 thread", fastest and "keras" in fp and fp["keras"] / int8[fastest], ">=", TARGETS["int8_vs_keras"], fastest),
        _target("fastest INT8 vs best FP32, e2e, 1 thread", fastest and best_fp and fp[best_fp] / int8[fastest], ">=", TARGETS["int8_vs_best_fp32"], f"{fastest} vs {best_fp}"),
        _target("e2e / its model calls alone, 1 thread", e2e(default, t1) and e2e(default, t1, "models") and e2e(default, t1) / e2e(default, t1, "models"),
                "<=", TARGETS["e2e_vs_models"], default),
        _target("whole pipeline GMAC per image", total_gmac, "<=", TARGETS["pipeline_gmac"], f"{passes:g} x U-Net + {views} x regressor"),
        _target("edgeba predict peak RSS (MB)", auto and auto["peak_rss_mb"], "<=", TARGETS["predict_peak_rss_mb"], r["auto_format"]),
        _target("edgeba predict cold start (s, median)", auto and auto["wall_s"]["median"], "<=", TARGETS["cold_start_s"], r["auto_format"]),
        _target(f"batch images/s, {most} workers vs 1 (steady state)", most > 1 and 1 in rates and rates[most] / rates[1], ">=", TARGETS["batch_scaling"], default),
    ]
    # edgeba.backends.MEASURED for this machine: what `--backend auto` weighs (each backend runs its INT8 file).
    auto_table = {backend_of(f): {"cold_start_s": round(x["cold_start"]["wall_s"]["median"], 2), "image_ms": round(e2e(f, t1), 1)}
                  for f, x in fm.items() if f.endswith("int8") and x.get("cold_start") and e2e(f, t1)}
    return {"pipeline_gmac": {"gmac": total_gmac, "tta_views": views, "unet_passes": passes}, "floor": floor, "int8_speedup": ratios, "targets": targets,
            "auto_table": auto_table}


def _target(name: str, value, op: str, limit: float, what) -> dict:
    ok = None if not value else (value >= limit if op == ">=" else value <= limit)
    return {"name": name, "value": value or None, "op": op, "limit": limit, "pass": ok, "path": what}


