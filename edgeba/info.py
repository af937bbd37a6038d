"""What `edgeba info` reports: versions, installed backends, and the model's manifest with every
file checked against its sha256. Reads package versions from metadata, so no runtime is imported."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from edgeba import __version__
from edgeba.backends import choose, default_threads, installed
from edgeba.errors import EdgebaError
from edgeba.manifest import load_manifest

PACKAGES = ("numpy", "opencv-python-headless", "pydicom", "typer", "ai-edge-litert", "onnxruntime", "openvino", "keras", "tensorflow-cpu", "tensorflow")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _model(model_dir: str | Path | None) -> dict:
    try:
        m = load_manifest(model_dir)
    except EdgebaError as exc:
        return {"error": str(exc)}
    formats: dict[str, dict[str, str]] = {}
    verified = True
    for stage in ("segment", "regress"):
        formats[stage] = {}
        for fmt in m.formats(stage):
            try:
                m.files(stage, fmt)
                formats[stage][fmt] = "sha256 ok"
            except EdgebaError as exc:
                formats[stage][fmt] = str(exc)
                verified = False
    try:
        auto = choose(m)
    except EdgebaError:
        auto = None
    return {
        "dir": str(m.dir.resolve()),
        "name": m.name,
        "created": m.data.get("created"),
        "preprocess": m.preprocess,
        **({"extra_inputs": m.data["extra_inputs"]} if m.data.get("extra_inputs") else {}),
        "target": m.data.get("target"),
        "sex_input": m.sex_input,
        "formats": formats,
        "verified": verified,
        "auto_backend": auto,
        "metrics": m.data.get("metrics") or {},
    }


def collect(model_dir: str | Path | None = None) -> dict:
    model = _model(model_dir)
    return {
        "edgeba": __version__,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpus": default_threads(),
        "executable": sys.executable,
        "packages": {p: _version(p) for p in PACKAGES},
        "backends": installed(),
        "auto_backend": model.get("auto_backend"),
        "model": model,
        "data": os.environ.get("EDGEBA_DATA"),
    }
