"""What the numbers were measured on (CPU, flags, OS, glibc, versions) and what the models cost
(file sizes, GMAC per image counted from the TFLite graph)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from edgeba.manifest import STAGES

ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
             "0xd42": "Cortex-A78AE", "0x004": "NVIDIA Carmel"}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
             "neon", "asimd", "asimddp", "i8mm", "bf16", "sve")


def describe() -> dict:
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


def stage_gmac(manifest, stages: list[str]) -> dict:
    """GMAC of one call of each stage's model: the manifest's own number if it records one, else
    counted from a TFLite file."""
    out = {}
    for stage in stages:
        formats = manifest.data["stages"][stage]
        recorded = next((e["gmac"] for e in formats.values() if "gmac" in e), None)
        tfl = next((f for f in ("tflite-fp32", "tflite-int8") if f in formats), None)
        if recorded is not None:
            out[stage] = {"gmac": float(recorded), "source": "manifest"}
        elif tfl is not None:
            out[stage] = {"gmac": tflite_gmac(manifest.files(stage, tfl).path), "source": f"counted from {tfl}"}
    return out


def model_sizes(manifest, fmt: str) -> dict:
    sizes = {}
    for stage in STAGES:
        entry = (manifest.data["stages"].get(stage) or {}).get(fmt)
        if entry:
            sizes[stage] = sum((manifest.dir / entry[k]).stat().st_size for k in ("file", "weights") if k in entry)
    sizes["total"] = sum(sizes.values())
    return sizes


