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


def choose(manifest: Manifest, requested: str = "auto") -> str:
    """The backend to run: `requested`, or for auto the fastest INT8 runtime for this machine.

    Benchmarks (shared/TOOLCHAIN.md): OpenVINO INT8 is the fastest path on x86 (1.8x TFLite INT8
    without VNNI); on ARM TFLite/XNNPACK is the maintained, fastest choice.
    """
    if requested != "auto":
        if requested not in BACKENDS:
            raise ModelError(f"unknown backend {requested!r}; choose auto, {', '.join(BACKENDS)}")
        if requested not in installed():
            raise ModelError(f"backend {requested} is not installed: it comes with {EXTRA[requested]}")
        if (stage := _missing_stage(manifest, requested)) is not None:
            raise ModelError(f"model {manifest.name} has no {requested} file for stage {stage!r} ({' or '.join(FORMATS[requested])})")
        return requested
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    order = ("openvino", "tflite", "onnx", "keras") if x86 else ("tflite", "onnx", "openvino", "keras")
    have = installed()
    for b in order:
        if b in have and _missing_stage(manifest, b) is None:
            return b
    raise ModelError(f"no installed backend can run model {manifest.name} (installed: {', '.join(have) or 'none'})")


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
