"""The one preprocessing chain from (image, mask) to the regressor input.

Training, export calibration and every runtime backend call `regressor_input` (through
`regressor_feeds` at runtime); the parameters travel in each model's manifest (`PreprocessConfig.to_dict`)
so a model cannot be fed differently from how it was trained. A regressor may take several images,
each preprocessed its own way (an ensemble of a whole-radiograph and a hand-crop network): the
manifest (or the training run's config) names them (`input_configs`), the first is always `image`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from edgeba.crop import canonical_crop, plain_resize
from edgeba.enhance import normalize, sharpen
from edgeba.segment import upsample_mask


@dataclass(frozen=True)
class PreprocessConfig:
    input_size: int = 256  # regressor input side (px)
    enhance: bool = True  # thesis edge enhancement (off for the ablation)
    segment: bool = True  # mask + rotate + crop (off = plain letterbox of the whole image, ablation)
    margin: float = 0.04  # crop margin around the hand, fraction of its longer side
    unet_size: int = 128  # U-Net input side (px)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def input_configs(data: dict, **override) -> dict[str, PreprocessConfig]:
    """Each regressor image input's preprocessing, from a manifest's data or a training run's config:
    `image` (`preprocess`), then any `extra_inputs` of a model that sees the radiograph in several ways.
    `override` sets fields of every one (export: the U-Net's size)."""
    given = {"image": data.get("preprocess", {}), **(data.get("extra_inputs") or {})}
    return {k: PreprocessConfig.from_dict({**v, **override}) for k, v in given.items()}


# The pipeline works on one copy of the radiograph at this long side (or the larger side a hand-crop input
# needs), made by one area resize right after loading: the U-Net sees 128 px, its mask is cleaned at 512
# (segment.MASK_WORK_SIDE), the QC, polarity and condition checks look at 256-512 px, and a whole-image
# regressor is fed from the file's own pixels (see work_image). Nothing else needs the full resolution, which
# cost most of each image's time (issue 16); the overlay is drawn from this copy too, the noise smoothing at its own
# side (conditions.DENOISE_SIDE). A 512 px copy (a mask made once, at the copy's size) takes about 40 % off each image
# but failed its rule in sessions 14, 15 and 17: it moves single films across the turn, inversion and refusal decisions,
# with the net loss on a bright plate (train300, session 17: errors over 24 months 209 -> 220; train/RESULTS.md).
WORK_SIDE = 1024


def work_side(inputs: dict[str, PreprocessConfig]) -> int:
    """Long side of the working copy for a model with these inputs: WORK_SIDE, or twice a hand crop's
    input side (the hand fills about half the film) or a whole-image input's side when that is larger."""
    return max([WORK_SIDE] + [c.input_size * (2 if c.segment else 1) for c in inputs.values()])


def work_image(pixels: np.ndarray, side: int) -> np.ndarray:
    """The radiograph with its long side at most `side` px (area average; float64 resampling so every CPU
    gets the same pixels, see crop_stage), float32: what the U-Net, the mask QC, polarity and condition
    checks see at runtime, in export calibration and in parity. Not the regressor: its input is cut from
    the source pixels, as its training crops were (a resize chain blurs the crop a little, and the
    sharpening kernel turns that into estimates up to 20 months off: val/tune, 403 images)."""
    h, w = pixels.shape
    s = side / max(h, w)
    if s >= 1.0:
        return np.ascontiguousarray(pixels, dtype=np.float32)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(pixels.astype(np.float64), size, interpolation=cv2.INTER_AREA).astype(np.float32)


def source_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """A working-copy mask on the source pixels' grid (a hand-crop input is cut from the source)."""
    if mask is None or mask.shape == tuple(shape):
        return mask
    return upsample_mask(mask, shape)


def crops_to_hand(inputs: dict[str, PreprocessConfig]) -> bool:
    """Whether some input is the U-Net's hand crop (the model then needs a mask that passed QC to be trusted)."""
    return any(c.segment for c in inputs.values())


def crop_stage(pixels: np.ndarray, mask: np.ndarray | None, cfg: PreprocessConfig) -> np.ndarray:
    """Geometry only (cacheable): the letterboxed hand, or the whole image when segment is off.

    The result is rounded to 8-bit levels because the training cache stores crops as uint8: the
    sharpening kernel amplifies even sub-1/255 differences, and training and inference must see
    bit-identical inputs.

    The resampling runs in float64 so that the rounding is the same on every CPU. Area averages of
    8-bit pixels land within 1e-4 levels of a half level on 5-220 pixels per image (first 20 val
    images); float32 resampling is off by up to 4e-5 levels, and x86 and ARM builds of OpenCV sum
    in different orders, so levels flipped between machines (benchmarks/README.md, "Same months on
    aarch64?"). In float64 the summation error is about 1e-13 levels, while the closest of those
    pixels to a half level is 9e-8 away (OpenCV's float32 weights and the float32 pixels keep exact
    ties away).
    """
    px = pixels.astype(np.float64)
    if cfg.segment:
        if mask is None:
            raise ValueError("this model expects a segmented hand: a mask is required")
        crop = canonical_crop(px, mask, cfg.input_size, cfg.margin)[0]
    else:
        crop = plain_resize(px, cfg.input_size)
    return (np.round(np.clip(crop, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def enhance_stage(crop: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Intensity: normalise within the hand (or whole frame), then optionally sharpen."""
    region = crop > 0 if cfg.segment else np.ones(crop.shape, bool)
    x = normalize(crop, region)
    return sharpen(x) if cfg.enhance else x


def regressor_input(pixels: np.ndarray, mask: np.ndarray | None, cfg: PreprocessConfig) -> np.ndarray:
    """float32 (S, S) in [0, 1]: what the regressor sees for this image."""
    return enhance_stage(crop_stage(pixels, mask, cfg), cfg).astype(np.float32)


# Test-time augmentation: (rotation degrees, scale) views of the crop, averaged by the caller.
# Training augments with the same `affine`, so these views are in the training distribution.
TTA_VIEWS = ((0.0, 1.0), (0.0, 1.05), (0.0, 0.95), (4.0, 1.0), (-4.0, 1.0))


def affine(crop: np.ndarray, angle: float = 0.0, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Rotate/scale about the centre and shift (fractions of the side) a square crop; background 0."""
    s = crop.shape[0]
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
    m[:, 2] += (dx * s, dy * s)
    return cv2.warpAffine(crop, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def tta_view(crop: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """One TTA view of a crop; the plain view is the crop itself (no resampling)."""
    return crop if (angle, scale) == TTA_VIEWS[0] else affine(crop, angle, scale)


def regressor_inputs_tta(pixels: np.ndarray, mask: np.ndarray | None, cfg: PreprocessConfig) -> np.ndarray:
    """float32 (len(TTA_VIEWS), S, S): the regressor input under each TTA view (first = plain)."""
    crop = crop_stage(pixels, mask, cfg)
    return np.stack([enhance_stage(tta_view(crop, *v), cfg) for v in TTA_VIEWS]).astype(np.float32)


def regressor_feeds(pixels: np.ndarray, mask: np.ndarray | None, inputs: dict[str, PreprocessConfig],
                    tta: bool = False) -> list[dict[str, np.ndarray]]:
    """The regressor's image feeds, one dict per view ({input name: float32 (1, S, S, 1)}): the plain
    view, or with `tta` every view of TTA_VIEWS, each input under the same view."""
    per_input = {
        name: regressor_inputs_tta(pixels, mask, cfg) if tta else regressor_input(pixels, mask, cfg)[None]
        for name, cfg in inputs.items()
    }
    n = len(next(iter(per_input.values())))
    return [{name: v[k][None, :, :, None] for name, v in per_input.items()} for k in range(n)]
