"""TFLite models through ai-edge-litert (XNNPACK, num_threads).

Inputs are fed through the model's signature when it has one: its keys are the Keras input names,
while tensor names depend on the converter ('serving_default_image:0', 'args_0', ...).
"""

from __future__ import annotations

import numpy as np

from edgeba.backends.common import bind, dequantize, quantize
from edgeba.manifest import ModelFiles
from edgeba.quiet import quiet_stderr


class Runner:
    name = "tflite"

    def __init__(self, files: ModelFiles, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.format = files.format
        with quiet_stderr():  # the XNNPACK delegate announces itself on stderr
            interpreter = Interpreter(model_path=str(files.path), num_threads=threads)
            interpreter.allocate_tensors()
        signatures = interpreter.get_signature_list()
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            self.signature = interpreter.get_signature_runner(key)
            self.inputs = self.signature.get_input_details()  # {name: details}
            self.output_name, self.output = next(iter(sorted(self.signature.get_output_details().items())))
        else:
            self.signature = None
            self.interpreter = interpreter
            self.inputs = {d["name"]: d for d in interpreter.get_input_details()}
            self.output = interpreter.get_output_details()[0]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        bound = bind(inputs, [(n, tuple(d["shape"])) for n, d in self.inputs.items()])
        feed = {n: quantize(bound[n], d["dtype"], *d["quantization"]) for n, d in self.inputs.items()}
        if self.signature is not None:
            raw = self.signature(**feed)[self.output_name]
        else:
            for n, d in self.inputs.items():
                self.interpreter.set_tensor(d["index"], feed[n])
            self.interpreter.invoke()
            raw = self.interpreter.get_tensor(self.output["index"])
        return dequantize(raw, *self.output["quantization"])
