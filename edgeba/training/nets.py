"""The bone-age regressor, in the thesis' form and in a quantization-friendly form.

thesis: each block Conv3x3(ELU) -> Conv1x1(ELU) -> BatchNorm -> MaxPool (the faithful baseline).
        No INT8 toolchain quantizes ELU, and a BatchNorm after the activation cannot fold into the conv.
relu:   each block Conv3x3 -> BN -> ReLU -> Conv1x1 -> BN -> ReLU -> MaxPool, same widths: BN folds
        into the convs and every op has an INT8 kernel.
relu_blur: relu with anti-aliased pooling (Zhang 2019, "Making convolutional networks shift-invariant
        again"): MaxPool 2x2 at stride 1, then a fixed 3x3 binomial blur at stride 2 (a depthwise conv
        with frozen weights: INT8 everywhere). Aimed at the one-view noise that test-time augmentation
        averages away (a MaxPool at stride 2 aliases: a one-pixel shift can change its output).
relu_s2: relu fed twice the resolution (e.g. 512 px) with its first conv at stride 2: every layer
        after it sees the maps it would see at half the input size, so the cost is the same to 0.1 %,
        but the image is downsampled by a learned filter, not by area interpolation (fine physis
        edges survive), and the pre-trained relu weights load unchanged (same layers and shapes).
relu_hr: relu fed twice the resolution with a 6x6 first conv at stride 2 (zero padding 2): each output
        sees exactly the 3x3 neighbourhood it saw at half the input size, in 2x2 sub-pixels. relu weights
        load with each 3x3 tap spread over its 2x2 block / 4 (copy_weights), so the network starts as
        the half-size network on the 2x2-averaged image (what relu_s2's 3x3 stride-2 conv cannot do:
        it sees a quarter of that area) and fine-tuning can learn the detail. +0.057 GMAC at 512 px.
All: then Conv 64 -> BN -> MaxPool, Dropout, GlobalAveragePooling, and a head that optionally
takes the patient's sex (input "sex", 1 = male, 0 = female).
effnet_lite0: EfficientNet-Lite0 with ImageNet weights (edgeba/training/effnet.py), same inputs and output.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

WIDTHS = (32, 64, 128, 128, 256, 384)
VARIANTS = ("thesis", "relu", "relu_blur", "relu_s2", "relu_hr", "effnet_lite0")
BLUR = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16  # binomial low-pass, sums to 1


def _pool(x, variant: str, name: str):
    if variant != "relu_blur":
        return layers.MaxPooling2D(2, name=name)(x)
    x = layers.MaxPooling2D(2, strides=1, padding="same", name=name)(x)
    channels = x.shape[-1]
    kernel = np.repeat(BLUR[:, :, None, None], channels, axis=2)  # (3, 3, C, 1)
    blur = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, trainable=False,
                                  depthwise_initializer=keras.initializers.Constant(kernel), name=f"{name}_blur")
    return blur(x)


def _block(x, filters: int, variant: str, name: str, first: bool = False):
    if variant == "thesis":
        x = layers.Conv2D(filters, 3, padding="same", activation="elu", name=f"{name}_conv3")(x)
        x = layers.Conv2D(filters, 1, activation="elu", name=f"{name}_conv1")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    else:
        for k in (3, 1):
            if k == 3 and first and variant == "relu_hr":  # 3x3 at half resolution, in 2x2 sub-pixels
                x = layers.ZeroPadding2D(2, name=f"{name}_pad")(x)
                x = layers.Conv2D(filters, 6, strides=2, use_bias=False, name=f"{name}_conv3")(x)
            else:
                stride = 2 if k == 3 and first and variant == "relu_s2" else 1
                x = layers.Conv2D(filters, k, strides=stride, padding="same", use_bias=False, name=f"{name}_conv{k}")(x)
            x = layers.BatchNormalization(name=f"{name}_bn{k}")(x)
            x = layers.ReLU(name=f"{name}_relu{k}")(x)
    return _pool(x, variant, f"{name}_pool")


def build_regressor(variant: str = "relu", input_size: int = 256, sex_input: bool = True, dropout: float = 0.3) -> keras.Model:
    """Output: normalised bone age ((months - mean) / std), shape (batch, 1)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    if variant == "effnet_lite0":
        from edgeba.training import effnet

        return effnet.build(input_size, sex_input, dropout)
    image = keras.Input((input_size, input_size, 1), name="image")
    x = image
    for i, f in enumerate(WIDTHS):
        x = _block(x, f, variant, f"b{i + 1}", first=i == 0)
    if variant == "thesis":
        x = layers.Conv2D(64, 3, padding="same", activation="elu", name="top_conv")(x)
        x = layers.BatchNormalization(name="top_bn")(x)
    else:
        x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="top_conv")(x)
        x = layers.BatchNormalization(name="top_bn")(x)
        x = layers.ReLU(name="top_relu")(x)
    x = _pool(x, variant, "top_pool")
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return age_head(image, x, sex_input, f"regressor_{variant}")


def age_head(image, features, sex_input: bool, name: str, hidden: int = 32, hidden_name: str = "head") -> keras.Model:
    """The regressor's end, shared by every network: pooled features [+ the sex input ("sex", 1 = male)
    through a small embedding and a hidden layer] -> one Dense "age" (normalised months)."""
    inputs, x = [image], features
    if sex_input:
        sex = keras.Input((1,), name="sex")
        inputs.append(sex)
        s = layers.Dense(16, activation="relu", name="sex_embed")(sex)
        x = layers.Concatenate(name="concat")([x, s])
        x = layers.Dense(hidden, activation="relu", name=hidden_name)(x)
    return keras.Model(inputs, layers.Dense(1, name="age")(x), name=name)


def copy_weights(src: keras.Model, dst: keras.Model) -> None:
    """Load src's weights into dst by layer name (e.g. relu weights into relu_blur). Every src layer
    with weights must exist in dst with the same shapes, except a 3x3 kernel loaded into relu_hr's
    6x6 stride-2 stem (spread_kernel); dst layers absent from src must be frozen (the blur), so
    nothing trainable is silently left at its initialisation."""
    by_name = {layer.name: layer for layer in dst.layers}
    done = set()
    for layer in src.layers:
        if layer.weights:
            target = by_name[layer.name]
            weights = layer.get_weights()
            if [w.shape for w in weights] != [tuple(w.shape) for w in target.weights]:
                weights = [spread_kernel(w) for w in weights]
            target.set_weights(weights)
            done.add(layer.name)
    left = [layer.name for layer in dst.layers if layer.trainable_weights and layer.name not in done]
    if left:
        raise ValueError(f"no source weights for trainable layers {left}")


def spread_kernel(k: np.ndarray) -> np.ndarray:
    """A (3, 3, C, F) kernel as the (6, 6, C, F) stride-2 kernel that computes it on the 2x2-averaged
    image: tap (i, j) covers the sub-pixels (2i..2i+1, 2j..2j+1), each weighted 1/4."""
    if k.ndim != 4 or k.shape[:2] != (3, 3):
        raise ValueError(f"cannot map weights of shape {k.shape} onto a 6x6 stride-2 kernel")
    return np.repeat(np.repeat(k, 2, axis=0), 2, axis=1) / 4.0


def average_regressors(members: list[keras.Model], targets: list[dict] | None = None,
                       image_inputs: list[str] | None = None) -> keras.Model:
    """One model whose output is the mean of the members' outputs (an ensemble in a single graph).

    `targets` ({"mean", "std"} per member, months = z * std + mean) lets members trained with
    different target normalisations be averaged in months; the result uses targets[0].
    `image_inputs` names each member's image input: members that see differently preprocessed
    images (the whole radiograph, the upright hand crop) get one graph input each, named as the
    manifest's preprocessing names them (edgeba/preprocess.py, regressor_feeds); members with the
    same name share it. The sex input, if any, is shared.
    The members' last Dense layers are merged into one Dense on their concatenated features
    (each kernel rescaled and divided by n, stacked), which is exactly the mean and keeps the graph's
    last op a Dense: export keeps that op float in every INT8 format, as for one regressor.
    """
    targets = targets or [{"mean": 0.0, "std": 1.0}] * len(members)
    image_inputs = image_inputs or ["image"] * len(members)
    ref = targets[0]
    inputs: dict[str, keras.KerasTensor] = {}
    feats, kernels, bias = [], [], 0.0
    for i, (m, t, name) in enumerate(zip(members, targets, image_inputs)):
        call = []
        for x in m.inputs:  # the image is the 4-D input, the sex the 2-D one
            key = name if len(x.shape) == 4 else "sex"
            if key not in inputs:
                inputs[key] = keras.Input(x.shape[1:], name=key)
            elif tuple(inputs[key].shape[1:]) != tuple(x.shape[1:]):
                raise ValueError(f"ensemble members disagree on the shape of input {key!r}")
            call.append(inputs[key])
        last = m.layers[-1]
        body = keras.Model(m.inputs, last.input, name=f"member{i + 1}")
        feats.append(body(call if len(call) > 1 else call[0]))
        k, b = last.get_weights()
        scale = t["std"] / ref["std"] / len(members)
        kernels.append(k * scale)
        bias = bias + b * scale + (t["mean"] - ref["mean"]) / ref["std"] / len(members)
    age = layers.Dense(1, name="age")
    out = age(layers.Concatenate(name="members")(feats))
    age.set_weights([np.concatenate(kernels, axis=0), np.asarray(bias, np.float32)])
    ordered = [inputs[k] for k in inputs if k != "sex"] + ([inputs["sex"]] if "sex" in inputs else [])
    return keras.Model(ordered if len(ordered) > 1 else ordered[0], out, name=f"ensemble{len(members)}")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one image through the Conv2D / Dense / DepthwiseConv2D layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # ensemble members
            total += count_macs(layer)
        elif isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose, layers.DepthwiseConv2D)):
            out = layer.output.shape  # (1, H, W, C)
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            per_out = kh * kw * (1 if isinstance(layer, layers.DepthwiseConv2D) else cin)
            total += out[1] * out[2] * out[3] * per_out
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)
