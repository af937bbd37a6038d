"""What every backend shares: binding caller inputs to model inputs by name, and INT8 (de)quantization."""

from __future__ import annotations

import numpy as np

from edgeba.errors import ModelError


def base_name(name: str) -> str:
    """Tensor name as the Keras model called it: converters add 'serving_default_' and ':0'."""
    n = name.split(":")[0]
    for prefix in ("serving_default_",):
        if n.startswith(prefix):
            n = n[len(prefix) :]
    return n


def bind(given: dict[str, np.ndarray], model_inputs: list[tuple[str, tuple]]) -> dict[str, np.ndarray]:
    """{model input name: array}. Matches by name; an unmatched input falls back to the only given
    array of the same rank (some converters rename inputs to args_0 ...)."""
    out: dict[str, np.ndarray] = {}
    left = dict(given)
    for name, _ in model_inputs:
        key = base_name(name)
        if key in left:
            out[name] = left.pop(key)
    for name, shape in model_inputs:
        if name in out:
            continue
        same_rank = [k for k, v in left.items() if np.ndim(v) == len(shape)]
        if len(same_rank) != 1:
            raise ModelError(f"model input {name!r} matches none of the given inputs {sorted(given)}")
        out[name] = left.pop(same_rank[0])
    if left:
        raise ModelError(f"model has no input for {sorted(left)} (its inputs: {[n for n, _ in model_inputs]})")
    for name, shape in model_inputs:
        want = tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else -1 for d in shape)
        got = np.shape(out[name])
        if len(want) != len(got) or any(w not in (-1, g) for w, g in zip(want, got)):
            raise ModelError(f"model input {name!r} expects shape {want}, got {got}")
    return out


def quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """float -> int8/uint8 with the tensor's affine parameters (float tensors pass through)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or not scale:
        return np.asarray(x, dtype=dtype)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    q = np.asarray(q)
    if q.dtype.kind == "f" or not scale:
        return q.astype(np.float32)
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)
