"""The float Keras models (the reference; needs the [train] extra and imports TensorFlow/JAX)."""

from __future__ import annotations

import os

import numpy as np

from edgeba.backends.common import bind
from edgeba.manifest import ModelFiles
from edgeba.quiet import quiet_stderr


class Runner:
    name = "keras"

    def __init__(self, files: ModelFiles, threads: int):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with quiet_stderr():  # TensorFlow's start-up banners are not for clinic users
            import keras

            self.model = keras.saving.load_model(str(files.path), compile=False)
        self.format = files.format
        self.inputs = [(t.name, tuple(-1 if d is None else d for d in t.shape)) for t in self.model.inputs]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import keras

        bound = bind(inputs, self.inputs)
        args = [np.asarray(bound[n], np.float32) for n, _ in self.inputs]
        with quiet_stderr():  # the first call logs oneDNN notices
            out = self.model(args if len(args) > 1 else args[0], training=False)
        if isinstance(out, (list, tuple)):
            out = out[0]
        elif isinstance(out, dict):
            out = next(iter(out.values()))
        return np.asarray(keras.ops.convert_to_numpy(out), np.float32)
