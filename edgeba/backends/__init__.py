"""Runtimes behind one tiny interface: `open_stage(manifest, stage, backend, threads).run({name: array}) -> array`.

One module per runtime, each imported only when chosen, so `edgeba predict` loads just one of them
(and never TensorFlow unless `--backend keras`). Each backend runs the INT8 file of a stage when the
manifest has one, else its FP32 file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform

from edgeba.errors import ModelError
from edgeba.manifest import Manifest

BACKENDS = ("tflite", "openvino", "onnx", "keras")
FORMATS = {
    "tflite": ("tflite-int8", "tflite-fp32"),
    "openvino": ("openvino-int8", "openvino-fp32"),
    "onnx": ("onnx-int8", "onnx-fp32"),
    "keras": ("keras",),
}
PACKAGE = {"tflite": "ai_edge_litert", "openvino": "openvino", "onnx": "onnxruntime", "keras": "keras"}
EXTRA = {"tflite": "the base install (ai-edge-litert)", "openvino": "the [openvino] extra", "onnx": "the [onnx] extra", "keras": "the [train] extra"}


def installed() -> list[str]:
    """Backends whose runtime package is importable (checked without importing it)."""
    return [b for b in BACKENDS if importlib.util.find_spec(PACKAGE[b]) is not None]


def _missing_stage(manifest: Manifest, backend: str) -> str | None:
    """The first stage the model needs but has no file for in this backend's formats."""
    stages = (["segment"] if manifest.segments else []) + ["regress"]
    return next((s for s in stages if not any(f in manifest.formats(s) for f in FORMATS[backend])), None)


# Measured by `edgeba bench` on x86-64 (benchmarks/results/x86_64-20261206T225259.md: a quiet 2-core AMD EPYC, the
# shipped model, session 17's pipeline): the wall time of a whole `edgeba predict` process on one image (cold start,
# s; OpenVINO with its compiled-model cache filled) and the end-to-end time of each further image at 1 thread (ms,
# what a batch worker gets). Auto minimises start + (images - 1) x per image: one radiograph goes to the quickest
# starter (TFLite), a batch of a few hundred to the quickest per image (OpenVINO in this run, by 1.5 ms: TFLite and
# OpenVINO per image are within run-to-run noise of each other, and session 16's run had TFLite ahead).
# Machines without numbers here (ARM: see benchmarks/) use ORDER.
# Refresh from a bench on a quiet machine: its "What --backend auto weighs" section prints this table.
MEASURED = {
    "x86_64": {"tflite": {"cold_start_s": 0.38, "image_ms": 87.3},
               "openvino": {"cold_start_s": 0.65, "image_ms": 85.8},
               "onnx": {"cold_start_s": 0.52, "image_ms": 114.7}},
}
ORDER = ("tflite", "onnx", "openvino", "keras")  # TFLite/XNNPACK: the maintained, fastest runtime on ARM


def _arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def auto_cost(backend: str, images: int = 1) -> float | None:
    """Seconds to start and predict `images` radiographs with `backend`, from MEASURED; None when not measured here."""
    m = MEASURED.get(_arch(), {}).get(backend)
    return None if m is None else m["cold_start_s"] + max(images - 1, 0) * m["image_ms"] / 1e3


def choose(manifest: Manifest, requested: str = "auto", images: int = 1) -> str:
    """The backend to run: `requested`, or for auto the one that finishes `images` radiographs first
    here (MEASURED: cold start included), else the first of ORDER that is installed and can run the model."""
    if requested != "auto":
        if requested not in BACKENDS:
            raise ModelError(f"unknown backend {requested!r}; choose auto, {', '.join(BACKENDS)}")
        if requested not in installed():
            raise ModelError(f"backend {requested} is not installed: it comes with {EXTRA[requested]}")
        if (stage := _missing_stage(manifest, requested)) is not None:
            raise ModelError(f"model {manifest.name} has no {requested} file for stage {stage!r} ({' or '.join(FORMATS[requested])})")
        return requested
    have = [b for b in installed() if _missing_stage(manifest, b) is None]
    if not have:
        raise ModelError(f"no installed backend can run model {manifest.name} (installed: {', '.join(installed()) or 'none'})")

    def rank(b: str) -> tuple:  # measured backends first, cheapest first; then the others in ORDER
        cost = auto_cost(b, images)
        return (0, cost, 0) if cost is not None else (1, 0.0, ORDER.index(b))

    return min(have, key=rank)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def open_stage(manifest: Manifest, stage: str, backend: str, threads: int | None = None):
    """A runner for one stage: the backend's INT8 file if the manifest has one, else its FP32 file."""
    fmt = next((f for f in FORMATS[backend] if f in manifest.formats(stage)), None)
    if fmt is None:
        raise ModelError(f"model {manifest.name} has no {backend} file for stage {stage!r}")
    files = manifest.files(stage, fmt)  # verifies sha256
    module = importlib.import_module(f"edgeba.backends.{backend}")
    try:
        return module.Runner(files, threads or default_threads())
    except ModelError:
        raise
    except Exception as exc:  # each runtime raises its own types for unloadable files
        msg = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelError(f"{backend} cannot load {files.path.name}: {type(exc).__name__}: {msg}") from None
