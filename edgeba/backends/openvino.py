"""OpenVINO IR models (CPU plugin, latency hint, fixed thread count).

Compiling an IR for the CPU takes most of OpenVINO's start-up (0.8 s for both stages on a busy
2-core x86); the compiled blob is cached in ~/.cache/edgeba/openvino (or $XDG_CACHE_HOME), which
brings a later start to under 0.1 s. No cache is used where that folder cannot be written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeba.backends.common import base_name, bind
from edgeba.manifest import ModelFiles


def _cache_dir() -> Path | None:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeba" / "openvino"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return root if os.access(root, os.W_OK) else None


class Runner:
    name = "openvino"

    def __init__(self, files: ModelFiles, threads: int):
        import openvino as ov

        core = ov.Core()
        if (cache := _cache_dir()) is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        model = core.read_model(str(files.path), str(files.weights) if files.weights else None)
        # f32: on CPUs with AMX/AVX512-BF16 OpenVINO would otherwise run float layers in bfloat16, so
        # the same model would give a different bone age from one machine to the next.
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        self.format = files.format
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        # An IR input can carry several names; the Keras one is among them.
        self.inputs = []
        for port in self.compiled.inputs:
            names = sorted(port.get_names(), key=len) or [f"input_{port.get_index()}"]
            shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
            self.inputs.append((port, names, shape))

    def _name(self, names: list[str], given: dict) -> str:
        return next((n for n in names if base_name(n) in given), names[0])

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        named = [(self._name(names, inputs), port, shape) for port, names, shape in self.inputs]
        bound = bind(inputs, [(n, s) for n, _, s in named])
        result = self.request.infer({port: np.asarray(bound[n], np.float32) for n, port, _ in named})
        return np.asarray(result[self.compiled.output(0)], np.float32)
