"""ONNX models through onnxruntime (CPU; QDQ INT8 models keep float inputs and outputs)."""

from __future__ import annotations

import numpy as np

from edgeba.backends.common import bind
from edgeba.errors import ModelError
from edgeba.manifest import ModelFiles

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class Runner:
    name = "onnx"

    def __init__(self, files: ModelFiles, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings about unused initializers are noise for a clinic user
        self.format = files.format
        self.session = ort.InferenceSession(str(files.path), opts, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        for i in self.inputs:
            if i.type not in _DTYPES:
                raise ModelError(f"{files.path.name}: input {i.name} has type {i.type}; expected float (QDQ) inputs")

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        bound = bind(inputs, [(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape)) for i in self.inputs])
        feed = {i.name: np.asarray(bound[i.name], _DTYPES[i.type]) for i in self.inputs}
        return np.asarray(self.session.run(None, feed)[0], np.float32)
